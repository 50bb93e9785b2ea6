//! Hostile and broken clients at the WebSocket session (`docs/design.md` section 10): a frame flood
//! is closed with 1008, invalid UTF-8 with 1007, and a client that stops reading is closed as dead
//! within `ping_interval + pong_timeout` even while a write to it is stuck, with its offline
//! event published; a kick still reaches such a client.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use impush_core::Event;
use serde_json::{json, Value};
use support::{eventually, id, start, Client};
use tokio_tungstenite::tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    },
    Message,
};

#[tokio::test]
async fn a_frame_flood_is_closed_with_1008() {
    let server = start(|c| {
        c.limits.inbound_rate = 10;
        c.limits.inbound_burst = 20;
    })
    .await;
    let h = server.helper();
    let mut c = Client::connect(&h, "flooder", 1).await;
    for _ in 0..100 {
        if c.ws
            .send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.close_code().await, 1008);
    eventually(|| async { !h.is_online(&id("flooder")).await.unwrap().value }).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_polite_client_under_the_rate_stays() {
    let server = start(|c| {
        c.limits.inbound_rate = 10;
        c.limits.inbound_burst = 20;
    })
    .await;
    let h = server.helper();
    let mut c = Client::connect(&h, "polite", 1).await;
    for _ in 0..15 {
        c.send_json(json!({"type": "ping"})).await;
        assert_eq!(c.next_json().await, json!({"type": "pong"}));
    }
    server.shutdown().await.unwrap();
}

/// A receiver acking a burst far above its frame rate is keeping up, not flooding: acks of
/// delivered messages are free, so it stays connected and every receipt arrives.
#[tokio::test]
async fn acking_a_burst_is_not_rate_limited() {
    let server = start(|c| {
        c.limits.inbound_rate = 10;
        c.limits.inbound_burst = 20;
    })
    .await;
    let h = server.helper();
    let mut sender = Client::connect(&h, "sender", 1).await;
    let mut c = Client::connect(&h, "reader", 1).await;
    let n = 100;
    for i in 0..n {
        h.send_message(&id("sender"), &[id("reader")], &format!("m{i}"), true)
            .await
            .unwrap();
    }
    for _ in 0..n {
        let msg = c.next_json().await;
        let mid = msg["id"].as_str().unwrap().to_owned();
        c.send_json(json!({"type": "ack", "id": mid})).await;
    }
    let mut acked = 0;
    while acked < n {
        let r = sender.next_json().await;
        if r["status"] == "acked" {
            acked += r["to"].as_array().unwrap().len();
        }
    }
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.next_json().await, json!({"type": "pong"}));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_is_closed_with_1007() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut c = Client::connect(&h, "broken", 1).await;
    let frame = Frame::message(vec![0xff, 0xfe, b'{', 0x80], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.close_code().await, 1007);
    server.shutdown().await.unwrap();
}

