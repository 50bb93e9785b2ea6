//! One WebSocket connection: its [`SessionHandle`] (what the node pushes into) and the task
//! that drives the socket ([`drive`]).
//!
//! Everything for a connection happens on one task: a `select!` over the node's outbound queue
//! (and its closing), the client's frames and the ping timer. The outbound queue is
//! bounded in frames and bytes; a client that cannot keep up is closed with 4008 instead of being
//! buffered without bound. Frames are shared `Utf8Bytes`: a message for many sockets is
//! serialised once.
//!
//! Idle connections are the common case (tens of thousands per node), so the queue is a plain
//! `VecDeque` behind a short mutex: it holds no heap memory until something is queued, and the
//! writer takes the whole batch at once, freeing it after writing. (A bounded `mpsc` channel
//! keeps a 2 KiB block per connection even when empty.)
//!
//! The task is woken through one `AtomicWaker` with two flags beside it: frames queued, and a
//! close code. At everyday rates every frame wakes its task alone, so the wake-up is per-frame
//! cost: re-registering the same waker is a few atomic operations, where a `Notify` takes its
//! lock on every poll and a child `CancellationToken` the lock of its tree node (and allocates
//! that node per connection).
//!
//! A session knows nothing of the node: it counts into [`Metrics`], settles the
//! [`FrameToken`](crate::settle::FrameToken)s of the frames it writes, and reports client acks
//! and written offline-inbox frames as [`ClientReport`](crate::settle::ClientReport)s.
//!
//! The messages written here that the client has not acked yet live on the handle (not in the
//! task), so the node can ask whether another socket of the same client still holds one when
//! this one closes (`docs/design.md` section 15).
//!
//! - `drive`: the socket loop, the close handshake, writing batches, client frames;
//! - `acks`: which written messages the client may (or must) still ack;
//! - `rate`: the inbound frame rate limit.

mod acks;
mod drive;
mod rate;

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU16, Ordering},
        Arc, Mutex,
    },
    task::{Context as TaskContext, Poll},
};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use impush_core::{config::LimitsConfig, ClientId, ConnectionId, MessageId};

pub(crate) use acks::{AckSource, Ackable};
pub(crate) use drive::{close_socket, drive, Context, End};

use self::acks::PendingAcks;
use crate::{
    metrics::{CloseKind, Metrics, OutKind},
    settle::{StoredFrame, Tracked},
    stream::StreamKey,
};

const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"pong"}"#);

/// Close codes of the client protocol (`docs/design.md` section 4).
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// Service restart: reconnect now, to the URL `getUrl` gives (drain, return home).
    pub(crate) const MOVED: u16 = 1012;
    pub(crate) const INVALID_DATA: u16 = 1007;
    pub(crate) const POLICY: u16 = 1008;
    pub(crate) const TOO_LARGE: u16 = 1009;
    pub(crate) const KICKED: u16 = 4001;
    pub(crate) const SLOW: u16 = 4008;
    pub(crate) const REPLACED: u16 = 4009;
}

/// A frame on its way to one connection.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) frame: Utf8Bytes,
    /// Set for point-to-point messages: what to settle or report once written (or dropped).
    pub(crate) token: Option<Tracked>,
    /// A live channel message or broadcast to a member in the latency sample: when the API
    /// accepted it (unix ms), for the delivery latency the writer observes; 0 for every other
    /// frame.
    pub(crate) published: u64,
}

impl Outgoing {
    /// A frame nothing waits on (receipt, pong, a replayed publication).
    pub(crate) fn plain(frame: Utf8Bytes) -> Self {
        Self {
            frame,
            token: None,
            published: 0,
        }
    }

    /// A live channel message or broadcast, accepted by the API at `ts` (unix ms).
    pub(crate) fn published(frame: Utf8Bytes, ts: u64) -> Self {
        Self {
            frame,
            token: None,
            published: ts,
        }
    }
}

/// Why the session task was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The connection must close with this code.
    Close(u16),
    /// Frames were queued.
    Frames,
}

/// Frames waiting for the writer.
#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    /// Set once the connection is gone and its queue discarded: nothing is queued after.
    closed: bool,
}

