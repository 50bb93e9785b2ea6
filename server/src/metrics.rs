//! Node counters. Plain atomics bumped on the hot path; rendered in Prometheus text format by
//! the `/metrics` endpoint.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use impush_core::ReceiptStatus;

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
}

impl Metrics {
    pub(crate) fn out(&self, kind: OutKind, n: u64) {
        self.out[kind as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inbound(&self, kind: InKind) {
        self.inbound[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn receipt(&self, status: ReceiptStatus) {
        let i = match status {
            ReceiptStatus::Delivered => 0,
            ReceiptStatus::Offline => 1,
            ReceiptStatus::Stored => 2,
            ReceiptStatus::Acked => 3,
        };
        self.receipts[i].fetch_add(1, Ordering::Relaxed);
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
}
