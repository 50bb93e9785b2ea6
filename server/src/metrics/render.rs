//! [`Metrics::render`]: every family of the node in Prometheus text exposition format
//! (version 0.0.4), each labelled with the node id. Every family is rendered always, at 0
//! before anything happened, so dashboards and alerts can name them from a node's first
//! scrape.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

use impush_core::NodeId;

use super::Metrics;

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
            "impush_inbox_handed_over_total",
            "counter",
            "Stored messages this node handed over to their client's owner (a store kept per \
             node, once the client's home was back).",
            &[(None, load(&self.inboxes_handed_over).to_string())],
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
