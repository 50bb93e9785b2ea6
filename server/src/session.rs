//! One WebSocket connection: its [`SessionHandle`] (what the node pushes into) and the task
//! that drives the socket ([`run`]).
//!
//! Everything for a connection happens on one task: a `select!` over the node's outbound queue,
//! the client's frames, the ping timer and the connection's cancellation. The outbound queue is
//! bounded in frames and bytes; a client that cannot keep up is closed with 4008 instead of being
//! buffered without bound. Frames are shared `Utf8Bytes`: a message for many sockets is
//! serialised once.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU16, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use impush_core::{protocol::ClientFrame, ClientId, ConnectionId, MessageId};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{CloseKind, InKind},
    node::Node,
};

/// Close codes of the client protocol (DESIGN.md section 4).
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const TOO_LARGE: u16 = 1009;
    pub(crate) const INTERNAL: u16 = 1011;
    pub(crate) const KICKED: u16 = 4001;
    pub(crate) const SLOW: u16 = 4008;
    pub(crate) const REPLACED: u16 = 4009;
}

/// How long a closing connection may take to get its close frame out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// A frame on its way to one connection, plus what to remember once it is written.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) frame: Utf8Bytes,
    /// `(message id, sender)` of a message that asked for a receipt: the client may ack it.
    pub(crate) ack: Option<(MessageId, ClientId)>,
}

/// The node's side of a connection.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) client: ClientId,
    pub(crate) connection: ConnectionId,
    tx: mpsc::Sender<Outgoing>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    close_code: AtomicU16,
    cancel: CancellationToken,
}

impl SessionHandle {
    /// Queues a frame; on overflow the connection is closed with 4008 and `false` returned.
    pub(crate) fn push(&self, out: Outgoing, node: &Node) -> bool {
        let len = out.frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.close_slow(node);
            return false;
        }
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(err) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                if matches!(err, mpsc::error::TrySendError::Full(_)) {
                    self.close_slow(node);
                }
                false
            }
        }
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
    let (tx, mut rx) = mpsc::channel(limits.outbound_queue.max(1));
    let handle = Arc::new(SessionHandle {
        client,
        connection: node.next_connection_id(),
        tx,
        queued_bytes: AtomicUsize::new(0),
        max_bytes: limits.outbound_queue_bytes.max(1),
        close_code: AtomicU16::new(0),
        cancel,
    });
    node.attach(&handle, &metadata).await;
    let (end, socket) = drive(socket, &node, &handle, &mut rx).await;
    node.detach(&handle, &metadata).await;
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
    rx: &mut mpsc::Receiver<Outgoing>,
) -> (End, Option<WebSocket>) {
    let limits = &node.limits;
    let mut pending = PendingAcks::new(limits.max_pending_acks);
    let mut last_seen = Instant::now();
    let silence_limit = limits.ping_interval + limits.pong_timeout;
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(0);

    let end = loop {
        tokio::select! {
            biased;
            () = handle.cancel.cancelled() => break End::Close(handle.close_code()),
            out = rx.recv() => {
                let Some(out) = out else { break End::Close(close::INTERNAL) };
                batch.push(out);
                while batch.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let bytes: usize = batch.iter().map(|o| o.frame.len()).sum();
                handle.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                for out in &batch {
                    if let Some((id, sender)) = &out.ack {
                        pending.insert(id.clone(), sender.clone());
                    }
                }
                let write = write_batch(&mut socket, &mut batch);
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

async fn write_batch(socket: &mut WebSocket, batch: &mut Vec<Outgoing>) -> Result<(), axum::Error> {
    for out in batch.drain(..) {
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
