//! Node counters. Plain atomics bumped on the hot path; rendered in Prometheus text format by
//! the `/metrics` endpoint.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use impush_core::{NodeId, ReceiptStatus};

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
}

/// Counters of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections: AtomicI64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) out: [AtomicU64; 5],
    pub(crate) inbound: [AtomicU64; 3],
    pub(crate) receipts: [AtomicU64; 4],
    pub(crate) closes: [AtomicU64; 5],
    pub(crate) token_rejections: AtomicU64,
    pub(crate) broker_publish_errors: AtomicU64,
    pub(crate) broker_lagged: AtomicU64,
    pub(crate) presence_errors: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) channel_index_rebuilds: AtomicU64,
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

    pub(crate) fn close(&self, kind: CloseKind) {
        self.closes[kind as usize].fetch_add(1, Ordering::Relaxed);
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
}

const OUT_LABELS: [&str; 5] = ["message", "channel", "broadcast", "receipt", "pong"];
const IN_LABELS: [&str; 3] = ["ping", "ack", "ignored"];
const RECEIPT_LABELS: [&str; 4] = ["delivered", "offline", "stored", "acked"];
const CLOSE_LABELS: [&str; 5] = ["slow", "too_large", "dead_peer", "kicked", "replaced"];

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
            "impush_channel_index_rebuilds_total",
            "counter",
            "Local channel index rebuilt from presence after a gap in the cluster feed.",
            &[(None, load(&self.channel_index_rebuilds).to_string())],
        );
        out
    }
}
