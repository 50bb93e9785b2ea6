//! Node counters and latency histograms. Plain atomics bumped on the hot path; rendered in
//! Prometheus text format by the `/metrics` endpoint.
//!
//! - `histogram`: the fixed-bucket [`Histogram`] of durations and its bucket layouts;
//! - `render`: the Prometheus text of every family;
//! - `timed_broker`: the broker decorator that times the node's publishes;
//! - `webhooks`: the webhook counters.

mod histogram;
mod render;
mod timed_broker;
mod webhooks;

use std::sync::{
    atomic::{AtomicI64, AtomicU64, Ordering},
    OnceLock,
};

use impush_core::ReceiptStatus;

pub(crate) use histogram::{sampled_ts, since_ms, unix_now_us, Histogram, Latency, Publish};
pub(crate) use timed_broker::TimedBroker;
pub(crate) use webhooks::{WebhookDrop, WebhookPost};

/// Kinds of frames a node writes to clients.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OutKind {
    Message,
    Channel,
    Broadcast,
    Receipt,
    Pong,
}

/// Kinds of frames clients send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InKind {
    Ping,
    Ack,
    Ignored,
}

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CloseKind {
    Slow,
    TooLarge,
    DeadPeer,
    Kicked,
    Replaced,
    RateLimited,
    InvalidData,
}

/// Why the HTTP edge closed a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TimeoutKind {
    /// No complete request head within `limits.header_read_timeout`.
    Header,
    /// Idle between requests for `limits.keep_alive_timeout`.
    Idle,
    /// A request body not received within `limits.request_body_timeout`.
    Body,
}

/// Counters of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections: AtomicI64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) out: [AtomicU64; 5],
    pub(crate) inbound: [AtomicU64; 3],
    pub(crate) receipts: [AtomicU64; 4],
    pub(crate) closes: [AtomicU64; 7],
    pub(crate) token_rejections: AtomicU64,
    pub(crate) broker_publish_errors: AtomicU64,
    pub(crate) broker_lagged: AtomicU64,
    pub(crate) presence_errors: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) channel_index_rebuilds: AtomicU64,
    pub(crate) offline_stored: AtomicU64,
    pub(crate) offline_evicted: AtomicU64,
    pub(crate) offline_drained: AtomicU64,
    pub(crate) offline_errors: AtomicU64,
    /// Times a connection reached `limits.max_unacked` and its writes were held.
    pub(crate) flow_control_holds: AtomicU64,
    /// Written messages whose every socket closed before the client acked them: they went
    /// back to the offline inbox.
    pub(crate) unacked_requeued: AtomicU64,
    /// Connections closed with 1012 to move their client (drain, return home).
    pub(crate) moved: AtomicU64,
    /// Offline events saying `last` that a new connection of their client crossed: found
    /// connected after they went out, the client's connections were announced again.
    pub(crate) lasts_crossed: AtomicU64,
    /// Stored messages handed over to their client's owner (a per-node inbox store).
    pub(crate) inboxes_handed_over: AtomicU64,
    /// Streams reconnecting clients resumed without a gap (0), and those they could not (1).
    pub(crate) resumes: [AtomicU64; 2],
    /// Direct messages sent on to their receiver's owner (`node::forward`).
    pub(crate) forwarded: AtomicU64,
    /// Commands of a dead node's inbox re-routed by this node.
    pub(crate) taken_over: AtomicU64,
    /// WebSocket connects refused by `limits.connect_rate` (node) and `connect_rate_per_ip`.
    pub(crate) connects_throttled: [AtomicU64; 2],
    /// Open TCP connections counted against `limits.max_connections` (the edge's cap).
    pub(crate) http_connections: AtomicU64,
    pub(crate) http_refused: AtomicU64,
    pub(crate) http_timeouts: [AtomicU64; 3],
    pub(crate) accept_errors: AtomicU64,
    pub(crate) origin_rejections: AtomicU64,
    pub(crate) event_groups: AtomicI64,
    pub(crate) event_groups_refused: AtomicU64,
    /// Point-to-point messages: accepted by the API (their `ts`) to written, per frame.
    pub(crate) delivery_latency: Histogram<Latency>,
    /// Channel messages and broadcasts: accepted to written, for a sample of members
    /// (`histogram::CHANNEL_LATENCY_SAMPLE`), at most once per written batch.
    pub(crate) channel_latency: Histogram<Latency>,
    /// `Broker::publish` calls of the node and its embedded helper (see `timed_broker`).
    pub(crate) broker_publish: Histogram<Publish>,
    /// The `backend` label of `broker_publish`: the `[broker] kind`, set once at start.
    pub(crate) broker_backend: OnceLock<Box<str>>,
    /// WebSocket upgrade request to the connection attached.
    pub(crate) connect: Histogram<Latency>,
    /// Webhook POSTs and hooks delivered, dropped and queued.
    pub(crate) webhooks: webhooks::WebhookCounters,
}

