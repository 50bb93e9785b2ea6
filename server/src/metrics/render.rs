//! [`Metrics::render`]: every family of the node in Prometheus text exposition format
//! (version 0.0.4), each labelled with the node id. Every family is rendered always, at 0 (or
//! with empty buckets) before anything happened, so dashboards and alerts can name them from
//! a node's first scrape.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

use impush_core::NodeId;

use super::{
    histogram::{Buckets, Histogram},
    Metrics,
};

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
            "impush_tasks",
            "gauge",
            "Tasks alive in the tokio runtime serving this endpoint: one per connection and \
             per SSE stream, the node's background loops, and work in flight. The whole \
             runtime's count: an application embedding the node adds its own tasks.",
            &[(None, alive_tasks().to_string())],
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
            "impush_lasts_crossed_total",
            "counter",
            "Offline events saying last:true this node published that a new connection of \
             the client crossed (found connected just after): its connections were announced \
             online again.",
            &[(None, load(&self.lasts_crossed).to_string())],
        );
        family(
            "impush_inbox_handed_over_total",
            "counter",
            "Stored messages this node handed over to their client's owner (a store kept per \
             node, once the client's home was back).",
            &[(None, load(&self.inboxes_handed_over).to_string())],
        );
        family(
            "impush_messages_forwarded_total",
            "counter",
            "Direct messages that reached this node for a receiver it neither held nor owned \
             (the sender's view of the cluster differed) and that it sent on to the owner.",
            &[(None, load(&self.forwarded).to_string())],
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
        histogram(
            &mut out,
            node,
            "impush_delivery_latency_seconds",
            "Point-to-point messages: from the API accepting the message (its ts, stamped by the \
             helper) to its frame written to a socket; one observation per written frame. \
             Resolution 1 ms; a sender clock ahead of the node's counts as 0.",
            None,
            &self.delivery_latency,
        );
        histogram(
            &mut out,
            node,
            "impush_channel_delivery_latency_seconds",
            "Channel messages and broadcasts: from the API accepting the publication (its ts) \
             to its frame written to a socket, for a sample of members (the first and every \
             64th in fan-out order), at most once per written batch (its oldest). Resolution \
             1 ms; clock skew clamped to 0.",
            None,
            &self.channel_latency,
        );
        let backend = self.broker_backend.get().map_or("", |b| &**b);
        histogram(
            &mut out,
            node,
            "impush_broker_publish_seconds",
            "Broker publish calls made by this node and its embedded helper, failed ones \
             included, by backend ([broker] kind).",
            Some(("backend", backend)),
            &self.broker_publish,
        );
        histogram(
            &mut out,
            node,
            "impush_connect_seconds",
            "WebSocket connects: from the upgrade request to the connection attached (presence \
             written, stored messages queued, online event published).",
            None,
            &self.connect,
        );
        self.webhooks.render(&mut out, node);
        out
    }
}

/// Tasks alive in the current tokio runtime (0 outside one); reading it is one atomic load.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks())
}

/// Renders `h` as the histogram family `name` (seconds): cumulative `_bucket`s by `le`, then
/// `_sum` and `_count`.
fn histogram<B: Buckets>(
    out: &mut String,
    node: &NodeId,
    name: &str,
    help: &str,
    label: Option<(&str, &str)>,
    h: &Histogram<B>,
) {
    let labels = match label {
        Some((k, v)) => format!("node=\"{node}\",{k}=\"{}\"", escape(v)),
        None => format!("node=\"{node}\""),
    };
    let s = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, count) in h.bounds_us().iter().zip(&s.cumulative) {
        let le = seconds(*bound);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
    }
    let count = s.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", seconds(s.sum_us));
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Microseconds as seconds, in the shortest form that reads back the same (`0.0005`, `1`).
fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_histogram_renders_before_anything_happened() {
        let m = Metrics::default();
        let text = m.render(&"n1".parse().unwrap());
        for name in [
            "impush_delivery_latency_seconds",
            "impush_channel_delivery_latency_seconds",
            "impush_connect_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} histogram\n")),
                "{name}"
            );
            let le = format!("{name}_bucket{{node=\"n1\",le=\"0.0005\"}}");
            assert_eq!(sample(&text, &le), Some("0"), "{name}");
            let inf = format!("{name}_bucket{{node=\"n1\",le=\"+Inf\"}}");
            assert_eq!(sample(&text, &inf), Some("0"), "{name}");
            assert_eq!(
                sample(&text, &format!("{name}_sum{{node=\"n1\"}}")),
                Some("0")
            );
            assert_eq!(
                sample(&text, &format!("{name}_count{{node=\"n1\"}}")),
                Some("0")
            );
        }
        let le = "impush_broker_publish_seconds_bucket{node=\"n1\",backend=\"\",le=\"0.0001\"}";
        assert_eq!(sample(&text, le), Some("0"));
    }

    #[tokio::test]
    async fn tasks_are_the_runtimes_alive_tasks() {
        let m = Metrics::default();
        let tasks = |m: &Metrics| -> usize {
            let text = m.render(&"n1".parse().unwrap());
            sample(&text, "impush_tasks{node=\"n1\"}")
                .unwrap()
                .parse()
                .unwrap()
        };
        let before = tasks(&m);
        let (done, wait) = tokio::sync::watch::channel(false);
        let spawned: Vec<_> = (0..10)
            .map(|_| {
                let mut wait = wait.clone();
                tokio::spawn(async move {
                    let _ = wait.wait_for(|d| *d).await;
                })
            })
            .collect();
        assert_eq!(tasks(&m), before + 10);
        done.send(true).unwrap();
        for t in spawned {
            t.await.unwrap();
        }
        assert_eq!(tasks(&m), before);
    }

    #[test]
    fn buckets_are_cumulative_with_sum_and_count_in_seconds() {
        let m = Metrics::default();
        m.broker_backend.set("re\"dis".into()).unwrap();
        m.broker_publish.observe(Duration::from_micros(80));
        m.broker_publish.observe(Duration::from_micros(300));
        m.broker_publish.observe(Duration::from_secs(11));
        let text = m.render(&"n1".parse().unwrap());
        let series = |le: &str| {
            format!("impush_broker_publish_seconds_bucket{{node=\"n1\",backend=\"re\\\"dis\",le=\"{le}\"}}")
        };
        assert_eq!(sample(&text, &series("0.0001")), Some("1"));
        assert_eq!(sample(&text, &series("0.00025")), Some("1"));
        assert_eq!(sample(&text, &series("0.0005")), Some("2"));
        assert_eq!(sample(&text, &series("10")), Some("2"));
        assert_eq!(sample(&text, &series("+Inf")), Some("3"));
        let labels = "{node=\"n1\",backend=\"re\\\"dis\"}";
        assert_eq!(
            sample(&text, &format!("impush_broker_publish_seconds_sum{labels}")),
            Some("11.00038")
        );
        assert_eq!(
            sample(
                &text,
                &format!("impush_broker_publish_seconds_count{labels}")
            ),
            Some("3")
        );
        // Bounds in order, each once, then +Inf.
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("impush_connect_seconds_bucket"))
            .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(
            les,
            [
                "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                "0.5", "1", "2.5", "5", "10", "+Inf"
            ]
        );
    }
}