/// A client with a tiny receive buffer that never reads: the node's writes to it get stuck.
async fn non_reading_client(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let addr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_dead_while_a_write_is_stuck() {
    let server = start(|c| {
        c.limits.ping_interval = Duration::from_secs(1);
        c.limits.pong_timeout = Duration::from_secs(1);
        // Big enough that the queue never overflows: only the dead-peer check can close it.
        c.limits.outbound_queue = 100_000;
        c.limits.outbound_queue_bytes = 512 * 1024 * 1024;
    })
    .await;
    let h = server.helper();
    let mut events = h.events().await.unwrap();
    let url = h.prepare_connect(&id("stuck"), Value::Null).unwrap().url;
    let _ws = non_reading_client(&url).await; // held open, never read
    eventually(|| async { h.is_online(&id("stuck")).await.unwrap().value }).await;

    let payload = "x".repeat(64 * 1024);
    let started = Instant::now();
    for _ in 0..200 {
        h.send_message(&id("srv"), &[id("stuck")], &payload, false)
            .await
            .unwrap();
    }
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await.unwrap().unwrap() {
                e @ Event::Offline { .. } => return e,
                _ => continue,
            }
        }
    })
    .await
    .expect("an offline event for the stuck client");
    let took = started.elapsed();
    assert!(matches!(ev, Event::Offline { last: true, .. }), "{ev:?}");
    // ping_interval + pong_timeout = 2 s, plus generous slack for a loaded machine.
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    assert_eq!(server.metrics().dead_peer_closes(), 1);
    assert_eq!(server.metrics().slow_consumer_closes(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_reaches_a_client_whose_writes_are_stuck() {
    let server = start(|c| {
        c.limits.outbound_queue = 100_000;
        c.limits.outbound_queue_bytes = 512 * 1024 * 1024;
    })
    .await;
    let h = server.helper();
    let url = h.prepare_connect(&id("stuck"), Value::Null).unwrap().url;
    let _ws = non_reading_client(&url).await;
    eventually(|| async { h.is_online(&id("stuck")).await.unwrap().value }).await;
    let payload = "x".repeat(64 * 1024);
    for _ in 0..100 {
        h.send_message(&id("srv"), &[id("stuck")], &payload, false)
            .await
            .unwrap();
    }
    h.force_offline(&id("stuck")).await.unwrap();
    eventually(|| async { !h.is_online(&id("stuck")).await.unwrap().value }).await;
    server.shutdown().await.unwrap();
}

/// `limits.outbound_queue` alone (the byte bound far away): a client that stops reading is
/// closed as a slow consumer once more frames than that wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_frame_count_alone_closes_a_slow_consumer() {
    let server = start(|c| {
        c.limits.outbound_queue = 8;
        c.limits.outbound_queue_bytes = 1024 * 1024 * 1024;
        // The dead-peer check must not be what closes it.
        c.limits.ping_interval = Duration::from_secs(60);
    })
    .await;
    let h = server.helper();
    let url = h.prepare_connect(&id("slow"), Value::Null).unwrap().url;
    let _ws = non_reading_client(&url).await;
    eventually(|| async { h.is_online(&id("slow")).await.unwrap().value }).await;
    let payload = "x".repeat(64 * 1024);
    // 400 x 64 KiB = 25 MiB: far beyond what the kernel buffers, far below the byte bound.
    for _ in 0..400 {
        h.send_message(&id("srv"), &[id("slow")], &payload, false)
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    eventually(|| async { !h.is_online(&id("slow")).await.unwrap().value }).await;
    assert_eq!(server.metrics().slow_consumer_closes(), 1);
    assert_eq!(server.metrics().dead_peer_closes(), 0);
    server.shutdown().await.unwrap();
}

/// `limits.max_pending_acks`: a connection remembers only that many ackable messages; an ack
/// for one it forgot produces no receipt (and is counted as ignored), the others do.
#[tokio::test]
async fn acks_beyond_max_pending_acks_are_ignored() {
    let server = start(|c| c.limits.max_pending_acks = 2).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;
    let mut alice = Client::connect(&h, "alice", 1).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = h
            .send_message(&id("bob"), &[id("alice")], &i, true)
            .await
            .unwrap();
        ids.push(r.id.as_str().to_owned());
        assert_eq!(alice.next_json().await["id"], ids[i]);
    }
    for _ in 0..3 {
        assert_eq!(bob.next_json().await["status"], "delivered");
    }
    for mid in &ids {
        alice.send_json(json!({"type": "ack", "id": mid})).await;
    }
    // The first was forgotten when the third was delivered.
    let mut acked = vec![bob.next_json().await, bob.next_json().await];
    acked.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
    let mut want = vec![ids[1].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(
        acked
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        want
    );
    assert!(acked.iter().all(|r| r["status"] == "acked"), "{acked:?}");
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(server.metrics().ignored_frames(), 1);
    server.shutdown().await.unwrap();
}

/// `limits.max_pending_tokens` through the server: beyond that many unexpired, unused tokens a
/// connect is refused (`token_overloaded`) rather than forgetting one, which would allow a
/// replay; tokens already used stay remembered until they expire.
#[tokio::test]
async fn connects_beyond_max_pending_tokens_are_refused() {
    let server = start(|c| c.limits.max_pending_tokens = 2).await;
    let h = server.helper();
    let _a = Client::connect(&h, "a", 1).await;
    let _b = Client::connect(&h, "b", 1).await;
    let url = h.prepare_connect(&id("c"), Value::Null).unwrap().url;
    let (status, body) = support::refused_status(&url).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_overloaded"))
    );
    assert!(!h.is_online(&id("c")).await.unwrap().value);
    server.shutdown().await.unwrap();
}

/// A client that goes silent just after the node heard it is closed when its silence reaches
/// `ping_interval + pong_timeout` (here 3 s + 1 s), not at the first ping after that (here at
/// 6 s: up to a whole interval late), and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_when_its_silence_reaches_the_limit() {
    let server = start(|c| {
        c.limits.ping_interval = Duration::from_secs(3);
        c.limits.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let h = server.helper();
    let mut events = h.events().await.unwrap();
    let mut c = Client::connect(&h, "quiet", 1).await;
    // Just after a ping from the node: its pong goes out, then a frame the node answers, so the
    // node has heard the client now and its next ping is a whole interval away.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(c.ws.next().await, Some(Ok(Message::Ping(_)))) {}
    })
    .await
    .expect("a ping from the node");
    c.ws.flush().await.unwrap();
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.next_json().await, json!({"type": "pong"}));
    let silent_from = Instant::now();

    // Never read again: no pong answers the node's next ping.
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await.unwrap().unwrap() {
                e @ Event::Offline { .. } => return e,
                _ => continue,
            }
        }
    })
    .await
    .expect("an offline event for the silent client");
    let took = silent_from.elapsed();
    assert!(matches!(ev, Event::Offline { last: true, .. }), "{ev:?}");
    assert!(
        took >= Duration::from_millis(3800),
        "closed early: {took:?}"
    );
    assert!(took < Duration::from_millis(5200), "closed after {took:?}");
    assert_eq!(server.metrics().dead_peer_closes(), 1);
    drop(c);
    server.shutdown().await.unwrap();
}
