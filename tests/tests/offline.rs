//! The offline inbox end to end on one node (`docs/design.md` section 9): a message for an absent
//! receiver is stored (`stored` receipt) and pushed when it connects, oldest first, before live
//! messages, as first sent plus `"stored": true`; acks remove; TTL and bounds hold; the HTTP
//! API shows and clears an inbox.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::Duration;

use impush_server::ImServer;
use serde_json::{json, Value};
use support::{eventually, id, start, Client};

async fn with_inbox(f: impl FnOnce(&mut impush_server::Config)) -> ImServer {
    start(|c| {
        c.offline.enabled = true;
        f(c);
    })
    .await
}

/// Reads `n` text frames.
async fn frames(c: &mut Client, n: usize) -> Vec<Value> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(c.next_json().await);
    }
    v
}

#[tokio::test]
async fn stored_while_away_pushed_on_connect_before_live_messages() {
    let server = with_inbox(|_| {}).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;

    let mut sent = Vec::new();
    for i in 0..3 {
        let r = h
            .send_message(&id("bob"), &[id("alice")], &json!({"n": i}), true)
            .await
            .unwrap();
        sent.push(r.id.to_string());
        let receipt = bob.next_json().await;
        assert_eq!(
            receipt,
            json!({"type": "receipt", "id": r.id.as_str(), "to": ["alice"], "status": "stored"})
        );
    }
    eventually(|| async { server.metrics().offline_stored() == 3 }).await;

    // alice connects; a live message sent right after must come after the stored ones.
    let mut alice = Client::connect_with(&h, "alice", Value::Null).await;
    let live = h
        .send_message(&id("bob"), &[id("alice")], &json!({"n": "live"}), false)
        .await
        .unwrap();
    let got = frames(&mut alice, 4).await;
    for (i, f) in got[..3].iter().enumerate() {
        assert_eq!(f["type"], "message");
        assert_eq!(f["id"], sent[i].as_str(), "oldest first");
        assert_eq!(f["data"], json!({"n": i}));
        assert_eq!(f["stored"], true);
        assert_eq!(f["receipt"], true);
        assert!(f["ts"].as_u64().unwrap() > 0);
    }
    // Last either way: live if alice was registered when it arrived, else stored and pushed
    // right after (it is the newest in the inbox).
    assert_eq!(got[3]["id"], live.id.as_str());
    // Written from the inbox: the sender hears `delivered`.
    let mut delivered = Vec::new();
    for _ in 0..3 {
        let r = bob.next_json().await;
        assert_eq!(
            (r["status"].as_str(), &r["to"]),
            (Some("delivered"), &json!(["alice"]))
        );
        delivered.push(r["id"].as_str().unwrap().to_owned());
    }
    delivered.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(delivered, want);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn acked_messages_leave_unacked_ones_come_back_without_duplicates() {
    let server = with_inbox(|_| {}).await;
    let h = server.helper();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            h.send_message(&id("sys"), &[id("alice")], &json!(i), false)
                .await
                .unwrap()
                .id
                .to_string(),
        );
    }
    eventually(|| async { server.metrics().offline_stored() == 4 }).await;

    let mut first = Client::connect_with(&h, "alice", Value::Null).await;
    let got = frames(&mut first, 4).await;
    let got_ids: Vec<&str> = got.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    // Ack the first two only, then a second device connects meanwhile and the first leaves.
    for f in &got[..2] {
        first.send_json(json!({"type": "ack", "id": f["id"]})).await;
    }
    eventually(|| async {
        let api = server.app_inbox_count("alice").await;
        api == 2
    })
    .await;
    first.expect_silence(Duration::from_millis(300)).await; // no duplicate on this socket
    drop(first);

    let mut again = Client::connect_with(&h, "alice", Value::Null).await;
    let got = frames(&mut again, 2).await;
    assert_eq!(
        got.iter()
            .map(|f| f["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![ids[2].as_str(), ids[3].as_str()]
    );
    again.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

/// Helpers on the server handle for these tests: the inbox through the HTTP API.
trait InboxApi {
    async fn app_inbox_count(&self, client: &str) -> u64;
}

impl InboxApi for ImServer {
    async fn app_inbox_count(&self, client: &str) -> u64 {
        let body = inbox_call(self, reqwest::Method::GET, client).await;
        body["count"].as_u64().unwrap()
    }
}

async fn inbox_call(server: &ImServer, method: reqwest::Method, client: &str) -> Value {
    let url = format!(
        "http://{}/api/v1/clients/{client}/inbox",
        server.local_addr()
    );
    let resp = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(server.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn without_acks_required_a_written_message_leaves_at_once() {
    let server = with_inbox(|c| c.offline.require_ack = false).await;
    let h = server.helper();
    h.send_message(&id("sys"), &[id("alice")], &json!("once"), false)
        .await
        .unwrap();
    eventually(|| async { server.app_inbox_count("alice").await == 1 }).await;
    let mut a = Client::connect_with(&h, "alice", Value::Null).await;
    assert_eq!(a.next_json().await["data"], "once");
    eventually(|| async { server.app_inbox_count("alice").await == 0 }).await;
    drop(a);
    let mut b = Client::connect_with(&h, "alice", Value::Null).await;
    b.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bounds_keep_the_newest_and_count_the_rest() {
    let server = with_inbox(|c| c.offline.max_per_client = 3).await;
    let h = server.helper();
    for i in 0..5 {
        h.send_message(&id("sys"), &[id("alice")], &json!(i), false)
            .await
            .unwrap();
    }
    eventually(|| async { server.metrics().offline_stored() == 5 }).await;
    assert_eq!(server.metrics().offline_evicted(), 2);
    let stats = inbox_call(&server, reqwest::Method::GET, "alice").await;
    assert_eq!(stats["count"], 3);
    assert!(stats["bytes"].as_u64().unwrap() > 0);
    assert!(stats["oldest_ts"].as_u64().unwrap() > 0);
    let mut a = Client::connect_with(&h, "alice", Value::Null).await;
    let got = frames(&mut a, 3).await;
    assert_eq!(
        got.iter().map(|f| f["data"].clone()).collect::<Vec<_>>(),
        vec![json!(2), json!(3), json!(4)]
    );
    let metrics = support::scrape(&server).await;
    assert!(
        metrics.contains("impush_offline_evicted_total{node=\"n1\"} 2"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

/// The largest inbox a node accepts (one below the outbound queue: a bigger bound is refused
/// at start-up) drains whole on connect, in order, without closing the client as slow.
#[tokio::test]
async fn a_full_inbox_drains_in_one_connect() {
    let server = with_inbox(|c| {
        c.limits.outbound_queue = 64;
        c.offline.max_per_client = 63;
    })
    .await;
    let h = server.helper();
    for i in 0..63 {
        h.send_message(&id("sys"), &[id("alice")], &json!(i), false)
            .await
            .unwrap();
    }
    eventually(|| async { server.app_inbox_count("alice").await == 63 }).await;
    let mut a = Client::connect_with(&h, "alice", Value::Null).await;
    let got = frames(&mut a, 63).await;
    assert_eq!(
        got.iter().map(|f| f["data"].clone()).collect::<Vec<_>>(),
        (0..63).map(|i| json!(i)).collect::<Vec<_>>()
    );
    a.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_messages_are_not_pushed() {
    let server = with_inbox(|c| c.offline.ttl = Duration::from_millis(1500)).await;
    let h = server.helper();
    h.send_message(&id("sys"), &[id("alice")], &json!("old"), false)
        .await
        .unwrap();
    eventually(|| async { server.app_inbox_count("alice").await == 1 }).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.app_inbox_count("alice").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = Client::connect_with(&h, "alice", Value::Null).await;
    a.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn clearing_an_inbox_and_oversized_messages() {
    let server = with_inbox(|c| c.offline.max_bytes = 200).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;
    h.send_message(&id("bob"), &[id("alice")], &json!("small"), true)
        .await
        .unwrap();
    assert_eq!(bob.next_json().await["status"], "stored");
    // Larger than max_bytes alone: not kept, and the sender is told so.
    h.send_message(&id("bob"), &[id("alice")], &json!("x".repeat(400)), true)
        .await
        .unwrap();
    assert_eq!(bob.next_json().await["status"], "offline");
    let cleared = inbox_call(&server, reqwest::Method::DELETE, "alice").await;
    assert_eq!(cleared, json!({"client_id": "alice", "cleared": 1}));
    let mut a = Client::connect_with(&h, "alice", Value::Null).await;
    a.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_disabled_inbox_answers_empty_and_receipts_say_offline() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;
    h.send_message(&id("bob"), &[id("alice")], &json!(1), true)
        .await
        .unwrap();
    assert_eq!(bob.next_json().await["status"], "offline");
    let stats = inbox_call(&server, reqwest::Method::GET, "alice").await;
    assert_eq!(
        stats,
        json!({"client_id": "alice", "count": 0, "bytes": 0, "oldest_ts": null})
    );
    server.shutdown().await.unwrap();
}
