//! Node counters. Plain atomics bumped on the hot path; rendered in Prometheus text format by
//! the `/metrics` endpoint.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use impush_core::{NodeId, ReceiptStatus};

mod webhooks;
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
    /// Streams reconnecting clients resumed without a gap (0), and those they could not (1).
    pub(crate) resumes: [AtomicU64; 2],
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

    /// Messages kept in the offline inbox.
    pub fn offline_stored(&self) -> u64 {
        self.offline_stored.load(Ordering::Relaxed)
    }

    /// Stored messages dropped to keep inboxes within their bounds.
    pub fn offline_evicted(&self) -> u64 {
        self.offline_evicted.load(Ordering::Relaxed)
    }
}

const OUT_LABELS: [&str; 5] = ["message", "channel", "broadcast", "receipt", "pong"];
const IN_LABELS: [&str; 3] = ["ping", "ack", "ignored"];
const RECEIPT_LABELS: [&str; 4] = ["delivered", "offline", "stored", "acked"];
const TIMEOUT_LABELS: [&str; 3] = ["header", "idle", "body"];
const CLOSE_LABELS: [&str; 7] = [
    "slow",
    "too_large",
    "dead_peer",
    "kicked",
    "replaced",
    "rate_limited",
    "invalid_utf8",
];

impl Metrics {
    /// The counters in Prometheus text exposition format, labelled with `node`.
    pub fn render(&self, node: &NodeId) -> String {
        let mut out = String::with_capacity(4096);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut family =
            |name: &str, kind: &str, help: &str, samples: &[(Option<(&str, &str)>, String)]| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for (label, value) in samples {
                    match label {
                        Some((k, v)) => {
                            let _ = writeln!(out, "{name}{{node=\"{node}\",{k}=\"{v}\"}} {value}");
                        }
                        None => {
                            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
                        }
                    }
                }
            };
        let labelled = |key: &'static str, labels: &[&'static str], counters: &[AtomicU64]| {
            labels
                .iter()
                .zip(counters)
                .map(|(l, c)| (Some((key, *l)), load(c).to_string()))
                .collect::<Vec<_>>()
        };
        family(
            "impush_connections",
            "gauge",
            "Open WebSocket connections.",
            &[(None, self.connections.load(Ordering::Relaxed).to_string())],
        );
        family(
            "impush_connections_opened_total",
            "counter",
            "WebSocket connections accepted.",
            &[(None, load(&self.connections_total).to_string())],
        );
        family(
            "impush_frames_out_total",
            "counter",
            "Frames queued to clients, by type.",
            &labelled("type", &OUT_LABELS, &self.out),
        );
        family(
            "impush_frames_in_total",
            "counter",
            "Frames received from clients, by type (ignored = neither ping nor a valid ack).",
            &labelled("type", &IN_LABELS, &self.inbound),
        );
        family(
            "impush_receipts_total",
            "counter",
            "Receipts produced, by status (one per receiver; a receipt frame may cover many).",
            &labelled("status", &RECEIPT_LABELS, &self.receipts),
        );
        family(
            "impush_closes_total",
            "counter",
            "Connections closed by the server, by reason (slow = outbound queue full, 4008).",
            &labelled("reason", &CLOSE_LABELS, &self.closes),
        );
        family(
            "impush_token_rejections_total",
            "counter",
            "Connect attempts refused for a missing, forged, expired, reused or wrong-node token.",
            &[(None, load(&self.token_rejections).to_string())],
        );
        family(
            "impush_broker_publish_errors_total",
            "counter",
            "Broker publishes that failed.",
            &[(None, load(&self.broker_publish_errors).to_string())],
        );
        family(
            "impush_broker_lagged_total",
            "counter",
            "Broker messages lost because this node read too slowly.",
            &[(None, load(&self.broker_lagged).to_string())],
        );
        family(
            "impush_presence_errors_total",
            "counter",
            "Presence store calls that failed.",
            &[(None, load(&self.presence_errors).to_string())],
        );
        family(
            "impush_undecodable_total",
            "counter",
            "Broker messages dropped because they could not be decoded.",
            &[(None, load(&self.undecodable).to_string())],
        );
        family(
            "impush_duplicates_dropped_total",
            "counter",
            "Inbox messages dropped because their id was delivered already (redeliveries).",
            &[(None, load(&self.duplicates_dropped).to_string())],
        );
        family(
            "impush_offline_stored_total",
            "counter",
            "Messages kept in the offline inbox for a receiver that was not connected.",
            &[(None, load(&self.offline_stored).to_string())],
        );
        family(
            "impush_offline_evicted_total",
            "counter",
            "Stored messages dropped to keep an inbox within max_per_client / max_bytes.",
            &[(None, load(&self.offline_evicted).to_string())],
        );
        family(
            "impush_offline_drained_total",
            "counter",
            "Stored messages pushed to a client when it connected.",
            &[(None, load(&self.offline_drained).to_string())],
        );
        family(
            "impush_offline_errors_total",
            "counter",
            "Offline store calls that failed (retried, or left for the next connect).",
            &[(None, load(&self.offline_errors).to_string())],
        );
        family(
            "impush_flow_control_holds_total",
            "counter",
            "Times a connection had limits.max_unacked messages written and unacked, so its \
             writes waited for acks.",
            &[(None, load(&self.flow_control_holds).to_string())],
        );
        family(
            "impush_unacked_requeued_total",
            "counter",
            "Written messages whose sockets all closed before the client acked them; they wait \
             in the offline inbox and are pushed again (redelivered) on the next connection.",
            &[(None, load(&self.unacked_requeued).to_string())],
        );
        family(
            "impush_resumes_total",
            "counter",
            "Streams reconnecting clients asked to resume, by outcome (recovered: every missed \
             publication replayed; failed: told recovered:false).",
            &labelled("outcome", &["recovered", "failed"], &self.resumes),
        );
        family(
            "impush_moved_total",
            "counter",
            "Connections closed with 1012 to move their client to another node (drain, return \
             home).",
            &[(None, load(&self.moved).to_string())],
        );
        family(
            "impush_taken_over_total",
            "counter",
            "Commands of a dead node's inbox this node re-routed to their new owners.",
            &[(None, load(&self.taken_over).to_string())],
        );
        family(
            "impush_connects_throttled_total",
            "counter",
            "WebSocket connects refused by limits.connect_rate (scope=node, 503) or \
             limits.connect_rate_per_ip (scope=ip, 429).",
            &labelled("scope", &["node", "ip"], &self.connects_throttled),
        );
        family(
            "impush_channel_index_rebuilds_total",
            "counter",
            "Local channel index rebuilt from presence after a gap in the cluster feed.",
            &[(None, load(&self.channel_index_rebuilds).to_string())],
        );
        family(
            "impush_http_connections",
            "gauge",
            "Open TCP connections (HTTP, SSE and WebSocket), capped by limits.max_connections.",
            &[(None, load(&self.http_connections).to_string())],
        );
        family(
            "impush_http_connections_refused_total",
            "counter",
            "Connections answered 503 and closed because limits.max_connections were open.",
            &[(None, load(&self.http_refused).to_string())],
        );
        family(
            "impush_http_timeouts_total",
            "counter",
            "HTTP connections closed or requests failed for a timeout, by kind (header = \
             limits.header_read_timeout, idle = limits.keep_alive_timeout, body = \
             limits.request_body_timeout).",
            &labelled("kind", &TIMEOUT_LABELS, &self.http_timeouts),
        );
        family(
            "impush_http_accept_errors_total",
            "counter",
            "Failed accepts other than a client giving up (e.g. out of file descriptors).",
            &[(None, load(&self.accept_errors).to_string())],
        );
        family(
            "impush_origin_rejections_total",
            "counter",
            "WebSocket upgrades refused with 403 for an Origin not in limits.allowed_origins.",
            &[(None, load(&self.origin_rejections).to_string())],
        );
        family(
            "impush_event_groups",
            "gauge",
            "SSE ?group= names holding a place on this node (limits.max_event_groups; idle \
             places are released when a new group needs one).",
            &[(None, self.event_groups.load(Ordering::Relaxed).to_string())],
        );
        family(
            "impush_event_groups_refused_total",
            "counter",
            "SSE requests refused with 429 because limits.max_event_groups groups were held.",
            &[(None, load(&self.event_groups_refused).to_string())],
        );
        self.webhooks.render(&mut out, node);
        out
    }
}
