//! [`SessionHandle`]: the node's side of a connection, what it pushes frames into.
//!
//! A push writes the frame straight to the socket when the fan-out loop allows it (see
//! `direct`) and the socket is idle; otherwise it queues the frame and wakes the session task,
//! which writes what is queued in batches. Both ways settle the same: a point-to-point frame's
//! token once written, its ack remembered, its latency observed.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context as TaskContext, Poll},
};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use impush_core::{config::LimitsConfig, ClientId, ConnectionId, MessageId};

use super::{
    acks::{AckSource, Ackable, PendingAcks},
    close, direct,
    direct::Mode,
    link::LinkId,
    outbox::{Direct, Outbox, Step},
    read::{ReadError, Reader},
    socket::{Conn, Unfinished},
    wire::Control,
    Outgoing, Wake, PONG,
};
use crate::{
    metrics::{since_ms, unix_now_us, CloseKind, Metrics, OutKind},
    settle::{FrameToken, StoredFrame, Tracked},
    stream::StreamKey,
};

/// State most connections never need, allocated on first use and freed once empty.
#[derive(Debug, Default)]
struct Rare {
    /// Ids of offline-inbox messages already queued on this socket (a drain racing a
    /// reconnect, or a redelivery, must not show an id twice).
    stored_sent: HashSet<MessageId>,
    /// Live point-to-point frames held while the connection attaches.
    held: Vec<Outgoing>,
    /// Streams whose live frames are dropped while their resume is prepared.
    muted: Vec<StreamKey>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.stored_sent.is_empty() && self.held.is_empty() && self.muted.is_empty()
    }
}

/// The node's side of a connection.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) client: ClientId,
    pub(crate) connection: ConnectionId,
    /// When it joined the registry, as a mark (`settle::next_mark`, taken under the
    /// registry's lock): it was not offered the live frames of messages with a lower mark.
    pub(crate) mark: AtomicU64,
    /// What `prepare_connect` signed in; it travels with the online/offline events.
    pub(crate) metadata: serde_json::Value,
    outbox: Mutex<Outbox>,
    /// The session task, woken when frames are queued or the connection must close.
    waker: AtomicWaker,
    /// Frames were queued since the task last looked at the queue.
    queued: AtomicBool,
    /// Set while the connection attaches: live point-to-point frames wait in `Rare::held`
    /// until its inbox was read, so nothing newer overtakes what the inbox holds (order per
    /// sender).
    holding: AtomicBool,
    /// Set while this connection's resume is being prepared: live frames of the streams in
    /// `Rare::muted` are dropped (the resume replays them from history instead).
    resuming: AtomicBool,
    /// Scheduled to move to another node (drain, return home): not scheduled twice.
    moving: AtomicBool,
    /// Every point-to-point message stays pending until acked (set when the session starts).
    must_ack: AtomicBool,
    /// Non-zero once the connection must close: the close code (the first reason wins).
    close_code: AtomicU16,
    /// Set once the connection ended and what it held went back to the inbox (writes in
    /// flight at least): a connection replacing it waits for this (`super::link`).
    ended: AtomicBool,
    /// The client's name for this connection, when it gave one.
    link: Option<LinkId>,
    max_frames: u32,
    max_unacked: u32,
    max_pending_acks: u32,
    max_bytes: usize,
    /// Bytes gathered into one socket write (`limits.write_buffer`).
    gather: u32,
    pub(super) metrics: Arc<Metrics>,
    /// Messages written here and not acked yet; allocated while there are any.
    acks: Mutex<Option<Box<PendingAcks>>>,
    rare: Mutex<Option<Box<Rare>>>,
}

