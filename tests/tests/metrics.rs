//! The node's metrics (`docs/design.md` section 17): the Grafana dashboard in
//! `deploy/grafana/` only queries what a live node exports, and the latency histograms
//! (delivery, channel delivery, broker publish, connect time) observe what they promise.

#![allow(clippy::unwrap_used)]

use crate::dashboard;
use crate::support;

use std::time::{Duration, Instant};

use impush_core::{
    envelope::{self, now_ms, ClusterCommand, Deliver, NodeCommand},
    ChannelName, MessageId, Topics,
};
use impush_server::ImServer;
use serde_json::{json, value::RawValue, Value};
use support::{id, scrape, start, Client, WAIT};

const DASHBOARD: &str = include_str!("../../deploy/grafana/impush.json");

/// The value of sample `series` (the whole name and label set, as rendered), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn the_dashboard_queries_only_what_a_node_exports() {
    let server = start(|_| {}).await;
    let exported = dashboard::families(&scrape(&server).await);
    assert!(
        exported.contains_key("impush_connections"),
        "the node's families were not read: {exported:?}"
    );
    let board: Value = serde_json::from_str(DASHBOARD).unwrap();
    let exprs = dashboard::expressions(&board);
    assert!(exprs.len() >= 20, "only {} queries found", exprs.len());
    let problems = dashboard::check(&board, &exported);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The dashboard covers what operators look at (issue list of `docs/design.md` section 17).
    let used: Vec<String> = exprs
        .iter()
        .flat_map(|(_, e)| {
            let e = e.strip_prefix("label_values(").unwrap_or(e);
            dashboard::names_in(e).unwrap().selectors
        })
        .map(|s| s.metric)
        .collect();
    for metric in [
        "impush_connections",
        "impush_frames_out_total",
        "impush_delivery_latency_seconds_bucket",
        "impush_channel_delivery_latency_seconds_bucket",
        "impush_broker_publish_seconds_bucket",
        "impush_connect_seconds_bucket",
        "impush_receipts_total",
        "impush_offline_stored_total",
        "impush_closes_total",
        "impush_moved_total",
        "impush_taken_over_total",
        "impush_connects_throttled_total",
        "impush_resumes_total",
        "impush_flow_control_holds_total",
    ] {
        assert!(used.iter().any(|m| m == metric), "no panel shows {metric}");
    }
    for var in ["datasource", "node"] {
        let vars = board["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|v| v["name"] == var), "no `{var}` variable");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_misspelled_metric_or_label_fails_the_check() {
    let server = start(|_| {}).await;
    let exported = dashboard::families(&scrape(&server).await);
    server.shutdown().await.unwrap();
    let check = |text: &str| dashboard::check(&serde_json::from_str(text).unwrap(), &exported);
    assert!(check(DASHBOARD).is_empty());

    let cases = [
        // A metric, a histogram suffix, a histogram queried bare, a label, a grouping label.
        ("impush_moved_total", "impush_move_total"),
        (
            "impush_delivery_latency_seconds_bucket",
            "impush_delivery_latency_second_bucket",
        ),
        ("impush_connect_seconds_bucket", "impush_connect_seconds"),
        ("impush_connections{node=~", "impush_connections{nod=~"),
        ("sum by (reason)", "sum by (reasons)"),
        (
            "label_values(impush_connections, node)",
            "label_values(impush_connections, nodes)",
        ),
    ];
    for (right, wrong) in cases {
        assert!(DASHBOARD.contains(right), "the dashboard has no `{right}`");
        let problems = check(&DASHBOARD.replacen(right, wrong, 1));
        assert!(!problems.is_empty(), "`{wrong}` went unnoticed");
    }
}

#[test]
fn the_lexer_reads_names_not_functions_keywords_or_variables() {
    let n = dashboard::names_in(
        r#"histogram_quantile(0.99, sum by (backend, le) (rate(a_bucket{node=~"$node",x="}{"}[5m]))) / on (node) group_left b offset 5m + ${c} > bool 1"#,
    )
    .unwrap();
    let metrics: Vec<_> = n.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["a_bucket", "b"]);
    assert_eq!(n.selectors[0].matchers, ["node", "x"]);
    assert_eq!(n.grouping, ["backend", "le", "node"]);
    assert!(dashboard::names_in(r#"{__name__="x"}"#).is_err());
    assert!(dashboard::names_in(r#"rate(x{node="a}[5m])"#).is_err());
}

/// Counts of the histogram `name` (the labels after `node`), from bucket `le` and `_count`.
fn bucket(text: &str, name: &str, extra: &str, le: &str) -> f64 {
    sample(
        text,
        &format!("{name}_bucket{{node=\"n1\"{extra},le=\"{le}\"}}"),
    )
}

fn count(text: &str, name: &str, extra: &str) -> f64 {
    sample(text, &format!("{name}_count{{node=\"n1\"{extra}}}"))
}

#[tokio::test]
async fn delivery_latency_runs_from_the_accepted_ts_to_the_written_frame() {
    let server = start(|_| {}).await;
    let helper = server.helper();
    let inbox = Topics::new("impush").inbox(&"n1".parse().unwrap());
    let mut alice = Client::connect(&helper, "alice", 1).await;
    let deliver = |ts: u64| {
        let d = NodeCommand::Deliver(Deliver {
            id: MessageId::generate(),
            from: id("bob"),
            to: vec![id("alice")],
            data: RawValue::from_string("1".into()).unwrap(),
            ts,
            receipt: false,
            forwarded: false,
        });
        envelope::encode("command", &d).unwrap()
    };
    let name = "impush_delivery_latency_seconds";

    // Accepted 2 s ago: observed between 1 s and 2.5 s.
    helper
        .broker()
        .publish(&inbox, deliver(now_ms() - 2_000))
        .await
        .unwrap();
    assert_eq!(alice.next_json().await["type"], "message");
    let text = wait_for(&server, |t| count(t, name, "") >= 1.0).await;
    assert_eq!(count(&text, name, ""), 1.0);
    assert_eq!(bucket(&text, name, "", "1"), 0.0, "{text}");
    assert_eq!(bucket(&text, name, "", "2.5"), 1.0);
    let sum = sample(&text, &format!("{name}_sum{{node=\"n1\"}}"));
    assert!((2.0..2.5).contains(&sum), "sum {sum}");

    // A sender whose clock runs an hour ahead: clamped to 0, not a negative latency.
    helper
        .broker()
        .publish(&inbox, deliver(now_ms() + 3_600_000))
        .await
        .unwrap();
    alice.next_json().await;
    let text = wait_for(&server, |t| count(t, name, "") >= 2.0).await;
    assert_eq!(bucket(&text, name, "", "0.0005"), 1.0, "{text}");
    assert_eq!(sample(&text, &format!("{name}_sum{{node=\"n1\"}}")), sum);

    // Through the helper (the ordinary path): observed once per written frame, and not for
    // channel frames.
    helper
        .send_message(&id("bob"), &[id("alice")], &json!("hi"), false)
        .await
        .unwrap();
    alice.next_json().await;
    let text = wait_for(&server, |t| count(t, name, "") >= 3.0).await;
    assert_eq!(
        count(&text, "impush_channel_delivery_latency_seconds", ""),
        0.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn channel_latency_is_observed_per_written_batch() {
    let server = start(|_| {}).await;
    let helper = server.helper();
    let mut alice = Client::connect(&helper, "alice", 1).await;
    let room: ChannelName = "room".parse().unwrap();
    helper.join_channel(&room, &[id("alice")]).await.unwrap();
    let name = "impush_channel_delivery_latency_seconds";

    // Published 2 s ago (straight to every node, as a helper without history does).
    let cmd = ClusterCommand::Channel {
        id: MessageId::generate(),
        channel: room.clone(),
        from: id("bob"),
        data: RawValue::from_string("1".into()).unwrap(),
        ts: now_ms() - 2_000,
        pos: None,
    };
    let all = Topics::new("impush");
    let payload = envelope::encode("command", &cmd).unwrap();
    helper.broker().publish(all.all(), payload).await.unwrap();
    assert_eq!(alice.next_json().await["type"], "channel");
    let text = wait_for(&server, |t| count(t, name, "") >= 1.0).await;
    assert_eq!(count(&text, name, ""), 1.0);
    assert_eq!(bucket(&text, name, "", "1"), 0.0, "{text}");
    assert_eq!(bucket(&text, name, "", "2.5"), 1.0);

    // Broadcasts count here too; point-to-point latency saw none of them.
    helper.broadcast(&json!("all")).await.unwrap();
    assert_eq!(alice.next_json().await["type"], "broadcast");
    let text = wait_for(&server, |t| count(t, name, "") >= 2.0).await;
    assert_eq!(count(&text, "impush_delivery_latency_seconds", ""), 0.0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn channel_latency_samples_the_first_and_every_64th_member() {
    const MEMBERS: usize = 70;
    let server = start(|_| {}).await;
    let helper = server.helper();
    let room: ChannelName = "big".parse().unwrap();
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(Client::connect(&helper, &format!("m{i}"), 1).await);
    }
    let ids: Vec<_> = (0..MEMBERS).map(|i| id(&format!("m{i}"))).collect();
    helper.join_channel(&room, &ids).await.unwrap();
    helper
        .send_channel_message(&id("bob"), &room, &json!("hi"))
        .await
        .unwrap();
    for m in &mut members {
        assert_eq!(m.next_json().await["type"], "channel");
    }
    let name = "impush_channel_delivery_latency_seconds";
    let text = wait_for(&server, |t| count(t, name, "") >= 2.0).await;
    assert_eq!(
        sample(
            &text,
            "impush_frames_out_total{node=\"n1\",type=\"channel\"}"
        ),
        MEMBERS as f64
    );
    // Members 0 and 64 of the fan-out, not all 70 frames.
    assert_eq!(count(&text, name, ""), 2.0, "{text}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn broker_publishes_and_connects_are_timed() {
    let server = start(|_| {}).await;
    let helper = server.helper();
    let text = scrape(&server).await;
    let publish = "impush_broker_publish_seconds";
    let backend = ",backend=\"memory\"";
    // Rendered, labelled with the configured kind, before anything was published by hand.
    assert!(
        text.contains(&format!("{publish}_count{{node=\"n1\"{backend}}}")),
        "{text}"
    );
    assert_eq!(count(&text, "impush_connect_seconds", ""), 0.0);
    let published = count(&text, publish, backend);

    let _alice = Client::connect(&helper, "alice", 1).await;
    let text = wait_for(&server, |t| count(t, "impush_connect_seconds", "") >= 1.0).await;
    let connect_sum = sample(&text, "impush_connect_seconds_sum{node=\"n1\"}");
    assert!(connect_sum > 0.0 && connect_sum < 5.0, "{connect_sum}");
    // The online event went out through the broker: the node's own publishes are timed.
    assert!(count(&text, publish, backend) > published);

    let before = count(&text, publish, backend);
    helper
        .send_message(&id("bob"), &[id("alice")], &json!("hi"), false)
        .await
        .unwrap();
    let text = scrape(&server).await;
    assert!(
        count(&text, publish, backend) > before,
        "the embedded helper's publish was not timed"
    );
    assert_eq!(
        count(&text, publish, backend),
        bucket(&text, publish, backend, "+Inf")
    );
    server.shutdown().await.unwrap();
}

/// Scrapes until `cond` holds on the text (observations follow the write they time).
async fn wait_for(server: &ImServer, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(server).await;
        if cond(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "not observed in time:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
