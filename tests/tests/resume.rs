//! Channel and broadcast resume (`docs/design.md` section 15), end to end with real sockets:
//! publications carry `offset` + `epoch`; a client that reconnects with `resume=` gets what it
//! missed, in order and once, before live frames, or `recovered:false` with the reason; a
//! client resumes only channels it is a member of; bad requests get a clear answer.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{collections::HashMap, time::Duration};

use impush_core::ChannelName;
use impush_helper::ImHelper;
use serde_json::{json, Value};
use support::{id, start, start_cluster, Client};

fn room() -> ChannelName {
    "room".parse().unwrap()
}

/// Connects `client` asking to resume with `request` (a JSON value, or raw text).
async fn connect_resuming(h: &ImHelper, client: &str, request: &str) -> Client {
    let url = h.prepare_connect(&id(client), Value::Null).unwrap().url;
    let encoded: String = request
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let url = format!("{url}&resume={encoded}");
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    Client { ws }
}

/// Frames up to and including the `resume` answer of `channel` (`None`: the broadcast one).
async fn until_resumed(c: &mut Client, channel: Option<&str>) -> (Vec<Value>, Value) {
    let mut frames = Vec::new();
    loop {
        let f = c.next_json().await;
        if f["type"] == "resume" && f["channel"].as_str() == channel {
            return (frames, f);
        }
        frames.push(f);
    }
}

async fn publish(h: &ImHelper, n: usize, tag: &str) {
    for i in 0..n {
        h.send_channel_message(&id("bob"), &room(), &format!("{tag}{i}"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_client_away_for_a_moment_gets_exactly_what_it_missed() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    h.join_channel(&room(), &[id("alice")]).await.unwrap();
    publish(&h, 3, "seen").await;
    h.broadcast(&"b-seen").await.unwrap();
    let mut last: HashMap<&str, (String, u64)> = HashMap::new();
    for _ in 0..4 {
        let f = alice.next_json().await;
        let stream = if f["type"] == "broadcast" {
            "b"
        } else {
            "room"
        };
        let pos = (
            f["epoch"].as_str().unwrap().to_owned(),
            f["offset"].as_u64().unwrap(),
        );
        last.insert(stream, pos);
    }
    assert_eq!(
        last["room"].1, 3,
        "offsets count the channel's publications"
    );
    assert_eq!(last["b"].1, 1, "the broadcast stream counts its own");
    drop(alice);

    // While away: three channel messages and a broadcast.
    publish(&h, 3, "missed").await;
    h.broadcast(&"b-missed").await.unwrap();
    let request = json!({
        "channels": { "room": { last["room"].0.clone(): last["room"].1 } },
        "broadcast": { last["b"].0.clone(): last["b"].1 },
    })
    .to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    let (replayed, answer) = until_resumed(&mut alice, Some("room")).await;
    let data: Vec<&Value> = replayed.iter().map(|f| &f["data"]).collect();
    assert_eq!(
        data,
        [&json!("missed0"), &json!("missed1"), &json!("missed2")]
    );
    assert_eq!(
        replayed
            .iter()
            .map(|f| f["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5, 6]
    );
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["replayed"], 3);
    let (replayed, answer) = until_resumed(&mut alice, None).await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["data"], "b-missed");
    assert_eq!(answer["broadcast"], true);
    assert_eq!(answer["recovered"], true);
    // Live frames follow, nothing twice.
    publish(&h, 1, "live").await;
    let f = alice.next_json().await;
    assert_eq!(
        (f["data"].as_str(), f["offset"].as_u64()),
        (Some("live0"), Some(7))
    );
    alice.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_away_past_the_window_is_told_so() {
    let server = start(|c| c.history.size = 3).await;
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    h.join_channel(&room(), &[id("alice")]).await.unwrap();
    publish(&h, 1, "seen").await;
    let f = alice.next_json().await;
    let epoch = f["epoch"].as_str().unwrap().to_owned();
    drop(alice);
    publish(&h, 5, "missed").await; // only the last 3 are kept
    let request = json!({ "channels": { "room": { epoch: 1 } } }).to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    let (replayed, answer) = until_resumed(&mut alice, Some("room")).await;
    assert!(
        replayed.is_empty(),
        "nothing replayed on a gap: {replayed:?}"
    );
    assert_eq!(
        answer,
        json!({"type": "resume", "channel": "room", "recovered": false, "reason": "window"})
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_resume_requests_get_a_clear_answer_and_nobody_elses_messages() {
    let server = start(|_| {}).await;
    let h = server.helper();
    // bob's room: alice is not a member and must not get its history.
    let secret: ChannelName = "secret".parse().unwrap();
    let mut bob = Client::connect(&h, "bob", 1).await;
    h.join_channel(&secret, &[id("bob")]).await.unwrap();
    h.join_channel(&room(), &[id("alice")]).await.unwrap();
    h.send_channel_message(&id("bob"), &secret, &"private")
        .await
        .unwrap();
    let epoch = bob.next_json().await["epoch"].as_str().unwrap().to_owned();
    publish(&h, 2, "r").await;

    let mut alice = connect_resuming(&h, "alice", "{not json").await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "resume", "channel": null, "recovered": false, "reason": "malformed"})
    );
    drop(alice);

    let request = json!({ "channels": { "secret": { epoch.clone(): 0 } } }).to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "resume", "channel": "secret", "recovered": false, "reason": "not_member"})
    );
    drop(alice);

    let room_epoch = {
        // alice's own room: an offset from the future, and an epoch the node never had.
        let mut a = Client::connect(&h, "alice", 1).await;
        publish(&h, 1, "x").await;
        let e = a.next_json().await["epoch"].as_str().unwrap().to_owned();
        drop(a);
        e
    };
    let request = json!({ "channels": { "room": { room_epoch: 999 } } }).to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    let (_, answer) = until_resumed(&mut alice, Some("room")).await;
    assert_eq!(answer["reason"], "future", "{answer}");
    drop(alice);
    let request = json!({ "channels": { "room": { "n9.zz.1": 3 } } }).to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    let (_, answer) = until_resumed(&mut alice, Some("room")).await;
    assert_eq!(answer["reason"], "window", "{answer}");
    drop(alice);

    let many: serde_json::Map<String, Value> = (0..300)
        .map(|i| (format!("c{i}"), json!({ "e": 1 })))
        .collect();
    let request = json!({ "channels": many }).to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    assert_eq!(alice.next_json().await["reason"], "too_many");
    // After all that, the socket works as usual.
    publish(&h, 1, "after").await;
    assert_eq!(alice.next_json().await["data"], "after0");
    server.shutdown().await.unwrap();
}