/// The node's side of a connection.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) client: ClientId,
    pub(crate) connection: ConnectionId,
    /// What `prepare_connect` signed in; it travels with the online/offline events.
    pub(crate) metadata: serde_json::Value,
    outbox: Mutex<Outbox>,
    /// The session task, woken when frames are queued or the connection must close.
    waker: AtomicWaker,
    /// Frames were queued since the task last took the queue.
    queued: AtomicBool,
    max_frames: usize,
    max_bytes: usize,
    /// Non-zero once the connection must close: the close code (the first reason wins).
    close_code: AtomicU16,
    /// Scheduled to move to another node (drain, return home): not scheduled twice.
    moving: AtomicBool,
    metrics: Arc<Metrics>,
    /// Ids of offline-inbox messages already queued on this socket (a drain racing a
    /// reconnect, or a redelivery, must not show an id twice). Allocated on first use.
    // Boxed on purpose: most sockets never get a stored message, and an empty `HashSet` inline
    // would cost every idle socket 48 bytes.
    #[allow(clippy::box_collection)]
    stored_sent: Mutex<Option<Box<HashSet<MessageId>>>>,
    /// Messages written here and not acked yet; allocated while there are any.
    acks: Mutex<Option<Box<PendingAcks>>>,
    /// Set while the connection attaches: live point-to-point frames wait in `held` until its
    /// inbox was read, so nothing newer overtakes what the inbox holds (order per sender).
    holding: AtomicBool,
    #[allow(clippy::box_collection)]
    held: Mutex<Option<Box<Vec<Outgoing>>>>,
    /// Set while this connection's resume is being prepared: live frames of the streams in
    /// `muted` are dropped (the resume replays them from history instead).
    resuming: AtomicBool,
    #[allow(clippy::box_collection)]
    muted: Mutex<Option<Box<Vec<StreamKey>>>>,
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
            metadata,
            outbox: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
            queued: AtomicBool::new(false),
            max_frames: limits.outbound_queue.max(1),
            max_bytes: limits.outbound_queue_bytes.max(1),
            close_code: AtomicU16::new(0),
            moving: AtomicBool::new(false),
            metrics,
            stored_sent: Mutex::new(None),
            acks: Mutex::new(None),
            holding: AtomicBool::new(false),
            held: Mutex::new(None),
            resuming: AtomicBool::new(false),
            muted: Mutex::new(None),
        }
    }

    /// Holds live point-to-point frames back until [`SessionHandle::release_held`].
    pub(crate) fn hold(&self) {
        self.holding.store(true, Ordering::Release);
    }

    /// Queues the held frames, in order, skipping any the offline inbox pushed meanwhile (that
    /// socket has it: its token settles as written), and stops holding.
    pub(crate) fn release_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        // Still under the lock: a push racing this waits, then finds holding off.
        for out in held.take().map(|b| *b).unwrap_or_default() {
            if let Some(Tracked::Live(t)) = &out.token {
                if self.sent_from_inbox(t.settlement().id()) {
                    if let Some(Tracked::Live(t)) = out.token {
                        t.written();
                    }
                    continue;
                }
            }
            self.push_now(out);
        }
        self.holding.store(false, Ordering::Release);
    }

    /// Holds back the live frames of `streams` until [`SessionHandle::unmute`]: the client
    /// asked to resume them (`docs/design.md` section 15).
    pub(crate) fn mute(&self, streams: Vec<StreamKey>) {
        if let Ok(mut m) = self.muted.lock() {
            *m = Some(Box::new(streams));
        }
        self.resuming.store(true, Ordering::Release);
    }

    /// Lets every stream's live frames through again.
    pub(crate) fn unmute(&self) {
        self.resuming.store(false, Ordering::Release);
        if let Ok(mut m) = self.muted.lock() {
            *m = None;
        }
    }

    /// Queues a frame of stream `key` (channel, broadcast), unless that stream is being
    /// resumed: then the resume replays it.
    pub(crate) fn push_stream(&self, key: &StreamKey, out: Outgoing) -> bool {
        if self.resuming.load(Ordering::Acquire) {
            let muted = self
                .muted
                .lock()
                .map(|m| m.as_ref().is_some_and(|m| m.contains(key)))
                .unwrap_or(false);
            if muted {
                return false;
            }
        }
        self.push(out)
    }

    /// Runs `f` on the pending acks, allocating them if needed and freeing them once empty
    /// (most connections sit idle after a burst).
    pub(crate) fn with_acks<R>(&self, f: impl FnOnce(&mut PendingAcks) -> R) -> R {
        let mut guard = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let acks = guard.get_or_insert_with(Box::default);
        let out = f(acks);
        if acks.is_empty() {
            *guard = None;
        }
        out
    }

    /// How many written messages wait for a required ack.
    pub(crate) fn unacked(&self) -> usize {
        self.acks
            .lock()
            .map(|a| a.as_ref().map_or(0, |a| a.unacked()))
            .unwrap_or(0)
    }

    /// Whether message `id` was written here and waits for a required ack.
    pub(crate) fn awaits_ack(&self, id: &MessageId) -> bool {
        self.acks
            .lock()
            .map(|a| a.as_ref().is_some_and(|a| a.requires(id)))
            .unwrap_or(false)
    }

    /// The required acks still outstanding, leaving none (the socket closed).
    pub(crate) fn take_unacked(&self) -> Vec<(MessageId, Ackable)> {
        let taken = self.acks.lock().map(|mut a| a.take()).unwrap_or_default();
        taken.map(|a| a.into_required()).unwrap_or_default()
    }

    /// Whether the offline inbox already pushed message `id` to this socket.
    pub(crate) fn sent_from_inbox(&self, id: &MessageId) -> bool {
        self.stored_sent
            .lock()
            .map(|s| s.as_ref().is_some_and(|s| s.contains(id)))
            .unwrap_or(false)
    }

    /// Queues a frame from the offline inbox unless this socket already got that id; returns
    /// whether it was queued.
    pub(crate) fn push_stored(&self, frame: Utf8Bytes, stored: StoredFrame) -> bool {
        // Written here already and waiting for its ack: this socket has it.
        if self.awaits_ack(&stored.id) {
            return false;
        }
        {
            let Ok(mut sent) = self.stored_sent.lock() else {
                return false;
            };
            let set = sent.get_or_insert_with(Default::default);
            if !set.insert(stored.id.clone()) {
                return false;
            }
        }
        self.push(Outgoing {
            frame,
            token: Some(Tracked::Stored(stored)),
            published: 0,
        })
    }

    /// Queues a frame; returns `false` when the connection is closing or the queue overflowed
    /// (then the connection is closed with 4008). A refused frame's token settles as not
    /// delivered.
    pub(crate) fn push(&self, out: Outgoing) -> bool {
        if self.holding.load(Ordering::Acquire) && matches!(out.token, Some(Tracked::Live(_))) {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if self.holding.load(Ordering::Acquire) {
                held.get_or_insert_with(Box::default).push(out);
                return true;
            }
        }
        self.push_now(out)
    }

    fn push_now(&self, out: Outgoing) -> bool {
        let len = out.frame.len();
        // A closing connection says so here; a finished one is refused under the queue's lock
        // once its queue was discarded.
        if self.close_code.load(Ordering::Acquire) != 0 {
            return false;
        }
        {
            // A poisoned lock means the writer panicked; the connection is finished either way.
            let Ok(mut q) = self.outbox.lock() else {
                return false;
            };
            if q.closed {
                return false;
            }
            if q.frames.len() >= self.max_frames || q.bytes + len > self.max_bytes {
                drop(q);
                self.close_slow();
                return false;
            }
            q.bytes += len;
            q.frames.push_back(out);
        }
        self.queued.store(true, Ordering::Release);
        self.waker.wake();
        true
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
    fn take(&self) -> VecDeque<Outgoing> {
        self.empty_queue(false)
    }

    /// The queued frames from the front, up to (not including) the first tracked frame past
    /// `budget` tracked frames: flow control keeps the rest, in order, until acks come.
    /// Returns the frames and whether some were held back.
    fn take_within(&self, budget: usize) -> (VecDeque<Outgoing>, bool) {
        let Ok(mut q) = self.outbox.lock() else {
            return (VecDeque::new(), false);
        };
        if budget == usize::MAX || q.frames.iter().filter(|o| o.token.is_some()).count() <= budget {
            q.bytes = 0;
            return (std::mem::take(&mut q.frames), false);
        }
        let mut left = budget;
        let cut = q
            .frames
            .iter()
            .position(|o| {
                if o.token.is_none() {
                    return false;
                }
                if left == 0 {
                    return true;
                }
                left -= 1;
                false
            })
            .unwrap_or(q.frames.len());
        let rest = q.frames.split_off(cut);
        let taken = std::mem::replace(&mut q.frames, rest);
        q.bytes = q.frames.iter().map(|o| o.frame.len()).sum();
        (taken, true)
    }

    /// Wakes the task to look at the queue again (acks freed room for held frames).
    fn requeue(&self) {
        self.queued.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Empties the queue and refuses anything pushed later (the connection is gone), handing
    /// back the point-to-point frames that were never written: their tokens settle as not
    /// delivered when dropped (by the caller, outside the queue's lock, since settling can send
    /// a report).
    pub(crate) fn take_unwritten(&self) -> Vec<crate::settle::FrameToken> {
        self.empty_queue(true)
            .into_iter()
            .filter_map(|o| match o.token {
                Some(Tracked::Live(t)) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Empties the queue (and, with `close`, refuses later pushes); returns what it held.
    fn empty_queue(&self, close: bool) -> VecDeque<Outgoing> {
        self.outbox
            .lock()
            .map(|mut q| {
                q.closed |= close;
                q.bytes = 0;
                std::mem::take(&mut q.frames)
            })
            .unwrap_or_default()
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

    fn push_pong(&self) {
        if self.push(Outgoing::plain(PONG)) {
            self.metrics.out(OutKind::Pong, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> SessionHandle {
        SessionHandle::new(
            ClientId::new("alice").expect("valid id"),
            ConnectionId::new("n1-1").expect("valid id"),
            serde_json::Value::Null,
            &LimitsConfig::default(),
            Arc::new(Metrics::default()),
        )
    }

    fn frame() -> Outgoing {
        Outgoing::plain(Utf8Bytes::from_static("{}"))
    }

    #[test]
    fn nothing_is_queued_once_the_queue_was_discarded() {
        // A connection whose peer went away has no close code, so the discard is what must
        // refuse later pushes, or frames would wait in a dead connection's queue.
        let h = handle();
        assert!(h.push(frame()));
        drop(h.take_unwritten());
        assert!(h.take().is_empty(), "discard left frames queued");
        assert!(!h.push(frame()), "a discarded queue took a frame");
        assert!(h.take().is_empty());
    }

    #[test]
    fn a_closed_connection_refuses_frames_at_once() {
        let h = handle();
        assert!(h.push(frame()));
        h.kick();
        assert!(!h.push(frame()), "a kicked connection took a frame");
        assert_eq!(
            h.take().len(),
            1,
            "only the frame pushed before the kick is queued"
        );
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_task_is_woken_for_frames_once_and_for_closing_always() {
        let h = handle();
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = TaskContext::from_waker(&waker);
        let count = || wakes.0.load(Ordering::SeqCst);

        assert_eq!(h.poll_wake(&mut cx), Poll::Pending);
        assert!(h.push(frame()));
        assert_eq!(count(), 1, "a push must wake the waiting task");
        assert_eq!(h.poll_wake(&mut cx), Poll::Ready(Wake::Frames));
        assert_eq!(h.take().len(), 1);
        assert_eq!(
            h.poll_wake(&mut cx),
            Poll::Pending,
            "frames already taken woke the task again"
        );
        assert_eq!(h.poll_closing(&mut cx), Poll::Pending);

        // Closing wins over frames queued before it, and is seen by both polls from then on.
        assert!(h.push(frame()));
        assert_eq!(count(), 2);
        h.kick();
        assert_eq!(
            h.poll_wake(&mut cx),
            Poll::Ready(Wake::Close(close::KICKED))
        );
        assert_eq!(h.poll_closing(&mut cx), Poll::Ready(close::KICKED));
        assert_eq!(
            h.poll_wake(&mut cx),
            Poll::Ready(Wake::Close(close::KICKED))
        );

        // A close wakes a waiting task.
        let other = handle();
        assert_eq!(other.poll_wake(&mut cx), Poll::Pending);
        other.replace();
        assert_eq!(count(), 3, "a close must wake the waiting task");
        assert_eq!(
            other.poll_wake(&mut cx),
            Poll::Ready(Wake::Close(close::REPLACED))
        );
    }
}
