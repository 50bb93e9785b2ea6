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
use impush_core::{protocol::ClientFrame, ClientId, ConnectionId, MessageId};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{CloseKind, InKind},
    node::Node,
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

/// A frame on its way to one connection, plus what to remember once it is written.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) frame: Utf8Bytes,
    /// `(message id, sender)` of a message that asked for a receipt: the client may ack it.
    pub(crate) ack: Option<(MessageId, ClientId)>,
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
    outbox: Mutex<Outbox>,
    ready: Notify,
    max_frames: usize,
    max_bytes: usize,
    close_code: AtomicU16,
    cancel: CancellationToken,
}

impl SessionHandle {
    /// Queues a frame; on overflow the connection is closed with 4008 and `false` returned.
    pub(crate) fn push(&self, out: Outgoing, node: &Node) -> bool {
        let len = out.frame.len();
        {
            // A poisoned lock means the writer panicked; the connection is finished either way.
            let Ok(mut q) = self.outbox.lock() else {
                return false;
            };
            if q.frames.len() >= self.max_frames || q.bytes + len > self.max_bytes {
                drop(q);
                self.close_slow(node);
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

    fn close_slow(&self, node: &Node) {
        if self.close(close::SLOW) {
            node.metrics.close(CloseKind::Slow);
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
enum End {
    /// Close with this code.
    Close(u16),
    /// The peer is gone or closed first: nothing to send.
    Gone,
}

/// Drives one accepted connection until it closes.
pub(crate) async fn run(
    socket: WebSocket,
    node: Arc<Node>,
    client: ClientId,
    metadata: serde_json::Value,
    cancel: CancellationToken,
) {
    let limits = &node.limits;
    let handle = Arc::new(SessionHandle {
        client,
        connection: node.next_connection_id(),
        outbox: Mutex::new(Outbox::default()),
        ready: Notify::new(),
        max_frames: limits.outbound_queue.max(1),
        max_bytes: limits.outbound_queue_bytes.max(1),
        close_code: AtomicU16::new(0),
        cancel,
    });
    // Boxed: attach and detach are large futures needed once, and the task keeps the space of
    // its largest state for its whole life.
    Box::pin(node.attach(&handle, &metadata)).await;
    let (end, socket) = drive(socket, &node, &handle).await;
    Box::pin(node.detach(&handle, &metadata)).await;
    if let (End::Close(code), Some(mut socket)) = (end, socket) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(""),
        };
        // A client that stopped reading may never take the close frame; don't wait forever.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    }
}

async fn drive(
    mut socket: WebSocket,
    node: &Node,
    handle: &SessionHandle,
) -> (End, Option<WebSocket>) {
    let limits = &node.limits;
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
                for out in &batch {
                    if let Some((id, sender)) = &out.ack {
                        pending.insert(id.clone(), sender.clone());
                    }
                }
                let write = write_batch(&mut socket, batch);
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
                            node.metrics.close(CloseKind::TooLarge);
                            break End::Close(close::TOO_LARGE);
                        }
                        break End::Gone;
                    }
                    Some(Ok(Message::Text(text))) => on_client_text(node, handle, &mut pending, &text).await,
                    Some(Ok(Message::Binary(_))) => node.metrics.inbound(InKind::Ignored),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > silence_limit {
                    node.metrics.close(CloseKind::DeadPeer);
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

async fn write_batch(socket: &mut WebSocket, batch: VecDeque<Outgoing>) -> Result<(), axum::Error> {
    for out in batch {
        socket.feed(Message::Text(out.frame)).await?;
    }
    socket.flush().await
}

async fn on_client_text(
    node: &Node,
    handle: &SessionHandle,
    pending: &mut PendingAcks,
    text: &str,
) {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame::Ping) => {
            node.metrics.inbound(InKind::Ping);
            node.push_pong(handle);
        }
        Ok(ClientFrame::Ack { id }) => match pending.take(&id) {
            Some(sender) => {
                node.metrics.inbound(InKind::Ack);
                node.acked(&id, &sender, &handle.client).await;
            }
            // Acks for unknown ids (never delivered here, no receipt asked, or acked twice)
            // must not produce receipts: a client could otherwise forge them.
            None => node.metrics.inbound(InKind::Ignored),
        },
        Err(_) => node.metrics.inbound(InKind::Ignored),
    }
}

fn is_too_large(err: axum::Error) -> bool {
    let inner = err.into_inner();
    matches!(
        inner.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Closes `handle` as replaced (4009) and counts it.
pub(crate) fn replace(handle: &SessionHandle, node: &Node) {
    if handle.close(close::REPLACED) {
        node.metrics.close(CloseKind::Replaced);
    }
}

/// Closes `handle` as kicked (4001) and counts it.
pub(crate) fn kick(handle: &SessionHandle, node: &Node) {
    if handle.close(close::KICKED) {
        node.metrics.close(CloseKind::Kicked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(WebSocket, Arc<Node>, ClientId, serde_json::Value, CancellationToken) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection is one task holding this future: it is per-socket memory.
    #[test]
    fn session_future_stays_small() {
        let size = future_size(run);
        eprintln!("session future: {size} bytes");
        assert!(size <= 3072, "session future grew to {size} bytes");
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
