//! One WebSocket connection: its [`SessionHandle`] (what the node pushes into) and the task
//! that drives the socket ([`run`]).
//!
//! Everything for a connection happens on one task: a `select!` over the node's outbound queue,
//! the client's frames, the ping timer and the connection's cancellation. The outbound queue is
//! bounded in frames and bytes; a client that cannot keep up is closed with 4008 instead of being
//! buffered without bound. Frames are shared `Utf8Bytes`: a message for many sockets is
//! serialised once.
//!
//! Idle connections are the common case (tens of thousands per node), so the queue is a plain
//! `VecDeque` behind a short mutex plus a `Notify`: it holds no heap memory until something is
//! queued, and the writer takes the whole batch at once, freeing it after writing. (A bounded
//! `mpsc` channel keeps a 2 KiB block per connection even when empty.)
//!
//! A session knows nothing of the node: it counts into [`Metrics`], settles the
//! [`FrameToken`]s of the frames it writes, and reports client acks as [`AckEvent`]s.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use impush_core::{config::LimitsConfig, protocol::ClientFrame, ClientId, ConnectionId, MessageId};
use tokio::{
    sync::{mpsc, Notify},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{CloseKind, InKind, Metrics, OutKind},
    settle::{AckEvent, FrameToken},
};

/// Close codes of the client protocol (DESIGN.md section 4).
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const TOO_LARGE: u16 = 1009;
    pub(crate) const KICKED: u16 = 4001;
    pub(crate) const SLOW: u16 = 4008;
    pub(crate) const REPLACED: u16 = 4009;
}

/// How long a closing connection may take to get its close frame out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"pong"}"#);

/// A frame on its way to one connection.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) frame: Utf8Bytes,
    /// Set for point-to-point messages: settles the message once written (or dropped).
    pub(crate) token: Option<FrameToken>,
}

impl Outgoing {
    /// A frame nothing waits on (channel, broadcast, receipt, pong).
    pub(crate) fn plain(frame: Utf8Bytes) -> Self {
        Self { frame, token: None }
    }
}

/// Frames waiting for the writer.
#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Outgoing>,
    bytes: usize,
}

/// The node's side of a connection.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) client: ClientId,
    pub(crate) connection: ConnectionId,
    /// What `prepare_connect` signed in; it travels with the online/offline events.
    pub(crate) metadata: serde_json::Value,
    outbox: Mutex<Outbox>,
    ready: Notify,
    max_frames: usize,
    max_bytes: usize,
    close_code: AtomicU16,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
}

impl SessionHandle {
    /// The handle of a new connection of `client`.
    pub(crate) fn new(
        client: ClientId,
        connection: ConnectionId,
        metadata: serde_json::Value,
        limits: &LimitsConfig,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            connection,
            metadata,
            outbox: Mutex::new(Outbox::default()),
            ready: Notify::new(),
            max_frames: limits.outbound_queue.max(1),
            max_bytes: limits.outbound_queue_bytes.max(1),
            close_code: AtomicU16::new(0),
            cancel,
            metrics,
        }
    }

    /// Queues a frame; returns `false` when the connection is closing or the queue overflowed
    /// (then the connection is closed with 4008). A refused frame's token settles as not
    /// delivered.
    pub(crate) fn push(&self, out: Outgoing) -> bool {
        let len = out.frame.len();
        if self.cancel.is_cancelled() {
            return false;
        }
        {
            // A poisoned lock means the writer panicked; the connection is finished either way.
            let Ok(mut q) = self.outbox.lock() else {
                return false;
            };
            if q.frames.len() >= self.max_frames || q.bytes + len > self.max_bytes {
                drop(q);
                self.close_slow();
                return false;
            }
            q.bytes += len;
            q.frames.push_back(out);
        }
        self.ready.notify_one();
        true
    }

    /// Everything queued so far, leaving the queue empty (and unallocated).
    fn take(&self) -> VecDeque<Outgoing> {
        self.outbox
            .lock()
            .map(|mut q| std::mem::take(&mut *q).frames)
            .unwrap_or_default()
    }

    /// Drops whatever is still queued (the connection is gone): their tokens settle as not
    /// delivered now instead of whenever the last reference to the handle goes.
    pub(crate) fn discard_queued(&self) {
        drop(self.take());
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
        self.cancel.cancel();
        first
    }

    fn close_code(&self) -> u16 {
        match self.close_code.load(Ordering::Acquire) {
            0 => close::GOING_AWAY, // cancelled by node shutdown
            c => c,
        }
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

/// The ids of delivered messages the client may still ack, oldest first, bounded.
#[derive(Debug)]
struct PendingAcks {
    cap: usize,
    order: VecDeque<MessageId>,
    senders: HashMap<MessageId, ClientId>,
}

impl PendingAcks {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            order: VecDeque::new(),
            senders: HashMap::new(),
        }
    }

    fn insert(&mut self, id: MessageId, sender: ClientId) {
        if self.cap == 0 || self.senders.contains_key(&id) {
            return;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.senders.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.senders.insert(id, sender);
    }

    fn take(&mut self, id: &MessageId) -> Option<ClientId> {
        let sender = self.senders.remove(id)?;
        self.order.retain(|x| x != id);
        if self.senders.is_empty() {
            // Give the capacity back: most connections sit idle after a burst.
            *self = Self::new(self.cap);
        }
        Some(sender)
    }
}

