//! Delivery to the device (`docs/design.md` section 15) on one node with the offline inbox on:
//! a message written to a socket stays pending until the client acks it; if the socket dies
//! first, the next connection gets it again (`"redelivered": true`, same id and `ts`), and the
//! sender hears `delivered` -> `stored` -> `delivered` -> `acked`. Past `limits.max_unacked`
//! the node stops writing until acks come. With `require_ack = false` a message leaves once
//! written, as before.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{sync::Arc, time::Duration};

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

/// A node with the inbox on whose presence store answers each connect after `connect` and each
/// disconnect after `disconnect` (a link that attaches or ends slowly).
async fn with_slow_presence(
    connect: Duration,
    disconnect: Duration,
    f: impl FnOnce(&mut impush_server::Config),
) -> ImServer {
    let mut c = support::config();
    c.offline.enabled = true;
    f(&mut c);
    ImServer::start_with(
        c,
        Arc::new(impush_core::MemoryBroker::default()),
        Arc::new(support::SlowPresence::new(connect, disconnect)),
    )
    .await
    .unwrap()
}

/// A fresh connect URL for alice with `query` added (`link=`, `replaces=`).
fn alice_url(h: &impush_helper::ImHelper, query: &str) -> String {
    let info = h.prepare_connect(&id("alice"), Value::Null).unwrap();
    format!("{}&{query}", info.url)
}

/// Sends `data` from bob to alice for each of `data`, without receipts; the ids in order.
async fn send_to_alice(server: &ImServer, data: impl IntoIterator<Item = Value>) -> Vec<String> {
    let h = server.helper();
    let mut ids = Vec::new();
    for d in data {
        let sent = h
            .send_message(&id("bob"), &[id("alice")], &d, false)
            .await
            .unwrap();
        ids.push(sent.id.to_string());
    }
    ids
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

/// A client back before the node noticed its old link died names that link (`replaces=`): the
/// node closes the old connection (4009) first, so what it held comes first on the new one,
/// ahead of a message sent while it connects: order per sender. Written and unacked messages
/// are in the inbox already; the one that shows the difference was never written (the old
/// link is at `limits.max_unacked`): without `replaces` it stays queued there until that link's
/// ping timeout and arrives after the newer one. A `replaces` naming no link of this client
/// changes nothing; a malformed name is refused before the token is spent.
#[tokio::test]
async fn a_link_named_as_replaced_hands_back_what_it_held_first() {
    let server = with_inbox(|c| c.limits.max_unacked = 2).await;
    let h = server.helper();
    let url = |query: &str| {
        let info = h.prepare_connect(&id("alice"), Value::Null).unwrap();
        (format!("{}&{query}", info.url), info.url)
    };
    let mut old = Client::connect_url(&url("link=tab-1").0).await;
    eventually(|| async { server.metrics().open_connections() == 1 }).await;
    let mut sent = send_to_alice(&server, (0..3).map(|n| json!(n))).await;
    // Two written (read here, never acked), the third held back by flow control.
    for want in &sent[..2] {
        assert_eq!(old.next_json().await["id"], want.as_str());
    }
    old.expect_silence(Duration::from_millis(200)).await;
    // `old` stays open and unread: to the node, a link that is still there.
    let mut new = Client::connect_url(&url("link=tab-2&replaces=tab-1").0).await;
    sent.extend(send_to_alice(&server, [json!(3)]).await);
    for (n, want) in sent.iter().enumerate() {
        let f = new.next_json().await;
        assert_eq!(f["id"], want.as_str(), "frame {n}: {f}");
        if n < 2 {
            assert_eq!(f["redelivered"], true, "frame {n}: {f}");
        }
        new.send_json(json!({"type": "ack", "id": want.as_str()}))
            .await;
    }
    assert_eq!(old.close_code().await, 4009);
    eventually(|| async { server.metrics().open_connections() == 1 }).await;

    // Naming a link this client does not have: nothing is closed.
    let _other = Client::connect_url(&url("link=tab-3&replaces=tab-9").0).await;
    eventually(|| async { server.metrics().open_connections() == 2 }).await;
    new.expect_silence(Duration::from_millis(200)).await;

    // A malformed name: 400 naming the parameters, and the token is still good.
    for bad in ["link=tab%2F1", "replaces=", "link=%C3%A9"] {
        let (with_bad, plain) = url(bad);
        let (status, body) = support::refused_status(&with_bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_link")),
            "{bad}: {body}"
        );
        let _ok = Client::connect_url(&plain).await;
    }
    server.shutdown().await.unwrap();
}

/// A reconnect can name a link the node is still connecting (its client gave up on it at
/// once): that link is closed too (4009), not left open to take live messages it never
/// writes. Here `tab-1` is slow to hand back what it held (its presence store answers a
/// disconnect in a second), so `tab-2`, which replaces it, is still connecting when `tab-3`
/// names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_replaced_while_still_connecting_is_closed_too() {
    let server = with_slow_presence(Duration::ZERO, Duration::from_secs(1), |_| {}).await;
    let h = server.helper();
    let url = |query: &str| alice_url(&h, query);
    let mut first = Client::connect_url(&url("link=tab-1")).await;
    eventually(|| async { server.metrics().open_connections() == 1 }).await;
    let mut second = Client::connect_url(&url("link=tab-2&replaces=tab-1")).await;
    let mut third = Client::connect_url(&url("link=tab-3&replaces=tab-2")).await;
    assert_eq!(first.close_code().await, 4009, "tab-1");
    assert_eq!(second.close_code().await, 4009, "tab-2");
    eventually(|| async { server.metrics().open_connections() == 1 }).await;
    let sent = send_to_alice(&server, [json!("after")]).await;
    assert_eq!(third.next_json().await["id"], sent[0].as_str());
    server.shutdown().await.unwrap();
}

