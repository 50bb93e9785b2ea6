//! Webhook counters (`docs/design.md` section 17): how POSTs ended, hooks delivered, hooks
//! dropped by reason, hooks waiting.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use impush_core::NodeId;

use super::Metrics;

/// How one webhook POST ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WebhookPost {
    /// A 2xx answer.
    Ok,
    /// Any other answer.
    ErrorStatus,
    /// No answer: refused, reset, timed out.
    NoResponse,
}

/// Why hooks were dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WebhookDrop {
    /// The endpoint's queue was full.
    QueueFull,
    /// The endpoint refused the POST (a 4xx other than 408 and 429, or a redirect).
    Refused,
    /// Still failing at `retry.max_attempts` or at the end of `retry.max_age`.
    RetriesExhausted,
    /// Unsent when the shutdown grace ran out, or queued after shutdown began.
    Shutdown,
}

const POST_LABELS: [&str; 3] = ["ok", "error_status", "no_response"];
const DROP_LABELS: [&str; 4] = ["queue_full", "refused", "retries_exhausted", "shutdown"];

/// The counters, one set for all of a node's endpoints.
#[derive(Debug, Default)]
pub(crate) struct WebhookCounters {
    posts: [AtomicU64; 3],
    delivered: AtomicU64,
    dropped: [AtomicU64; 4],
    queued: AtomicI64,
}

impl Metrics {
    pub(crate) fn webhook_post(&self, outcome: WebhookPost) {
        Self::bump(&self.webhooks.posts[outcome as usize]);
    }

    pub(crate) fn webhook_delivered(&self, hooks: u64) {
        self.webhooks.delivered.fetch_add(hooks, Ordering::Relaxed);
    }

    pub(crate) fn webhook_dropped(&self, why: WebhookDrop, hooks: u64) {
        self.webhooks.dropped[why as usize].fetch_add(hooks, Ordering::Relaxed);
    }

    /// Hooks entered an endpoint's queue.
    pub(crate) fn webhook_queued(&self, hooks: u64) {
        self.webhooks
            .queued
            .fetch_add(hooks as i64, Ordering::Relaxed);
    }

    /// Hooks left an endpoint's queue for good (delivered or dropped).
    pub(crate) fn webhook_dequeued(&self, hooks: u64) {
        self.webhooks
            .queued
            .fetch_sub(hooks as i64, Ordering::Relaxed);
    }
}

impl WebhookCounters {
    /// The webhook families in Prometheus text format.
    pub(super) fn render(&self, out: &mut String, node: &NodeId) {
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, &str, i64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (k, v, n) in samples {
                if k.is_empty() {
                    let _ = writeln!(out, "{name}{{node=\"{node}\"}} {n}");
                } else {
                    let _ = writeln!(out, "{name}{{node=\"{node}\",{k}=\"{v}\"}} {n}");
                }
            }
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        let labelled = |key: &'static str, labels: &[&'static str], counters: &[AtomicU64]| {
            labels
                .iter()
                .zip(counters)
                .map(|(l, c)| (key, *l, load(c)))
                .collect::<Vec<_>>()
        };
        family(
            "impush_webhook_posts_total",
            "counter",
            "Webhook POSTs, by outcome (ok = 2xx; error_status = any other answer; no_response = \
             refused, reset or timed out).",
            &labelled("outcome", &POST_LABELS, &self.posts),
        );
        family(
            "impush_webhook_delivered_total",
            "counter",
            "Hooks in webhook POSTs answered 2xx.",
            &[("", "", load(&self.delivered))],
        );
        family(
            "impush_webhook_dropped_total",
            "counter",
            "Hooks dropped, by reason (queue_full = webhooks.queue was full; refused = a 4xx \
             other than 408/429; retries_exhausted = still failing at retry.max_attempts or \
             retry.max_age; shutdown = unsent when the shutdown grace ran out).",
            &labelled("reason", &DROP_LABELS, &self.dropped),
        );
        family(
            "impush_webhook_queued",
            "gauge",
            "Hooks waiting in endpoint queues or in a POST not yet answered.",
            &[("", "", self.queued.load(Ordering::Relaxed))],
        );
    }
}