/// Publications keep flowing while the client reconnects: each reaches it exactly once,
/// replayed or live, offsets without a gap. (Several threads: the feed delivers while the
/// connection attaches.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_racing_live_publications_loses_and_repeats_nothing() {
    // History large enough for the whole flood: the point is the race, not the window.
    let mut c = support::config();
    c.history.size = 5000;
    c.limits.outbound_queue = 10_000;
    let server = impush_server::ImServer::start_with(
        c,
        std::sync::Arc::new(impush_core::MemoryBroker::default()),
        // `connect` taking a while, as a real store's round trip does: the window in which a
        // new connection is registered but its resume not yet done.
        std::sync::Arc::new(support::SlowPresence::new(
            Duration::from_millis(30),
            Duration::ZERO,
        )),
    )
    .await
    .unwrap();
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    h.join_channel(&room(), &[id("alice")]).await.unwrap();
    publish(&h, 1, "first").await;
    let f = alice.next_json().await;
    let epoch = f["epoch"].as_str().unwrap().to_owned();
    // Her first device stays: the second one is in the channel index the moment it is
    // registered, while its resume is still being prepared.
    let _first_device = alice;
    const FLOOD: u64 = 2000;
    let flood = tokio::spawn({
        let h = h.clone();
        async move { publish(&h, FLOOD as usize, "m").await }
    });
    let request = json!({ "channels": { "room": { epoch: 1 } } }).to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    let mut offsets = Vec::new();
    let mut answered = false;
    while offsets.len() < FLOOD as usize || !answered {
        let f = alice.next_json().await;
        if f["type"] == "channel" {
            offsets.push(f["offset"].as_u64().unwrap());
        } else {
            assert_eq!(f["recovered"], true, "{f}");
            answered = true;
        }
    }
    flood.await.unwrap();
    assert_eq!(offsets, (2..=FLOOD + 1).collect::<Vec<_>>());
    alice.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

/// Every node keeps every stream: a client that comes back on another node resumes there.
#[tokio::test]
async fn a_client_resumes_on_another_node() {
    let nodes = start_cluster(2, |_| {}).await;
    let h = nodes[0].helper();
    h.join_channel(&room(), &[id("alice")]).await.unwrap();
    // alice sits on the node that does not own her (as after a failover), with a token signed
    // for that node...
    let owner = h.cluster().owner(&id("alice")).id.clone();
    let other_id = h
        .cluster()
        .nodes()
        .iter()
        .find(|e| e.id != owner)
        .unwrap()
        .clone();
    let signer = impush_core::token::TokenSigner::new(
        support::SECRET.as_bytes(),
        Duration::from_secs(30),
        1024,
    )
    .unwrap();
    let token = signer
        .sign(&id("alice"), &other_id.id, Value::Null)
        .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}/ws?token={token}", other_id.url))
        .await
        .unwrap();
    let mut alice = Client { ws };
    support::eventually(|| async { h.connections(&id("alice")).await.unwrap() == 1 }).await;
    publish(&h, 2, "seen").await;
    alice.next_json().await;
    let f = alice.next_json().await;
    let (epoch, offset) = (
        f["epoch"].as_str().unwrap().to_owned(),
        f["offset"].as_u64().unwrap(),
    );
    drop(alice);
    publish(&h, 2, "missed").await;
    // ...and comes back to her owner, which resumes her from its own copy of the stream.
    let request = json!({ "channels": { "room": { epoch: offset } } }).to_string();
    let mut alice = connect_resuming(&h, "alice", &request).await;
    let (replayed, answer) = until_resumed(&mut alice, Some("room")).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let data: Vec<&Value> = replayed.iter().map(|f| &f["data"]).collect();
    assert_eq!(data, [&json!("missed0"), &json!("missed1")]);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