/// Live messages reaching a link while it attaches are held until its inbox was read. When
/// that link is replaced before it finishes (`tab-3` names `tab-2`, whose presence connect
/// takes a second), what it held is kept for the client at once, counted in flight, so the
/// next connection reads it before anything newer. Kept only when its message settled for
/// every receiver, it would wait here for `carol`, whose frame flow control holds back, and
/// `tab-3` would get the newer message first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_link_held_while_attaching_comes_first_after_it_was_replaced() {
    let server = with_slow_presence(Duration::from_secs(1), Duration::ZERO, |c| {
        c.limits.max_unacked = 1;
    })
    .await;
    let h = server.helper();
    // carol reads one message and never acks it: her next frame waits for flow control.
    let mut carol = Client::connect(&h, "carol", 1).await;
    eventually(|| async { server.metrics().open_connections() == 1 }).await;
    let first = h
        .send_message(&id("bob"), &[id("carol")], &json!("first"), false)
        .await
        .unwrap();
    assert_eq!(carol.next_json().await["id"], first.id.as_str());

    let url = |query: &str| alice_url(&h, query);
    let second = Client::connect_url(&url("link=tab-2")).await;
    // Counted once its inbox was read: tab-2 now waits a second for its presence connect,
    // holding live messages.
    eventually(|| async { server.metrics().open_connections() == 2 }).await;
    let held = h
        .send_message(
            &id("bob"),
            &[id("alice"), id("carol")],
            &json!("held"),
            false,
        )
        .await
        .unwrap();
    // Delivered (alice's frame held by tab-2, carol's by flow control) before tab-2 goes.
    eventually(|| async { server.metrics().flow_control_holds() >= 1 }).await;
    let mut third = Client::connect_url(&url("link=tab-3&replaces=tab-2")).await;
    let after = send_to_alice(&server, [json!("after")]).await;
    let f = third.next_json().await;
    assert_eq!(f["id"], held.id.as_str(), "{f}");
    // One unacked message at a time (`max_unacked = 1`).
    third
        .send_json(json!({"type": "ack", "id": held.id.as_str()}))
        .await;
    assert_eq!(third.next_json().await["id"], after[0].as_str());
    drop(second);
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