/// Why the loop ended, and whether a close frame should be sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// Close with this code.
    Close(u16),
    /// The peer is gone or closed first: nothing to send.
    Gone,
}

/// What a session needs from its node: limits, and where client acks go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    pub(crate) limits: &'a LimitsConfig,
    pub(crate) acks: &'a mpsc::UnboundedSender<AckEvent>,
}

/// Drives one accepted connection until it must close; returns why and, when a close frame is
/// owed, the socket to send it on (see [`close_socket`]).
pub(crate) async fn drive(
    mut socket: WebSocket,
    handle: &SessionHandle,
    ctx: Context<'_>,
) -> (End, Option<WebSocket>) {
    let limits = ctx.limits;
    let metrics = &handle.metrics;
    let mut pending = PendingAcks::new(limits.max_pending_acks);
    let mut last_seen = Instant::now();
    let silence_limit = limits.ping_interval + limits.pong_timeout;
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let end = loop {
        tokio::select! {
            biased;
            () = handle.cancel.cancelled() => break End::Close(handle.close_code()),
            () = handle.ready.notified() => {
                let batch = handle.take();
                let write = write_batch(&mut socket, batch, &mut pending);
                tokio::select! {
                    biased;
                    // A slow consumer is cancelled while its write is stuck; stop waiting.
                    () = handle.cancel.cancelled() => break End::Close(handle.close_code()),
                    res = write => if res.is_err() { break End::Gone },
                }
            }
            msg = socket.next() => {
                last_seen = Instant::now();
                match msg {
                    None => break End::Gone,
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the close reply; send it so the client sees a
                        // clean close instead of 1006.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush()).await;
                        break End::Gone;
                    }
                    Some(Err(err)) => {
                        if is_too_large(err) {
                            metrics.close(CloseKind::TooLarge);
                            break End::Close(close::TOO_LARGE);
                        }
                        break End::Gone;
                    }
                    Some(Ok(Message::Text(text))) => on_client_text(handle, &mut pending, ctx.acks, &text),
                    Some(Ok(Message::Binary(_))) => metrics.inbound(InKind::Ignored),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > silence_limit {
                    metrics.close(CloseKind::DeadPeer);
                    tracing::info!(client = %handle.client, "closing silent connection");
                    // The peer is not answering; a close frame would go unread.
                    break End::Gone;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Gone;
                }
            }
        }
    };
    let socket = match end {
        End::Close(_) => Some(socket),
        End::Gone => None,
    };
    (end, socket)
}

/// Sends the close frame `code`, giving up after a while: a client that stopped reading may
/// never take it.
pub(crate) async fn close_socket(mut socket: WebSocket, code: u16) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(""),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
}

/// Writes a batch and flushes it; only then are its point-to-point frames delivered (and, when
/// their sender wants receipts, ackable). On an error the unwritten tokens settle as dropped.
async fn write_batch(
    socket: &mut WebSocket,
    batch: VecDeque<Outgoing>,
    pending: &mut PendingAcks,
) -> Result<(), axum::Error> {
    let mut tokens = Vec::new();
    for out in batch {
        socket.feed(Message::Text(out.frame)).await?;
        tokens.extend(out.token);
    }
    socket.flush().await?;
    for token in tokens {
        if let Some((id, sender)) = token.settlement().ackable() {
            pending.insert(id.clone(), sender.clone());
        }
        token.written();
    }
    Ok(())
}

fn on_client_text(
    handle: &SessionHandle,
    pending: &mut PendingAcks,
    acks: &mpsc::UnboundedSender<AckEvent>,
    text: &str,
) {
    let metrics = &handle.metrics;
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame::Ping) => {
            metrics.inbound(InKind::Ping);
            handle.push_pong();
        }
        Ok(ClientFrame::Ack { id }) => match pending.take(&id) {
            Some(sender) => {
                metrics.inbound(InKind::Ack);
                let _ = acks.send(AckEvent {
                    id,
                    sender,
                    receiver: handle.client.clone(),
                });
            }
            // Acks for unknown ids (never delivered here, no receipt asked, or acked twice)
            // must not produce receipts: a client could otherwise forge them.
            None => metrics.inbound(InKind::Ignored),
        },
        Err(_) => metrics.inbound(InKind::Ignored),
    }
}

fn is_too_large(err: axum::Error) -> bool {
    let inner = err.into_inner();
    matches!(
        inner.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(WebSocket, &'a SessionHandle, Context<'a>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection is one task waiting in this future: it is per-socket memory.
    #[test]
    fn session_future_stays_small() {
        let size = future_size(drive);
        eprintln!("session future: {size} bytes");
        assert!(size <= 2048, "session future grew to {size} bytes");
    }

    #[test]
    fn pending_acks_give_memory_back_when_empty() {
        let mut p = PendingAcks::new(4);
        let id = MessageId::new("m1").unwrap();
        p.insert(id.clone(), ClientId::new("s").unwrap());
        assert!(p.senders.capacity() > 0);
        assert!(p.take(&id).is_some());
        assert_eq!(p.senders.capacity(), 0);
        assert_eq!(p.order.capacity(), 0);
    }
}
