//! Delivery to the device (`docs/design.md` section 15) on one node with the offline inbox on:
//! a message written to a socket stays pending until the client acks it; if the socket dies
//! first, the next connection gets it again (`"redelivered": true`, same id and `ts`), and the
//! sender hears `delivered` -> `stored` -> `delivered` -> `acked`. Past `limits.max_unacked`
//! the node stops writing until acks come. With `require_ack = false` a message leaves once
//! written, as before.

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

/// The next receipt frame for message `id`.
async fn receipt(c: &mut Client, id: &str) -> String {
    loop {
        let f = c.next_json().await;
        if f["type"] == "receipt" && f["id"] == id {
            return f["status"].as_str().unwrap().to_owned();
        }
    }
}

#[tokio::test]
async fn an_unacked_message_comes_back_redelivered_after_the_link_drops() {
    let server = with_inbox(|_| {}).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;
    let mut alice = Client::connect(&h, "alice", 1).await;

    let sent = h
        .send_message(&id("bob"), &[id("alice")], &json!({"text": "hi"}), true)
        .await
        .unwrap();
    let first = alice.next_json().await;
    assert_eq!(first["id"], sent.id.as_str());
    assert!(first.get("redelivered").is_none(), "{first}");
    assert_eq!(receipt(&mut bob, sent.id.as_str()).await, "delivered");
    // Written but not acked: it is kept until the device acks it.
    eventually(|| async { support::inbox_count(&server, "alice").await == 1 }).await;

    // The link dies before alice acks.
    alice.reset();
    assert_eq!(receipt(&mut bob, sent.id.as_str()).await, "stored");
    eventually(|| async { server.metrics().open_connections() == 1 }).await;

    // The next connection gets it again, as first sent, marked redelivered.
    let mut alice = Client::connect_with(&h, "alice", Value::Null).await;
    let again = alice.next_json().await;
    assert_eq!(again["id"], sent.id.as_str());
    assert_eq!(again["ts"], first["ts"]);
    assert_eq!(again["data"], json!({"text": "hi"}));
    assert_eq!(again["redelivered"], true, "{again}");
    assert!(again.get("stored").is_none(), "{again}");
    assert_eq!(receipt(&mut bob, sent.id.as_str()).await, "delivered");

    alice
        .send_json(json!({"type": "ack", "id": sent.id.as_str()}))
        .await;
    assert_eq!(receipt(&mut bob, sent.id.as_str()).await, "acked");
    eventually(|| async { support::inbox_count(&server, "alice").await == 0 }).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_acked_message_is_not_kept_and_not_redelivered() {
    let server = with_inbox(|_| {}).await;
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let sent = h
        .send_message(&id("bob"), &[id("alice")], &json!(1), false)
        .await
        .unwrap();
    let f = alice.next_json().await;
    assert_eq!(f["id"], sent.id.as_str());
    alice
        .send_json(json!({"type": "ack", "id": sent.id.as_str()}))
        .await;
    eventually(|| async { support::inbox_count(&server, "alice").await == 0 }).await;
    alice.reset();
    eventually(|| async { server.metrics().open_connections() == 0 }).await;
    let mut alice = Client::connect(&h, "alice", 1).await;
    alice.expect_silence(Duration::from_millis(500)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn writes_wait_for_acks_past_max_unacked() {
    let server = with_inbox(|c| c.limits.max_unacked = 3).await;
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = h
            .send_message(&id("bob"), &[id("alice")], &json!(i), false)
            .await
            .unwrap();
        ids.push(r.id.to_string());
    }
    for want in &ids[..3] {
        assert_eq!(alice.next_json().await["id"], want.as_str());
    }
    // Three written and unacked: the rest waits, in order.
    alice.expect_silence(Duration::from_millis(500)).await;
    assert!(server.metrics().flow_control_holds() >= 1);
    alice.send_json(json!({"type": "ack", "id": ids[0]})).await;
    assert_eq!(alice.next_json().await["id"], ids[3].as_str());
    alice.expect_silence(Duration::from_millis(300)).await;
    for id in &ids[1..4] {
        alice.send_json(json!({"type": "ack", "id": id})).await;
    }
    assert_eq!(alice.next_json().await["id"], ids[4].as_str());
    assert_eq!(alice.next_json().await["id"], ids[5].as_str());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_require_ack_a_written_message_leaves_at_once() {
    let server = with_inbox(|c| c.offline.require_ack = false).await;
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let sent = h
        .send_message(&id("bob"), &[id("alice")], &json!(1), false)
        .await
        .unwrap();
    assert_eq!(alice.next_json().await["id"], sent.id.as_str());
    alice.reset();
    eventually(|| async { server.metrics().open_connections() == 0 }).await;
    assert_eq!(support::inbox_count(&server, "alice").await, 0);
    let mut alice = Client::connect(&h, "alice", 1).await;
    alice.expect_silence(Duration::from_millis(500)).await;
    server.shutdown().await.unwrap();
}