/// A lock that recovers from poisoning: the data (queues, sets of ids) stays usable, and a
/// panic elsewhere already ended that connection's task.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl SessionHandle {
    /// The handle of a new connection of `client`.
    pub(crate) fn new(
        client: ClientId,
        connection: ConnectionId,
        metadata: serde_json::Value,
        limits: &LimitsConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            connection,
            mark: AtomicU64::new(0),
            metadata,
            outbox: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
            queued: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            resuming: AtomicBool::new(false),
            moving: AtomicBool::new(false),
            must_ack: AtomicBool::new(false),
            close_code: AtomicU16::new(0),
            ended: AtomicBool::new(false),
            link: None,
            max_frames: small(limits.outbound_queue.max(1)),
            max_unacked: small(limits.max_unacked),
            max_pending_acks: small(limits.max_pending_acks),
            max_bytes: limits.outbound_queue_bytes.max(1),
            gather: small(limits.write_buffer),
            metrics,
            acks: Mutex::new(None),
            rare: Mutex::new(None),
        }
    }

    /// The same handle, named `link` by its client.
    pub(crate) fn linked(mut self, link: Option<LinkId>) -> Self {
        self.link = link;
        self
    }

    /// Whether its client named this connection.
    pub(crate) fn has_link(&self) -> bool {
        self.link.is_some()
    }

    /// Whether its client named this connection `link`.
    pub(crate) fn is_link(&self, link: LinkId) -> bool {
        self.link == Some(link)
    }

    /// Marks the connection ended, what it held handed back (see `ended`).
    pub(crate) fn set_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }

    /// Whether [`SessionHandle::set_ended`] was called.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Runs `f` on the rare state, allocating it if needed and freeing it once empty.
    fn with_rare<R>(&self, f: impl FnOnce(&mut Rare) -> R) -> R {
        let mut guard = lock(&self.rare);
        let rare = guard.get_or_insert_with(Box::default);
        let out = f(rare);
        if rare.is_empty() {
            *guard = None;
        }
        out
    }

    /// Holds live point-to-point frames back until [`SessionHandle::release_held`].
    pub(crate) fn hold(&self) {
        self.holding.store(true, Ordering::Release);
    }

    /// Queues the held frames, in order, skipping any the offline inbox pushed meanwhile (that
    /// socket has it: its token settles as written), and stops holding. Returns the
    /// point-to-point frames it could not queue (the connection is closing already, a link
    /// replaced while it attached, or its queue overflowed): the caller keeps them for the
    /// client now. Dropped here, they were kept only when their message settled for every
    /// receiver, seconds later with a frozen socket elsewhere, and the client's next
    /// connection, not waiting for that, got newer messages first (the loss probe's order
    /// check, `docs/design.md` section 15).
    pub(crate) fn release_held(&self) -> Vec<FrameToken> {
        let mut rare = lock(&self.rare);
        // Still under the lock: a push racing this waits, then finds holding off.
        let held = rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.held))
            .unwrap_or_default();
        let mut refused = Vec::new();
        for out in held {
            if let Some(Tracked::Live(t)) = &out.token {
                let id = t.settlement().id();
                if rare.as_ref().is_some_and(|r| r.stored_sent.contains(id)) {
                    if let Some(Tracked::Live(t)) = out.token {
                        t.written();
                    }
                    continue;
                }
            }
            if let Err(Outgoing {
                token: Some(Tracked::Live(t)),
                ..
            }) = self.push_now(out)
            {
                refused.push(t);
            }
        }
        if rare.as_ref().is_some_and(|r| r.is_empty()) {
            *rare = None;
        }
        self.holding.store(false, Ordering::Release);
        refused
    }

    /// Holds back the live frames of `streams` until [`SessionHandle::unmute`]: the client
    /// asked to resume them (`docs/design.md` section 15).
    pub(crate) fn mute(&self, streams: Vec<StreamKey>) {
        self.with_rare(|r| r.muted = streams);
        self.resuming.store(true, Ordering::Release);
    }

    /// Lets every stream's live frames through again.
    pub(crate) fn unmute(&self) {
        self.resuming.store(false, Ordering::Release);
        self.with_rare(|r| r.muted = Vec::new());
    }

    /// Queues a frame of stream `key` (channel, broadcast), unless that stream is being
    /// resumed: then the resume replays it.
    pub(crate) fn push_stream(&self, key: &StreamKey, out: Outgoing) -> bool {
        if self.resuming.load(Ordering::Acquire) {
            let muted = lock(&self.rare)
                .as_ref()
                .is_some_and(|r| r.muted.contains(key));
            if muted {
                return false;
            }
        }
        self.push(out)
    }

    /// Runs `f` on the pending acks, allocating them if needed and freeing them once empty
    /// (most connections sit idle after a burst).
    pub(crate) fn with_acks<R>(&self, f: impl FnOnce(&mut PendingAcks) -> R) -> R {
        let mut guard = lock(&self.acks);
        let acks = guard.get_or_insert_with(Box::default);
        let out = f(acks);
        if acks.is_empty() {
            *guard = None;
        }
        out
    }

    /// Forgets that message `id` waits for an ack here: the client acked it on another of
    /// its sockets. Closing with it unacked, this socket would keep it in the inbox again (a
    /// duplicate on the next connection), and its own ack would repeat the `acked` receipt.
    /// Wakes the writer when that frees room under `limits.max_unacked`.
    pub(crate) fn acked_elsewhere(&self, id: &MessageId) {
        let freed = {
            let mut guard = lock(&self.acks);
            let Some(acks) = guard.as_mut() else { return };
            let freed = acks.take(id).is_some();
            if acks.is_empty() {
                *guard = None;
            }
            freed
        };
        if freed {
            self.requeue();
        }
    }

    /// How many written messages wait for a required ack.
    pub(crate) fn unacked(&self) -> usize {
        lock(&self.acks).as_ref().map_or(0, |a| a.unacked())
    }

    /// Whether message `id` was written here and waits for a required ack.
    pub(crate) fn awaits_ack(&self, id: &MessageId) -> bool {
        lock(&self.acks).as_ref().is_some_and(|a| a.requires(id))
    }

    /// The required acks still outstanding, leaving none (the socket closed).
    pub(crate) fn take_unacked(&self) -> Vec<(MessageId, Ackable)> {
        let taken = lock(&self.acks).take();
        taken.map(|a| a.into_required()).unwrap_or_default()
    }

    /// Whether it joined the registry after the message marked `mark` went out live (see
    /// `settle::next_mark`).
    pub(crate) fn came_after(&self, mark: u64) -> bool {
        self.mark.load(Ordering::Acquire) > mark
    }

    /// Whether the offline inbox already pushed message `id` to this socket.
    pub(crate) fn sent_from_inbox(&self, id: &MessageId) -> bool {
        lock(&self.rare)
            .as_ref()
            .is_some_and(|r| r.stored_sent.contains(id))
    }

    /// Queues a frame from the offline inbox unless this socket already got that id; returns
    /// whether it was queued.
    pub(crate) fn push_stored(&self, frame: Utf8Bytes, stored: StoredFrame) -> bool {
        // Written here already and waiting for its ack: this socket has it.
        if self.awaits_ack(&stored.id) {
            return false;
        }
        if !self.with_rare(|r| r.stored_sent.insert(stored.id.clone())) {
            return false;
        }
        self.push(Outgoing {
            frame,
            token: Some(Tracked::Stored(stored)),
            published: 0,
        })
    }

    /// Queues a frame (or writes it at once, see the module docs); returns `false` when the
    /// connection is closing or the queue overflowed (then the connection is closed with
    /// 4008). A refused frame's token settles as not delivered.
    pub(crate) fn push(&self, out: Outgoing) -> bool {
        if self.holding.load(Ordering::Acquire) && matches!(out.token, Some(Tracked::Live(_))) {
            let mut rare = lock(&self.rare);
            if self.holding.load(Ordering::Acquire) {
                rare.get_or_insert_with(Box::default).held.push(out);
                return true;
            }
        }
        self.push_now(out).is_ok()
    }

    /// [`SessionHandle::push`] without holding: hands a refused frame back, so a caller that
    /// must not let it settle late (`release_held`) can keep it.
    fn push_now(&self, out: Outgoing) -> Result<(), Outgoing> {
        // A closing connection says so here; a finished one is refused under the queue's lock
        // once its queue was discarded.
        if self.close_code.load(Ordering::Acquire) != 0 {
            return Err(out);
        }
        let mut q = lock(&self.outbox);
        if q.closed {
            return Err(out);
        }
        let mode = direct::mode();
        let idle = q.idle();
        let out = if mode.writes() && idle {
            match self.write_direct(&mut q, out) {
                Ok(()) => return Ok(()),
                Err(out) => out,
            }
        } else {
            out
        };
        let len = out.frame.len();
        if q.frames.len() >= self.max_frames as usize || q.bytes + len > self.max_bytes {
            drop(q);
            self.close_slow();
            return Err(out);
        }
        q.bytes += len;
        q.frames.push_back(out);
        drop(q);
        // Deferred to an idle socket: a flusher writes it (`flush_deferred`), without waking
        // this connection's task.
        if !(mode == Mode::Defer && idle) {
            self.requeue();
        }
        Ok(())
    }

    /// Writes the untracked frames queued at the front as the session task would have (a
    /// delivery deferred them to this flusher, see `share::shared_out`); wakes the task for
    /// whatever is left, so nothing stays queued without a writer.
    pub(crate) fn flush_deferred(&self) {
        let mut q = lock(&self.outbox);
        while q.at_frame_boundary() {
            let Some(out) = q.take_untracked_front() else {
                break;
            };
            match q.write_direct(out) {
                Direct::Written(out) => self.settle_direct(out),
                Direct::Begun => break,
                Direct::Queue(out) => {
                    q.requeue_front(out);
                    break;
                }
            }
        }
        let left = !q.frames.is_empty();
        drop(q);
        if left {
            self.requeue();
        }
    }

    /// Writes `out` straight to the idle socket (the outbox is locked); hands it back when it
    /// must be queued instead.
    fn write_direct(&self, q: &mut Outbox, out: Outgoing) -> Result<(), Outgoing> {
        // The ack is remembered before the write: the client may ack before this thread
        // returns from it, and the session task must know the id by then.
        let acked = match &out.token {
            None => None,
            Some(Tracked::Live(t)) => match self.remember_ack(t) {
                Some(remembered) => remembered.then(|| t.settlement().id().clone()),
                None => return Err(out),
            },
            // Reported by the session task once written.
            Some(Tracked::Stored(_)) => return Err(out),
        };
        let forget = |id: Option<MessageId>| {
            if let Some(id) = id {
                self.with_acks(|p| p.take(&id));
            }
        };
        match q.write_direct(out) {
            Direct::Written(out) => {
                self.settle_direct(out);
                Ok(())
            }
            Direct::Begun => {
                // The task finishes it, then remembers its ack as for any frame it writes.
                forget(acked);
                self.requeue();
                Ok(())
            }
            Direct::Queue(out) => {
                forget(acked);
                Err(out)
            }
        }
    }

    /// Remembers the ack a live frame about to be written directly may get: `Some(true)`
    /// remembered, `Some(false)` nothing to remember, `None` when flow control must hold it
    /// (too many unacked) or the oldest optional ack would have to go.
    fn remember_ack(&self, t: &FrameToken) -> Option<bool> {
        let s = t.settlement();
        let must = self.must_ack.load(Ordering::Relaxed);
        let cap = self.max_pending_acks as usize;
        if !must && (!s.wants_receipt() || cap == 0) {
            return Some(false);
        }
        let ackable = Ackable {
            sender: s.sender().clone(),
            receipt: s.wants_receipt(),
            source: AckSource::Live {
                settlement: s.clone(),
                receiver: t.receiver(),
            },
        };
        let max_unacked = self.max_unacked as usize;
        self.with_acks(|p| {
            if must {
                (p.unacked() < max_unacked).then(|| {
                    p.require(s.id().clone(), ackable);
                    true
                })
            } else {
                p.has_room(cap).then(|| {
                    p.allow(s.id().clone(), ackable, cap);
                    true
                })
            }
        })
    }

    /// After a direct write: settles the frame and observes its latency (its ack is
    /// remembered already).
    fn settle_direct(&self, out: Outgoing) {
        let timed = out.published != 0 || out.token.is_some();
        let now_us = if timed { unix_now_us() } else { 0 };
        if out.published != 0 {
            self.metrics
                .channel_latency
                .observe_us(since_ms(now_us, out.published));
        }
        if let Some(Tracked::Live(token)) = out.token {
            self.metrics
                .delivery_latency
                .observe_us(since_ms(now_us, token.settlement().ts()));
            token.written();
        }
    }

    /// Starts writing to `conn` (the session task begins): frames queued so far go first.
    pub(super) fn install(&self, conn: Conn, must_ack: bool) {
        self.must_ack.store(must_ack, Ordering::Relaxed);
        lock(&self.outbox).install(conn);
        self.requeue();
    }

    /// Stops writing to the socket (the session task ends) and hands it back with whatever
    /// output was begun.
    pub(super) fn uninstall(&self) -> Option<(Conn, Unfinished)> {
        lock(&self.outbox).uninstall()
    }

    /// Writes what is queued, as far as the socket takes it; see [`Outbox::write_queued`].
    pub(super) fn write_queued(&self, budget: &mut usize, written: &mut Vec<Outgoing>) -> Step {
        lock(&self.outbox).write_queued(budget, self.gather as usize, written)
    }

    /// Sends a control frame at the next frame boundary (written by the session task).
    pub(super) fn send_control(&self, c: Control) {
        lock(&self.outbox).set_control(c);
    }

    /// Ready once the socket can take more bytes (or failed).
    pub(super) fn poll_writable(&self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let q = lock(&self.outbox);
        match q.conn() {
            Some(c) => c.stream.poll_write_ready(cx).map(|_| ()),
            None => Poll::Ready(()),
        }
    }

    /// Reads what the client sent into `reader`.
    pub(super) fn poll_read(
        &self,
        cx: &mut TaskContext<'_>,
        reader: &mut Reader,
    ) -> Poll<Result<(), ReadError>> {
        let q = lock(&self.outbox);
        match q.conn() {
            Some(c) => reader.poll_fill(cx, &c.stream),
            None => Poll::Ready(Err(ReadError::Gone)),
        }
    }

    /// Ready with what the session task must do next: close with a code, or write what was
    /// queued. Registers the task first and reads the flags after, so a push or close racing
    /// this poll either is seen now or wakes the task again.
    pub(crate) fn poll_wake(&self, cx: &mut TaskContext<'_>) -> Poll<Wake> {
        self.waker.register(cx.waker());
        if let c @ 1.. = self.close_code.load(Ordering::Acquire) {
            return Poll::Ready(Wake::Close(c));
        }
        if self.queued.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Wake::Frames);
        }
        Poll::Pending
    }

    /// Ready with the close code once the connection must close (frames queued meanwhile are
    /// left for later).
    pub(crate) fn poll_closing(&self, cx: &mut TaskContext<'_>) -> Poll<u16> {
        self.waker.register(cx.waker());
        match self.close_code.load(Ordering::Acquire) {
            0 => Poll::Pending,
            c => Poll::Ready(c),
        }
    }

    /// Everything queued so far, leaving the queue empty (and unallocated).
    #[cfg(test)]
    pub(super) fn take(&self) -> std::collections::VecDeque<Outgoing> {
        let mut q = lock(&self.outbox);
        q.bytes = 0;
        std::mem::take(&mut q.frames)
    }

    /// How many frames are queued.
    #[cfg(test)]
    pub(super) fn take_len(&self) -> usize {
        lock(&self.outbox).frames.len()
    }

    /// Wakes the task to look at the queue (frames queued, or acks freed room for held ones).
    pub(super) fn requeue(&self) {
        self.queued.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Empties the queue and refuses anything pushed later (the connection is gone), handing
    /// back the point-to-point frames that were never written: their tokens settle as not
    /// delivered when dropped (by the caller, outside the queue's lock, since settling can send
    /// a report).
    pub(crate) fn take_unwritten(&self) -> Vec<FrameToken> {
        let frames = {
            let mut q = lock(&self.outbox);
            q.closed = true;
            q.bytes = 0;
            std::mem::take(&mut q.frames)
        };
        frames
            .into_iter()
            .filter_map(|o| match o.token {
                Some(Tracked::Live(t)) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn close_slow(&self) {
        if self.close(close::SLOW) {
            self.metrics.close(CloseKind::Slow);
            tracing::info!(client = %self.client, connection = %self.connection, "closing slow consumer");
        }
    }

    /// Asks the connection to close with `code`. Returns whether this call decided the code
    /// (the first reason wins).
    pub(crate) fn close(&self, code: u16) -> bool {
        let first = self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.waker.wake();
        first
    }

    /// Marks the connection as scheduled to move; returns `false` when it already was.
    pub(crate) fn schedule_move(&self) -> bool {
        !self.moving.swap(true, Ordering::AcqRel)
    }

    /// The code the connection was closed with (0 while open).
    pub(crate) fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Acquire)
    }

    /// Closes the connection as replaced (4009) and counts it.
    pub(crate) fn replace(&self) {
        if self.close(close::REPLACED) {
            self.metrics.close(CloseKind::Replaced);
        }
    }

    /// Closes the connection as kicked (4001) and counts it.
    pub(crate) fn kick(&self) {
        if self.close(close::KICKED) {
            self.metrics.close(CloseKind::Kicked);
        }
    }

    pub(super) fn push_pong(&self) {
        if self.push(Outgoing::plain(PONG)) {
            self.metrics.out(OutKind::Pong, 1);
        }
    }
}