impl Metrics {
    pub(crate) fn out(&self, kind: OutKind, n: u64) {
        self.out[kind as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inbound(&self, kind: InKind) {
        self.inbound[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `receivers` receipts of `status` (one per receiver, however many frames).
    pub(crate) fn receipt(&self, status: ReceiptStatus, receivers: u64) {
        let i = match status {
            ReceiptStatus::Delivered => 0,
            ReceiptStatus::Offline => 1,
            ReceiptStatus::Stored => 2,
            ReceiptStatus::Acked => 3,
        };
        self.receipts[i].fetch_add(receivers, Ordering::Relaxed);
    }

    /// A connect refused by `limits.connect_rate` (`per_ip` false) or `connect_rate_per_ip`.
    pub(crate) fn connect_throttled(&self, per_ip: bool) {
        Self::bump(&self.connects_throttled[usize::from(per_ip)]);
    }

    /// A stream a reconnecting client asked to resume: recovered, or told why not.
    pub(crate) fn resumed(&self, recovered: bool) {
        Self::bump(&self.resumes[usize::from(!recovered)]);
    }

    /// A connection reached `limits.max_unacked`: its writes wait for acks.
    pub(crate) fn flow_control_hold(&self) {
        Self::bump(&self.flow_control_holds);
    }

    pub(crate) fn close(&self, kind: CloseKind) {
        self.closes[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timeout(&self, kind: TimeoutKind) {
        self.http_timeouts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// TCP connections open on this node (HTTP, SSE and WebSocket), the number
    /// `limits.max_connections` caps.
    pub fn open_http_connections(&self) -> u64 {
        self.http_connections.load(Ordering::Relaxed)
    }

    /// Connections refused because `limits.max_connections` were open.
    pub fn refused_connections(&self) -> u64 {
        self.http_refused.load(Ordering::Relaxed)
    }

    /// WebSocket upgrades refused for an `Origin` not in `limits.allowed_origins`.
    pub fn origin_rejections(&self) -> u64 {
        self.origin_rejections.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections currently open on this node.
    pub fn open_connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections closed because their outbound queue overflowed (close code 4008).
    pub fn slow_consumer_closes(&self) -> u64 {
        self.closes[CloseKind::Slow as usize].load(Ordering::Relaxed)
    }

    /// Connections closed because their peer stopped answering (or reading).
    pub fn dead_peer_closes(&self) -> u64 {
        self.closes[CloseKind::DeadPeer as usize].load(Ordering::Relaxed)
    }

    /// Connect attempts refused for a bad token.
    pub fn token_rejections(&self) -> u64 {
        self.token_rejections.load(Ordering::Relaxed)
    }

    /// Client frames that were neither `ping` nor a valid `ack`.
    pub fn ignored_frames(&self) -> u64 {
        self.inbound[InKind::Ignored as usize].load(Ordering::Relaxed)
    }

    /// Receipt frames queued to senders.
    pub fn receipt_frames(&self) -> u64 {
        self.out[OutKind::Receipt as usize].load(Ordering::Relaxed)
    }

    /// Inbox messages dropped because their id was delivered already (broker redeliveries).
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates_dropped.load(Ordering::Relaxed)
    }

    /// Times a connection reached `limits.max_unacked` and its writes waited for acks.
    pub fn flow_control_holds(&self) -> u64 {
        self.flow_control_holds.load(Ordering::Relaxed)
    }

    /// Written messages that went back to the offline inbox because every socket that took
    /// them closed before the client acked.
    pub fn unacked_requeued(&self) -> u64 {
        self.unacked_requeued.load(Ordering::Relaxed)
    }

    /// Connections closed with 1012 to move their client (drain, return home).
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Offline events saying `last` found crossed by a new connection of their client after
    /// they went out (its connections were announced again).
    pub fn lasts_crossed(&self) -> u64 {
        self.lasts_crossed.load(Ordering::Relaxed)
    }

    /// Messages kept in the offline inbox.
    pub fn offline_stored(&self) -> u64 {
        self.offline_stored.load(Ordering::Relaxed)
    }

    /// Stored messages dropped to keep inboxes within their bounds.
    pub fn offline_evicted(&self) -> u64 {
        self.offline_evicted.load(Ordering::Relaxed)
    }
}