/// A message acked on one of the client's sockets is done for the client: another socket that
/// also had it and then dies does not keep it again (it would come back, `redelivered`, on the
/// next connection, a duplicate), and the sender hears `acked` once.
#[tokio::test]
async fn a_message_acked_on_one_socket_is_not_kept_again_by_another() {
    let server = with_inbox(|_| {}).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;
    let mut tab1 = Client::connect(&h, "alice", 1).await;
    let mut tab2 = Client::connect(&h, "alice", 2).await;
    let sent = h
        .send_message(&id("bob"), &[id("alice")], &json!("both"), true)
        .await
        .unwrap();
    assert_eq!(tab1.next_json().await["id"], sent.id.as_str());
    assert_eq!(tab2.next_json().await["id"], sent.id.as_str());
    tab2.send_json(json!({"type": "ack", "id": sent.id.as_str()}))
        .await;
    while receipt(&mut bob, sent.id.as_str()).await != "acked" {}
    eventually(|| async { support::inbox_count(&server, "alice").await == 0 }).await;

    // tab-1 never acked it, and its link dies; tab-2 leaves cleanly.
    tab1.reset();
    drop(tab2);
    eventually(|| async { server.metrics().open_connections() == 1 }).await;
    let mut tab3 = Client::connect(&h, "alice", 1).await;
    tab3.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(support::inbox_count(&server, "alice").await, 0);
    bob.expect_silence(Duration::from_millis(200)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn writes_wait_for_acks_past_max_unacked() {
    let server = with_inbox(|c| c.limits.max_unacked = 3).await;
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let ids = send_to_alice(&server, (0..6).map(|i| json!(i))).await;
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

/// A socket closes with a message from the inbox it never acked, while its client's newer
/// connection is on another node and read the (shared) inbox before that message was in it:
/// the closing node pushes the inbox where the client is now, instead of leaving the message
/// for the client's next connect. (In the loss probe: a link frozen while its client was
/// moving between nodes held a message a node had stored and pushed to that link only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_closed_socket_held_is_pushed_to_its_clients_connection_elsewhere() {
    let store = Arc::new(
        impush_core::MemoryOfflineStore::new(impush_core::InboxLimits::default()).shared_by_nodes(),
    );
    // A long lease: a node reads a new connection's shared inbox once more a third of a
    // lease after it attached (`drain_again_later`), which would deliver the message here
    // after ~10 s whatever happens to the closing socket; the case is over long before.
    let nodes = support::start_cluster_sharing_inbox(2, store.clone(), |c| {
        c.cluster.node_lease = Duration::from_secs(30);
    })
    .await;
    let h = nodes[0].helper();
    let alice = support::homed_on(&h, 1, "alice");
    // Her connection at home, n2, reads an empty inbox.
    let mut at_home = Client::connect(&h, &alice, 1).await;

    // Then a message goes into her inbox, by a path that tells no node (as a node pushing
    // it to a socket of hers it holds itself does), and a connection of hers on n1 gets it.
    let message = impush_core::StoredMessage {
        id: impush_core::MessageId::new("m-held-elsewhere").unwrap(),
        from: id("bob"),
        data: serde_json::value::to_raw_value(&json!("hi")).unwrap(),
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        receipt: false,
        written: false,
    };
    impush_core::OfflineStore::store(&*store, &id(&alice), message)
        .await
        .unwrap();
    let on_n1 = support::helper_seeing_dead(&h, "n2")
        .prepare_connect(&id(&alice), Value::Null)
        .unwrap();
    let n1 = format!("ws://{}/", nodes[0].local_addr());
    assert!(on_n1.url.as_str().starts_with(&n1), "{}", on_n1.url);
    let mut elsewhere = Client::connect_url(on_n1.url.as_str()).await;
    assert_eq!(elsewhere.next_json().await["id"], "m-held-elsewhere");

    // That link dies unacked: the message reaches her at home, without a reconnect.
    elsewhere.reset();
    let got = at_home.next_json().await;
    assert_eq!(got["id"], "m-held-elsewhere", "{got}");
    assert_eq!(got["data"], "hi", "{got}");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
