//! The HTTP API of `docs/design.md` section 7 against a live node: every endpoint, success and
//! failure.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{
    Broker, Error, MemoryBroker, MemoryPresenceStore, Result as CoreResult, SubscribeMode,
    Subscription,
};
use impush_server::ImServer;
use serde_json::{json, Value};
use support::{eventually, id, start, Client};

const KEY: &str = "test-api-key";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &ImServer) -> Self {
        Self {
            base: format!("http://{}", server.local_addr()),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.raw(method, path, body.map(|b| b.to_string()), Some(KEY))
            .await
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn err_code(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn api_key_is_required_and_checked() {
    let server = start(|_| {}).await;
    let api = Api::new(&server);
    let routes = [
        ("GET", "/api/v1/clients/online"),
        ("POST", "/api/v1/broadcast"),
        ("GET", "/api/v1/channels"),
        ("GET", "/api/v1/events"),
    ];
    for (m, p) in routes {
        for key in [
            None,
            Some("wrong"),
            Some("test-api-key-but-longer"),
            Some(""),
        ] {
            let (status, body) = api.raw(m, p, Some("{}".into()), key).await;
            assert_eq!(
                (status, err_code(&body)),
                (401, "unauthorized"),
                "{m} {p} {key:?}"
            );
        }
    }
    // Public routes need no key.
    assert_eq!(api.raw("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(api.raw("GET", "/readyz", None, None).await.0, 200);
    assert_eq!(
        api.raw("GET", "/api/v1/openapi.json", None, None).await.0,
        200
    );
    // Unknown routes are 404 with or without a key; wrong methods 405.
    let (status, body) = api.raw("GET", "/api/v1/nope", None, None).await;
    assert_eq!((status, err_code(&body)), (404, "not_found"));
    let (status, body) = api.call("PUT", "/api/v1/broadcast", None).await;
    assert_eq!((status, err_code(&body)), (405, "method_not_allowed"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connect_then_websocket_then_messages_with_receipts() {
    let server = start(|_| {}).await;
    let api = Api::new(&server);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/connect",
            Some(json!({"client_id": "alice", "metadata": {"app": "web"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"], "n1");
    let url = body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("ws://{}/ws?token=", server.local_addr())),
        "{url}"
    );
    let (mut alice, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let h = server.helper();
    eventually(|| async { h.is_online(&id("alice")).await.unwrap().value }).await;
    let mut bob = Client::connect(&h, "bob", 1).await;

    let (status, body) = api
        .call(
            "POST",
            "/api/v1/messages",
            Some(json!({"from": "bob", "to": ["alice", "carol"], "data": {"text": "hi"}, "receipt": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes"], 1);
    let mid = body["id"].as_str().unwrap().to_owned();
    let frame = tokio::time::timeout(support::WAIT, async {
        loop {
            match alice.next().await.unwrap().unwrap() {
                tokio_tungstenite::tungstenite::Message::Text(t) => {
                    break serde_json::from_str::<Value>(&t).unwrap()
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("alice gets the message within the timeout");
    assert_eq!(frame["data"], json!({"text": "hi"}));
    assert_eq!(frame["id"], mid.as_str());
    let mut statuses = [bob.next_json().await, bob.next_json().await];
    statuses.sort_by_key(|r| r["status"].as_str().unwrap().to_owned());
    assert_eq!(
        (&statuses[0]["status"], &statuses[0]["to"]),
        (&json!("delivered"), &json!(["alice"]))
    );
    assert_eq!(
        (&statuses[1]["status"], &statuses[1]["to"]),
        (&json!("offline"), &json!(["carol"]))
    );

    // Client info and online list.
    let (status, body) = api.call("GET", "/api/v1/clients/alice", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"client_id": "alice", "online": true, "connections": 1, "channels": []})
    );
    let (_, body) = api.call("GET", "/api/v1/clients/online", None).await;
    assert_eq!(body, json!({"clients": ["alice", "bob"]}));
    // An unknown client is simply offline.
    let (status, body) = api.call("GET", "/api/v1/clients/nobody", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["online"], false);
    assert_eq!(body["connections"], 0);

    // Kick.
    let (status, body) = api.call("POST", "/api/v1/clients/bob/kick", None).await;
    assert_eq!((status, body), (200, json!({"kicked": 1})));
    assert_eq!(bob.close_code().await, 4001);
    let (_, body) = api.call("POST", "/api/v1/clients/nobody/kick", None).await;
    assert_eq!(body, json!({"kicked": 0}));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_bodies_and_ids() {
    let server = start(|c| c.limits.max_body_bytes = 64 * 1024).await;
    let api = Api::new(&server);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/messages",
            "{not json".into(),
            400,
            "invalid_json",
        ),
        ("POST", "/api/v1/messages", "".into(), 400, "invalid_json"),
        (
            "POST",
            "/api/v1/messages",
            r#"{"from":"a","to":["b"]}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"from":"a","to":"b","data":1}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"from":"a","to":["b"],"data":1,"reciept":true}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"from":"","to":["b"],"data":1}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"from":"a","to":["b\u0001"],"data":1}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"from":"a","to":[],"data":1}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/connect",
            r#"{"client_id":""}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/connect",
            format!(r#"{{"client_id":"a","metadata":"{}"}}"#, "x".repeat(2000)),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/channels/room/members",
            r#"{"client_ids":[]}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/channels/room/members",
            r#"{"clients":["a"]}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/channels/room/messages",
            r#"{"from":"a"}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/broadcast",
            r#"{}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/broadcast",
            format!(r#"{{"data":"{}"}}"#, "x".repeat(100 * 1024)),
            413,
            "body_too_large",
        ),
        (
            "GET",
            "/api/v1/channels/tab%09name",
            String::new(),
            400,
            "invalid_id",
        ),
        (
            "GET",
            &*Box::leak(format!("/api/v1/channels/{}", "c".repeat(129)).into_boxed_str()),
            String::new(),
            400,
            "invalid_id",
        ),
        (
            "GET",
            &*Box::leak(format!("/api/v1/clients/{}", "c".repeat(129)).into_boxed_str()),
            String::new(),
            400,
            "invalid_id",
        ),
        (
            "POST",
            "/api/v1/channels/tab%09name/messages",
            r#"{"from":"a","data":1}"#.into(),
            400,
            "invalid_id",
        ),
        (
            "DELETE",
            "/api/v1/channels/room/members/%00",
            String::new(),
            400,
            "invalid_id",
        ),
    ];
    for (m, p, body, want_status, want_code) in cases {
        let (status, resp) = api.raw(m, p, Some(body.clone()), Some(KEY)).await;
        assert_eq!(
            (status, err_code(&resp)),
            (want_status, want_code),
            "{m} {p} {body:.80}: {resp}"
        );
        assert!(
            resp["message"].as_str().is_some_and(|s| !s.is_empty()),
            "{resp}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn channels_over_http() {
    let server = start(|_| {}).await;
    let api = Api::new(&server);
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let mut bob = Client::connect(&h, "bob", 1).await;

    let (status, body) = api
        .call(
            "POST",
            "/api/v1/channels/room%201/members",
            Some(json!({"client_ids": ["alice", "bob", "dave"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channel": "room 1", "joined": ["alice", "bob", "dave"]})
    );
    let (_, body) = api.call("GET", "/api/v1/channels", None).await;
    assert_eq!(
        body,
        json!({"channels": [{"name": "room 1", "members": 3, "online": 2}]})
    );
    let (_, body) = api.call("GET", "/api/v1/channels/room%201", None).await;
    assert_eq!(
        body,
        json!({"name": "room 1", "members": ["alice", "bob", "dave"], "online": 2})
    );
    let (_, body) = api.call("GET", "/api/v1/clients/alice", None).await;
    assert_eq!(body["channels"], json!(["room 1"]));

    let (status, body) = api
        .call(
            "POST",
            "/api/v1/channels/room%201/messages",
            Some(json!({"from": "alice", "data": [1, 2]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let cid = body["id"].as_str().unwrap().to_owned();
    for c in [&mut alice, &mut bob] {
        let f = c.next_json().await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str()),
            (Some("channel"), Some(cid.as_str()))
        );
        assert_eq!(f["data"], json!([1, 2]));
    }

    let (status, body) = api
        .call("DELETE", "/api/v1/channels/room%201/members/bob", None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"channel": "room 1", "left": "bob"}))
    );
    api.call(
        "POST",
        "/api/v1/channels/room%201/messages",
        Some(json!({"from": "x", "data": 2})),
    )
    .await;
    assert_eq!(alice.next_json().await["data"], 2);
    bob.expect_silence(Duration::from_millis(200)).await;

    // An unknown channel is empty, not an error.
    let (status, body) = api.call("GET", "/api/v1/channels/ghost", None).await;
    assert_eq!(
        (status, body),
        (200, json!({"name": "ghost", "members": [], "online": 0}))
    );

    let (status, body) = api
        .call("POST", "/api/v1/broadcast", Some(json!({"data": {"n": 1}})))
        .await;
    assert_eq!(status, 200);
    let bid = body["id"].as_str().unwrap().to_owned();
    for c in [&mut alice, &mut bob] {
        let f = c.next_json().await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str()),
            (Some("broadcast"), Some(bid.as_str()))
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ten_thousand_receivers_in_one_request() {
    let server = start(|_| {}).await;
    let api = Api::new(&server);
    let h = server.helper();
    let mut online = Vec::new();
    for n in ["u0", "u4999", "u9999"] {
        online.push(Client::connect(&h, n, 1).await);
    }
    let to: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/messages",
            Some(json!({"from": "sys", "to": to, "data": "all"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes"], 1);
    for c in &mut online {
        assert_eq!(c.next_json().await["data"], "all");
    }
    server.shutdown().await.unwrap();
}

/// Splits an SSE body into (event, data) pairs and counts comment lines.
fn parse_sse(text: &str) -> (Vec<(String, Value)>, usize) {
    let mut events = Vec::new();
    let mut comments = 0;
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if line.starts_with(':') {
                comments += 1;
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).ok();
            }
        }
        if let (Some(n), Some(d)) = (name, data) {
            events.push((n, d));
        }
    }
    (events, comments)
}

#[tokio::test]
async fn sse_streams_online_and_offline_in_order_with_keepalives() {
    let server = start(|c| c.limits.sse_keep_alive = Duration::from_millis(100)).await;
    let api = Api::new(&server);
    let resp = api
        .http
        .get(format!("{}/api/v1/events", api.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let h = server.helper();

    let collected = Arc::new(tokio::sync::Mutex::new(String::new()));
    let sink = collected.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(chunk)) = body.next().await {
            sink.lock().await.push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    // The stream is subscribed once the response headers are out; connect afterwards.
    let a1 = Client::connect_with(&h, "alice", json!({"k": 1})).await;
    let a2 = Client::connect(&h, "alice", 2).await;
    drop(a2);
    eventually(|| async { h.connections(&id("alice")).await.unwrap() == 1 }).await;
    drop(a1);
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    eventually(|| async {
        let (events, comments) = parse_sse(&collected.lock().await);
        events.len() >= 4 && comments >= 1
    })
    .await;

    let (events, comments) = {
        let text = collected.lock().await;
        parse_sse(&text)
    };
    let summary: Vec<(String, bool)> = events
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                d["first"].as_bool().or(d["last"].as_bool()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("online".into(), true),
            ("online".into(), false),
            ("offline".into(), false),
            ("offline".into(), true)
        ]
    );
    let first = &events[0].1;
    assert_eq!(first["client_id"], "alice");
    assert_eq!(first["node"], "n1");
    assert_eq!(first["metadata"], json!({"k": 1}));
    assert!(first["connection"].as_str().is_some());
    assert_eq!(events[3].1["connection"], first["connection"]);
    assert!(comments >= 1, "no keep-alive comment seen");

    // The stream ends when the node shuts down, so it does not hold the shutdown up.
    server.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
}

/// A memory broker that can be switched off, to see how the API reports an unreachable broker.
#[derive(Debug, Default)]
struct SwitchableBroker {
    inner: MemoryBroker,
    down: AtomicBool,
    /// Every publish (its topic) and shutdown (`SHUTDOWN`), in order.
    calls: Mutex<Vec<String>>,
}

impl SwitchableBroker {
    fn check(&self) -> CoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: "test",
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for SwitchableBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> CoreResult<()> {
        self.calls.lock().unwrap().push(topic.to_owned());
        self.check()?;
        self.inner.publish(topic, payload).await
    }
    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> CoreResult<Subscription> {
        self.check()?;
        self.inner.subscribe(topic, mode).await
    }
    async fn ping(&self) -> CoreResult<()> {
        self.check()
    }
    async fn shutdown(&self) -> CoreResult<()> {
        self.calls.lock().unwrap().push("SHUTDOWN".into());
        self.inner.shutdown().await
    }
}

/// A graceful shutdown publishes the offline events of the connections it closes, then
/// flushes and closes the broker, once, after the last publish.
#[tokio::test]
async fn shutdown_publishes_offline_events_then_flushes_the_broker() {
    let broker = Arc::new(SwitchableBroker::default());
    let server = ImServer::start_with(
        support::config(),
        broker.clone(),
        Arc::new(MemoryPresenceStore::new()),
    )
    .await
    .unwrap();
    let h = server.helper();
    let _alice = Client::connect(&h, "alice", 1).await;
    let events_before = broker
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.ends_with(".events"))
        .count();
    server.shutdown().await.unwrap();
    let calls = broker.calls.lock().unwrap().clone();
    let shutdowns: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i] == "SHUTDOWN")
        .collect();
    assert_eq!(
        shutdowns,
        vec![calls.len() - 1],
        "one flush, last: {calls:?}"
    );
    let events_after = calls.iter().filter(|t| t.ends_with(".events")).count();
    assert_eq!(
        events_after,
        events_before + 1,
        "alice's offline event is published before the flush: {calls:?}"
    );
}

#[tokio::test]
async fn unreachable_broker_is_503_not_a_hang() {
    let broker = Arc::new(SwitchableBroker::default());
    let server = ImServer::start_with(
        support::config(),
        broker.clone(),
        Arc::new(MemoryPresenceStore::new()),
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    broker.down.store(true, Ordering::SeqCst);
    for (m, p, body) in [
        (
            "POST",
            "/api/v1/messages",
            json!({"from": "a", "to": ["b"], "data": 1}),
        ),
        ("POST", "/api/v1/broadcast", json!({"data": 1})),
        (
            "POST",
            "/api/v1/channels/r/messages",
            json!({"from": "a", "data": 1}),
        ),
        ("GET", "/api/v1/events", Value::Null),
    ] {
        let (status, resp) = api.call(m, p, Some(body)).await;
        assert_eq!(
            (status, err_code(&resp)),
            (503, "unavailable"),
            "{m} {p}: {resp}"
        );
    }
    let (status, resp) = api.raw("GET", "/readyz", None, None).await;
    assert_eq!((status, err_code(&resp)), (503, "broker_unavailable"));
    let metrics = api.raw("GET", "/metrics", None, None).await.1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("impush_broker_publish_errors_total{node=\"n1\"} 3"),
        "{metrics}"
    );
    broker.down.store(false, Ordering::SeqCst);
    assert_eq!(api.raw("GET", "/readyz", None, None).await.0, 200);
    let (status, _) = api
        .call("POST", "/api/v1/broadcast", Some(json!({"data": 1})))
        .await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let server = start(|_| {}).await;
    let api = Api::new(&server);
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let _bob = Client::connect(&h, "bob", 1).await;
    let r = h
        .send_message(&id("bob"), &[id("alice"), id("zed")], &1, true)
        .await
        .unwrap();
    alice.next_json().await;
    alice
        .send_json(json!({"type": "ack", "id": r.id.as_str()}))
        .await;
    alice.send_text("garbage").await;
    alice.send_json(json!({"type": "ping"})).await;
    alice.next_json().await;
    let bad = format!("ws://{}/ws?token=nope", server.local_addr());
    support::refused_status(&bad).await;
    eventually(|| async { server.metrics().ignored_frames() >= 1 }).await;

    let expected = [
        "impush_connections{node=\"n1\"} 2",
        "impush_frames_out_total{node=\"n1\",type=\"message\"} 1",
        "impush_frames_out_total{node=\"n1\",type=\"pong\"} 1",
        "impush_frames_in_total{node=\"n1\",type=\"ack\"} 1",
        "impush_frames_in_total{node=\"n1\",type=\"ignored\"} 1",
        "impush_receipts_total{node=\"n1\",status=\"delivered\"} 1",
        "impush_receipts_total{node=\"n1\",status=\"offline\"} 1",
        "impush_receipts_total{node=\"n1\",status=\"acked\"} 1",
        "impush_token_rejections_total{node=\"n1\"} 1",
        "impush_closes_total{node=\"n1\",reason=\"slow\"} 0",
        "# TYPE impush_connections gauge",
    ];
    // The ack's receipt is counted by the node's receipt loop, after the frame was read:
    // wait for the page to show it rather than read it once.
    let scrape = || async {
        let (status, text) = api.raw("GET", "/metrics", None, None).await;
        assert_eq!(status, 200);
        text.as_str().unwrap().to_owned()
    };
    eventually(|| async {
        let text = scrape().await;
        expected.iter().all(|line| text.lines().any(|l| l == *line))
    })
    .await;
    let text = scrape().await;
    for line in expected {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    server.shutdown().await.unwrap();
}

/// Asserts that `c`'s next frame is the broadcast `{"marker": marker}`: nothing of a channel
/// it left was pushed before it (one API node publishes both in order on `.all`).
async fn next_is_marker(c: &mut Client, marker: &str) {
    let f = c.next_json().await;
    assert_eq!(
        (f["type"].as_str(), &f["data"]),
        (Some("broadcast"), &json!({ "marker": marker })),
        "expected the marker broadcast, got {f}"
    );
}

async fn marker(api: &Api, marker: &str) {
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/broadcast",
            Some(json!({"data": {"marker": marker}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn leave_several_channels_and_clear_a_channel_over_http() {
    let server = start(|_| {}).await;
    let api = Api::new(&server);
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let mut bob = Client::connect(&h, "bob", 1).await;
    for room in ["r1", "r2", "r3"] {
        let (status, body) = api
            .call(
                "POST",
                &format!("/api/v1/channels/{room}/members"),
                Some(json!({"client_ids": ["alice", "bob", "dave"]})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // alice leaves r1 and r2 (and a channel she never joined) in one call.
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/clients/alice/channels/leave",
            Some(json!({"channels": ["r1", "r2", "ghost"]})),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"client_id": "alice", "left": ["r1", "r2", "ghost"]})
        )
    );
    let (_, body) = api.call("GET", "/api/v1/clients/alice", None).await;
    assert_eq!(body["channels"], json!(["r3"]));
    for room in ["r1", "r3"] {
        api.call(
            "POST",
            &format!("/api/v1/channels/{room}/messages"),
            Some(json!({"from": "sys", "data": room})),
        )
        .await;
    }
    marker(&api, "m1").await;
    assert_eq!(alice.next_json().await["data"], "r3");
    next_is_marker(&mut alice, "m1").await;
    assert_eq!(bob.next_json().await["data"], "r1");
    assert_eq!(bob.next_json().await["data"], "r3");
    next_is_marker(&mut bob, "m1").await;

    // Clearing r1 removes bob and the offline dave.
    let (status, body) = api
        .call("DELETE", "/api/v1/channels/r1/members", None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"channel": "r1", "removed": 2}))
    );
    let (_, body) = api.call("GET", "/api/v1/channels/r1", None).await;
    assert_eq!(body, json!({"name": "r1", "members": [], "online": 0}));
    let (_, body) = api.call("GET", "/api/v1/clients/bob", None).await;
    assert_eq!(body["channels"], json!(["r2", "r3"]));
    api.call(
        "POST",
        "/api/v1/channels/r1/messages",
        Some(json!({"from": "sys", "data": "r1 again"})),
    )
    .await;
    marker(&api, "m2").await;
    next_is_marker(&mut bob, "m2").await;
    next_is_marker(&mut alice, "m2").await;
    // Again, or an unknown channel: nobody to remove.
    for path in [
        "/api/v1/channels/r1/members",
        "/api/v1/channels/void/members",
    ] {
        let (status, body) = api.call("DELETE", path, None).await;
        assert_eq!((status, &body["removed"]), (200, &json!(0)), "{path}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn leave_several_channels_and_clear_refuse_bad_input() {
    let server = start(|c| c.limits.max_clients_per_join = 2).await;
    let api = Api::new(&server);
    let leave = "/api/v1/clients/alice/channels/leave";
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        (
            "POST",
            leave,
            Some(r#"{"channels":[]}"#.into()),
            422,
            "invalid_request",
        ),
        (
            "POST",
            leave,
            Some(r#"{"channels":["a","b","c"]}"#.into()),
            413,
            "too_many_channels",
        ),
        (
            "POST",
            leave,
            Some(r#"{"channel":["a"]}"#.into()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            leave,
            Some(r#"{"channels":"a"}"#.into()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            leave,
            Some(r#"{"channels":["a\u0001"]}"#.into()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            leave,
            Some(r#"{"channels":[""]}"#.into()),
            400,
            "invalid_json",
        ),
        ("POST", leave, Some("{not json".into()), 400, "invalid_json"),
        (
            "POST",
            "/api/v1/clients/a%01b/channels/leave",
            Some(r#"{"channels":["a"]}"#.into()),
            400,
            "invalid_id",
        ),
        ("GET", leave, None, 405, "method_not_allowed"),
        (
            "POST",
            "/api/v1/clients/alice/channels",
            None,
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/channels/tab%09name/members",
            None,
            400,
            "invalid_id",
        ),
        (
            "PUT",
            "/api/v1/channels/room/members",
            None,
            405,
            "method_not_allowed",
        ),
    ];
    for (m, p, body, want_status, want_code) in cases {
        let (status, resp) = api.raw(m, p, body.clone(), Some(KEY)).await;
        assert_eq!(
            (status, err_code(&resp)),
            (want_status, want_code),
            "{m} {p} {body:?}: {resp}"
        );
        assert!(
            resp["message"].as_str().is_some_and(|s| !s.is_empty()),
            "{resp}"
        );
    }
    // Without the key, nothing is read or changed.
    for (m, p) in [("POST", leave), ("DELETE", "/api/v1/channels/room/members")] {
        let (status, resp) = api
            .raw(m, p, Some(r#"{"channels":["a"]}"#.into()), None)
            .await;
        assert_eq!((status, err_code(&resp)), (401, "unauthorized"), "{m} {p}");
    }
    server.shutdown().await.unwrap();
}
