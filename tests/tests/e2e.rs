//! End-to-end tests of one node (and of in-process clusters over the memory backends): real
//! WebSocket clients on a real port, every helper method, receipts, multi-device delivery,
//! channels, kicks, broadcast, shutdown, and the bad inputs.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::Duration;

use futures_util::StreamExt;
use impush_core::{token::TokenSigner, ChannelName, Event, NodeId, ReceiptStatus};
use serde_json::{json, Value};
use support::{eventually, id, refused_status, start, start_cluster, Client, SECRET};
use tokio_tungstenite::tungstenite::Message;

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

#[tokio::test]
async fn message_reaches_every_device_with_data_passed_through() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut a1 = Client::connect(&h, "alice", 1).await;
    let mut a2 = Client::connect(&h, "alice", 2).await;
    let mut bob = Client::connect(&h, "bob", 1).await;

    let report = h
        .send_message(
            &id("bob"),
            &[id("alice")],
            &json!({"text": "hi", "n": [1, 2]}),
            false,
        )
        .await
        .unwrap();
    assert_eq!(report.nodes, 1);
    for c in [&mut a1, &mut a2] {
        let f = c.next_json().await;
        assert_eq!(f["type"], "message");
        assert_eq!(f["id"], report.id.as_str());
        assert_eq!(f["from"], "bob");
        assert_eq!(f["data"], json!({"text": "hi", "n": [1, 2]}));
        assert_eq!(f["receipt"], false);
        assert!(f["ts"].as_u64().unwrap() > 0);
    }
    // The sender does not get its own message unless listed.
    bob.expect_silence(Duration::from_millis(200)).await;

    // A string payload stays a JSON string: never double-encoded.
    h.send_message(&id("bob"), &[id("alice"), id("bob")], "plain", false)
        .await
        .unwrap();
    assert_eq!(a1.next_json().await["data"], "plain");
    assert_eq!(bob.next_json().await["data"], "plain");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn receipts_delivered_offline_and_acked() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;
    let mut alice = Client::connect(&h, "alice", 1).await;

    let report = h
        .send_message(
            &id("bob"),
            &[id("alice"), id("carol")],
            &json!("ping"),
            true,
        )
        .await
        .unwrap();
    let msg = alice.next_json().await;
    assert_eq!(msg["receipt"], true);

    // One frame per status, each listing the receivers it covers; `delivered` means written.
    let mut receipts = vec![bob.next_json().await, bob.next_json().await];
    receipts.sort_by_key(|r| r["status"].as_str().unwrap().to_owned());
    assert_eq!(
        receipts,
        vec![
            json!({"type":"receipt","id":report.id.as_str(),"to":["alice"],"status":"delivered"}),
            json!({"type":"receipt","id":report.id.as_str(),"to":["carol"],"status":"offline"}),
        ]
    );

    alice
        .send_json(json!({"type": "ack", "id": report.id.as_str()}))
        .await;
    assert_eq!(
        bob.next_json().await,
        json!({"type":"receipt","id":report.id.as_str(),"to":["alice"],"status":"acked"})
    );
    // A second ack, or an ack for an unknown id, produces nothing.
    alice
        .send_json(json!({"type": "ack", "id": report.id.as_str()}))
        .await;
    alice.send_json(json!({"type": "ack", "id": "nope"})).await;
    bob.expect_silence(Duration::from_millis(200)).await;
    // Exactly those two acks were ignored; the first one counted as an ack.
    eventually(|| async { server.metrics().ignored_frames() == 2 }).await;
    bob.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(server.metrics().ignored_frames(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ack_without_receipt_request_is_ignored() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut bob = Client::connect(&h, "bob", 1).await;
    let mut alice = Client::connect(&h, "alice", 1).await;
    let report = h
        .send_message(&id("bob"), &[id("alice")], &1, false)
        .await
        .unwrap();
    alice.next_json().await;
    alice
        .send_json(json!({"type": "ack", "id": report.id.as_str()}))
        .await;
    bob.expect_silence(Duration::from_millis(200)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ping_pong_and_garbage_frames_are_ignored() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut c = Client::connect(&h, "alice", 1).await;
    c.send_text("not json").await;
    c.send_text(r#"{"type":"send","to":"x"}"#).await;
    c.send_text(r#"[1,2,3]"#).await;
    c.ws.send(Message::Binary(vec![0, 1, 2].into()))
        .await
        .unwrap();
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.next_json().await, json!({"type": "pong"}));
    // Frames are handled in order: by the pong, each of the four was counted, and only they.
    assert_eq!(server.metrics().ignored_frames(), 4);
    // Still connected and receiving.
    h.send_message(&id("x"), &[id("alice")], &2, false)
        .await
        .unwrap();
    assert_eq!(c.next_json().await["data"], 2);
    server.shutdown().await.unwrap();
}

use futures_util::SinkExt;

#[tokio::test]
async fn channels_membership_and_delivery() {
    // Memberships end the moment the last connection closes (no linger: see
    // `memberships_linger_after_a_dropped_link` for the default).
    let server = start(|c| c.channels.linger = Duration::ZERO).await;
    let h = server.helper();
    let room = ch("room 1");
    let mut a1 = Client::connect(&h, "alice", 1).await;
    let mut a2 = Client::connect(&h, "alice", 2).await;
    let mut bob = Client::connect(&h, "bob", 1).await;
    let mut carol = Client::connect(&h, "carol", 1).await;

    h.join_channel(&room, &[id("alice"), id("bob"), id("dave")])
        .await
        .unwrap();
    assert_eq!(
        h.channel_members(&room).await.unwrap(),
        vec![id("alice"), id("bob"), id("dave")]
    );
    assert_eq!(h.channel_online(&room).await.unwrap(), 2);
    assert_eq!(
        h.client_channels(&id("alice")).await.unwrap(),
        vec![room.clone()]
    );
    let chans = h.channels().await.unwrap();
    assert_eq!(chans.len(), 1);
    assert_eq!((chans[0].members, chans[0].online), (3, 2));

    // Membership commands travel over the broker; wait until a message is seen to be sure the
    // nodes applied them (they are ordered on the same topic as channel messages).
    let mid = h
        .send_channel_message(&id("bob"), &room, &json!({"m": 1}))
        .await
        .unwrap();
    for c in [&mut a1, &mut a2, &mut bob] {
        let f = c.next_json().await;
        assert_eq!(f["type"], "channel");
        assert_eq!(f["id"], mid.as_str());
        assert_eq!(f["channel"], "room 1");
        assert_eq!(f["from"], "bob");
        assert_eq!(f["data"], json!({"m": 1}));
    }
    carol.expect_silence(Duration::from_millis(200)).await;

    // One of alice's two devices closing keeps her in the channel...
    a2.ws.close(None).await.unwrap();
    eventually(|| async { h.connections(&id("alice")).await.unwrap() == 1 }).await;
    assert_eq!(
        h.client_channels(&id("alice")).await.unwrap(),
        vec![room.clone()]
    );
    h.send_channel_message(&id("bob"), &room, &2).await.unwrap();
    assert_eq!(a1.next_json().await["data"], 2);
    assert_eq!(bob.next_json().await["data"], 2);

    // ...her last one closing ends her membership.
    a1.ws.close(None).await.unwrap();
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    assert!(h.client_channels(&id("alice")).await.unwrap().is_empty());
    assert_eq!(
        h.channel_members(&room).await.unwrap(),
        vec![id("bob"), id("dave")]
    );

    // Reconnecting does not bring the membership back.
    let mut a3 = Client::connect(&h, "alice", 1).await;
    h.send_channel_message(&id("bob"), &room, &3).await.unwrap();
    assert_eq!(bob.next_json().await["data"], 3);
    a3.expect_silence(Duration::from_millis(200)).await;

    // Leaving stops delivery; a channel with no members disappears.
    h.leave_channel(&room, &[id("bob")]).await.unwrap();
    h.send_channel_message(&id("x"), &room, &4).await.unwrap();
    bob.expect_silence(Duration::from_millis(200)).await;
    h.leave_channel(&room, &[id("dave")]).await.unwrap();
    assert!(h.channels().await.unwrap().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn membership_loaded_when_client_connects_later() {
    let server = start(|c| c.channels.persist = true).await;
    let h = server.helper();
    let room = ch("lobby");
    h.join_channel(&room, &[id("alice")]).await.unwrap();
    let mut a = Client::connect(&h, "alice", 1).await;
    h.send_channel_message(&id("sys"), &room, &"welcome")
        .await
        .unwrap();
    assert_eq!(a.next_json().await["data"], "welcome");
    // With channels.persist, membership survives the last connection.
    a.ws.close(None).await.unwrap();
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    assert_eq!(h.channel_members(&room).await.unwrap(), vec![id("alice")]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_close_gets_a_clean_close_reply() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut c = Client::connect(&h, "alice", 1).await;
    c.ws.close(None).await.unwrap();
    let reply = tokio::time::timeout(support::WAIT, c.ws.next())
        .await
        .unwrap();
    assert!(
        matches!(reply, Some(Ok(Message::Close(_))) | None),
        "expected the server's close reply, got {reply:?}"
    );
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn broadcast_reaches_everyone() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut clients = Vec::new();
    for name in ["a", "b", "c"] {
        clients.push(Client::connect(&h, name, 1).await);
    }
    let bid = h
        .broadcast(&json!({"notice": "maintenance"}))
        .await
        .unwrap();
    for c in &mut clients {
        let f = c.next_json().await;
        assert_eq!(f["type"], "broadcast");
        assert_eq!(f["id"], bid.as_str());
        assert_eq!(f["data"]["notice"], "maintenance");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn presence_queries_and_events_with_first_last() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut events = h.events().await.unwrap();

    let mut a1 = Client::connect_with(&h, "alice", json!({"device": "ios"})).await;
    let ev = next_event(&mut events).await;
    let Event::Online {
        client,
        node,
        metadata,
        first,
        ..
    } = &ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (client.as_str(), node.as_str(), first),
        ("alice", "n1", &true)
    );
    assert_eq!(metadata, &json!({"device": "ios"}));

    let a2 = Client::connect_with(&h, "alice", Value::Null).await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Online { first: false, .. }
    ));
    let _b = Client::connect(&h, "bob", 1).await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Online { first: true, .. }
    ));

    assert_eq!(
        h.online_clients().await.unwrap(),
        vec![id("alice"), id("bob")]
    );
    assert!(h.is_online(&id("alice")).await.unwrap().value);
    assert!(!h.is_online(&id("zed")).await.unwrap().value);
    assert_eq!(
        h.is_online_many(&[id("zed"), id("bob"), id("alice")])
            .await
            .unwrap(),
        vec![false, true, true]
    );
    assert_eq!(h.connections(&id("alice")).await.unwrap(), 2);

    drop(a2);
    let ev = next_event(&mut events).await;
    assert!(matches!(&ev, Event::Offline { last: false, .. }), "{ev:?}");
    a1.ws.close(None).await.unwrap();
    let ev = next_event(&mut events).await;
    let Event::Offline {
        client,
        metadata,
        last,
        ..
    } = &ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!((client.as_str(), last), ("alice", &true));
    assert_eq!(metadata, &json!({"device": "ios"}));
    assert_eq!(h.online_clients().await.unwrap(), vec![id("bob")]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_group_of_event_readers_gets_each_event_once() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut a = h.events_in_group("billing").await.unwrap();
    let mut b = h.events_in_group("billing").await.unwrap();
    let mut everyone = h.events().await.unwrap();
    let mut clients = Vec::new();
    for name in ["u1", "u2", "u3", "u4"] {
        clients.push(Client::connect(&h, name, 1).await);
    }
    for _ in 0..4 {
        next_event(&mut everyone).await;
    }
    // Between them the two group members saw each of the four events exactly once: read
    // both until four arrived, then nothing more may come, late duplicates included.
    let mut seen = Vec::new();
    let mut merged = futures_util::stream::select(&mut a, &mut b);
    while seen.len() < 4 {
        let ev = tokio::time::timeout(support::WAIT, merged.next())
            .await
            .expect("four group events in time")
            .expect("group streams open");
        seen.push(ev.unwrap().client().to_string());
    }
    if let Ok(extra) = tokio::time::timeout(Duration::from_secs(1), merged.next()).await {
        panic!("a fifth group event: {extra:?} after {seen:?}");
    }
    seen.sort();
    assert_eq!(seen, ["u1", "u2", "u3", "u4"]);
    server.shutdown().await.unwrap();
}

async fn next_event(events: &mut impush_helper::EventStream) -> Event {
    tokio::time::timeout(support::WAIT, events.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn force_offline_closes_every_device_with_4001() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut a1 = Client::connect(&h, "alice", 1).await;
    let mut a2 = Client::connect(&h, "alice", 2).await;
    let _bob = Client::connect(&h, "bob", 1).await;
    assert_eq!(h.force_offline(&id("alice")).await.unwrap(), 2);
    assert_eq!(a1.close_code().await, 4001);
    assert_eq!(a2.close_code().await, 4001);
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    assert!(h.is_online(&id("bob")).await.unwrap().value);
    assert_eq!(h.force_offline(&id("nobody")).await.unwrap(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connection_limit_replaces_the_oldest_with_4009() {
    let server = start(|c| c.limits.max_connections_per_client = 1).await;
    let h = server.helper();
    let mut old = Client::connect(&h, "alice", 1).await;
    let mut new = Client::connect_with(&h, "alice", Value::Null).await;
    assert_eq!(old.close_code().await, 4009);
    eventually(|| async { h.connections(&id("alice")).await.unwrap() == 1 }).await;
    h.send_message(&id("b"), &[id("alice")], &1, false)
        .await
        .unwrap();
    assert_eq!(new.next_json().await["data"], 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let addr = server.local_addr();
    let base = format!("ws://{addr}/ws");

    let (status, body) = refused_status(&base).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_missing"))
    );

    let (status, body) = refused_status(&format!("{base}?token=garbage")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_malformed"))
    );

    let forger = TokenSigner::new(b"not-the-secret", Duration::from_secs(30), 1024).unwrap();
    let forged = forger
        .sign(&id("alice"), &"n1".parse().unwrap(), Value::Null)
        .unwrap();
    let (status, body) = refused_status(&format!("{base}?token={forged}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_bad_signature"))
    );

    let short = TokenSigner::new(SECRET.as_bytes(), Duration::from_millis(1), 1024).unwrap();
    let expired = short
        .sign(&id("alice"), &"n1".parse().unwrap(), Value::Null)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = refused_status(&format!("{base}?token={expired}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_expired"))
    );

    let signer = TokenSigner::new(SECRET.as_bytes(), Duration::from_secs(30), 1024).unwrap();
    let other: NodeId = "n2".parse().unwrap();
    let wrong = signer.sign(&id("alice"), &other, Value::Null).unwrap();
    let (status, body) = refused_status(&format!("{base}?token={wrong}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_wrong_node"))
    );

    let url = h.prepare_connect(&id("alice"), Value::Null).unwrap().url;
    let (_ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let (status, body) = refused_status(&url).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_reused"))
    );

    assert_eq!(server.metrics().token_rejections(), 6);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_ids_are_refused_where_they_enter() {
    assert!(impush_core::ClientId::new("").is_err());
    assert!(impush_core::ClientId::new("a\u{0}b").is_err());
    assert!(impush_core::ClientId::new("x".repeat(129)).is_err());
    assert!(ChannelName::new("").is_err());
    assert!(ChannelName::new("tab\there").is_err());
    let server = start(|_| {}).await;
    let h = server.helper();
    let err = h.send_message(&id("a"), &[], &1, false).await.unwrap_err();
    assert!(err.to_string().contains("no receivers"), "{err}");
    let err = h
        .prepare_connect(&id("a"), json!({"blob": "x".repeat(2000)}))
        .unwrap_err();
    assert!(matches!(err, impush_core::Error::TooLarge { .. }), "{err}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let server = start(|c| c.limits.max_frame_bytes = 1024).await;
    let h = server.helper();
    let mut c = Client::connect(&h, "alice", 1).await;
    c.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(512)))
        .await;
    assert_eq!(c.next_json().await, json!({"type": "pong"}));
    c.send_text(&"x".repeat(4096)).await;
    assert_eq!(c.close_code().await, 1009);
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_and_live_peer_kept() {
    // Windows wide enough for a loaded machine: the live peer has a whole second to answer.
    let server = start(|c| {
        c.limits.ping_interval = Duration::from_millis(250);
        c.limits.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let h = server.helper();
    // The live client reads (tungstenite answers pings while reading), for several silence
    // windows.
    let mut live = Client::connect(&h, "live", 1).await;
    let reader = tokio::spawn(async move {
        live.expect_silence(Duration::from_secs(4)).await;
        live
    });
    // The silent one never polls its socket, so it never answers a ping.
    let _silent = Client::connect(&h, "silent", 1).await;
    eventually(|| async { !h.is_online(&id("silent")).await.unwrap().value }).await;
    // Keep the live client until the check: dropping it closes its socket, and the check
    // would race that close.
    let live = reader.await.unwrap();
    assert!(h.is_online(&id("live")).await.unwrap().value);
    drop(live);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_with_1001_and_publishes_offline_events() {
    let server = start(|_| {}).await;
    let h = server.helper();
    let mut c = Client::connect(&h, "alice", 1).await;
    let mut events = h.events().await.unwrap();
    let closing = tokio::spawn(async move { c.close_code().await });
    server.shutdown().await.unwrap();
    assert_eq!(closing.await.unwrap(), 1001);
    let ev = tokio::time::timeout(support::WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, Event::Offline { last: true, .. }), "{ev:?}");
}

#[tokio::test]
async fn health_endpoints_answer() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    for (path, want) in [("/healthz", "200"), ("/readyz", "200"), ("/nope", "404")] {
        let status = http_status(addr, path).await;
        assert_eq!(status, want, "{path}");
    }
    server.shutdown().await.unwrap();
}

async fn http_status(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn cluster_in_one_process_routes_across_nodes() {
    let nodes = start_cluster(3, |_| {}).await;
    let h = nodes[0].helper();
    // Find clients owned by different nodes.
    let mut names = Vec::new();
    for want in ["n1", "n2", "n3"] {
        let name = (0..)
            .map(|i| format!("user{i}"))
            .find(|n| h.cluster().owner(&id(n)).id.as_str() == want)
            .unwrap();
        names.push(name);
    }
    let mut clients = Vec::new();
    for n in &names {
        clients.push(Client::connect(&h, n, 1).await);
    }
    // Point-to-point with receipts from n1's client to the others.
    let to: Vec<_> = names[1..].iter().map(|n| id(n)).collect();
    let report = h
        .send_message(&id(&names[0]), &to, &"x", true)
        .await
        .unwrap();
    assert_eq!(report.nodes, 2);
    for c in &mut clients[1..] {
        let f = c.next_json().await;
        assert_eq!(f["data"], "x");
        c.send_json(json!({"type":"ack","id": report.id.as_str()}))
            .await;
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = clients[0].next_json().await;
        statuses.push(r["status"].as_str().unwrap().to_owned());
    }
    statuses.sort();
    assert_eq!(statuses, ["acked", "acked", "delivered", "delivered"]);

    // A channel with members on every node.
    let room = ch("all-nodes");
    let members: Vec<_> = names.iter().map(|n| id(n)).collect();
    h.join_channel(&room, &members).await.unwrap();
    h.send_channel_message(&id("sys"), &room, &"hello")
        .await
        .unwrap();
    for c in &mut clients {
        assert_eq!(c.next_json().await["data"], "hello");
    }
    // Kick across nodes: helper of n1 kicks n3's client.
    assert_eq!(
        nodes[2]
            .helper()
            .force_offline(&id(&names[2]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(clients[2].close_code().await, 4001);

    // A token for n2's client is refused by n1.
    let info = h.prepare_connect(&id(&names[1]), Value::Null).unwrap();
    let wrong = info.url.replace(
        &h.cluster().node(&"n2".parse().unwrap()).unwrap().url,
        &h.cluster().node(&"n1".parse().unwrap()).unwrap().url,
    );
    let (status, body) = refused_status(&wrong).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_wrong_node"))
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn receipt_status_enum_round_trips() {
    for s in [
        ReceiptStatus::Delivered,
        ReceiptStatus::Offline,
        ReceiptStatus::Stored,
        ReceiptStatus::Acked,
    ] {
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(v, s.as_str());
        let back: ReceiptStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
    assert!(serde_json::from_value::<ReceiptStatus>(json!("Delivered")).is_err());
    assert!(serde_json::from_value::<ReceiptStatus>(json!("lost")).is_err());
}

/// Sends a broadcast `marker` after whatever was published before it on `.all`, so a socket's
/// next frames can be checked without waiting out a silence: `.all` keeps one publisher's order
/// (with `[history] size = 0`: with history each stream is numbered by its own sequencer, and
/// only a stream's own order is kept, so the clusters of these tests keep none).
async fn broadcast_marker(h: &impush_helper::ImHelper, marker: &str) {
    h.broadcast(&json!({ "marker": marker })).await.unwrap();
}

/// Asserts that `c`'s next frame is the broadcast `marker` (nothing of a channel it left came
/// first).
async fn next_is_marker(c: &mut Client, marker: &str) {
    let f = c.next_json().await;
    assert_eq!(
        (f["type"].as_str(), &f["data"]),
        (Some("broadcast"), &json!({ "marker": marker })),
        "expected the marker broadcast, got {f}"
    );
}

/// Clients owned by `n1` and `n2` of a `start_cluster` cluster.
fn one_per_node(h: &impush_helper::ImHelper) -> [String; 2] {
    ["n1", "n2"].map(|want| {
        (0..)
            .map(|i| format!("member{i}"))
            .find(|n| h.cluster().owner(&id(n)).id.as_str() == want)
            .unwrap()
    })
}

#[tokio::test]
async fn clear_channel_removes_every_member_on_every_node() {
    let nodes = start_cluster(2, |c| c.history.size = 0).await;
    // The helper of n2 clears what n1's helper set up: membership is cluster-wide.
    let (h1, h2) = (nodes[0].helper(), nodes[1].helper());
    let [a, b] = one_per_node(&h1);
    let mut ca = Client::connect(&h1, &a, 1).await;
    let mut cb = Client::connect(&h1, &b, 1).await;
    let room = ch("to-clear");
    let other = ch("stays");
    h1.join_channel(&room, &[id(&a), id(&b), id("offline-dave")])
        .await
        .unwrap();
    h1.join_channel(&other, &[id(&a)]).await.unwrap();
    h1.send_channel_message(&id("sys"), &room, &"before")
        .await
        .unwrap();
    for c in [&mut ca, &mut cb] {
        assert_eq!(c.next_json().await["data"], "before");
    }

    assert_eq!(h2.clear_channel(&room).await.unwrap(), 3);
    assert!(h1.channel_members(&room).await.unwrap().is_empty());
    assert_eq!(
        h1.client_channels(&id(&a)).await.unwrap(),
        vec![other.clone()]
    );
    assert!(h1.client_channels(&id(&b)).await.unwrap().is_empty());
    assert_eq!(
        h1.channels().await.unwrap().len(),
        1,
        "only `stays` is left"
    );

    // Published after the clear by the same helper: each node applied the clear first.
    h2.send_channel_message(&id("sys"), &room, &"after")
        .await
        .unwrap();
    h2.send_channel_message(&id("sys"), &other, &"other")
        .await
        .unwrap();
    broadcast_marker(&h2, "m1").await;
    assert_eq!(ca.next_json().await["data"], "other");
    next_is_marker(&mut ca, "m1").await;
    next_is_marker(&mut cb, "m1").await;

    // Clearing again, or an unknown channel, removes nobody.
    assert_eq!(h2.clear_channel(&room).await.unwrap(), 0);
    assert_eq!(h2.clear_channel(&ch("never-was")).await.unwrap(), 0);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn clearing_a_big_channel_publishes_bounded_membership_changes() {
    use impush_core::{
        envelope::{decode, ClusterCommand},
        Broker, SubscribeMode, Topics,
    };
    let server = start(|_| {}).await;
    let h = server.helper();
    let room = ch("big");
    let n = impush_helper::CLEAR_CHUNK * 2 + 500;
    let members: Vec<_> = (0..n).map(|i| id(&format!("u{i}"))).collect();
    h.join_channel(&room, &members).await.unwrap();
    let mut all = h
        .broker()
        .subscribe(Topics::new("impush").all(), SubscribeMode::Fanout)
        .await
        .unwrap();

    assert_eq!(h.clear_channel(&room).await.unwrap(), n);
    let mut left = Vec::new();
    let mut commands = 0;
    while left.len() < n {
        let d = tokio::time::timeout(support::WAIT, all.next())
            .await
            .expect("the membership changes within the timeout")
            .unwrap()
            .unwrap();
        if let ClusterCommand::Left { channel, clients } =
            decode::<ClusterCommand>("command", &d.ack()).unwrap()
        {
            assert_eq!(channel, room);
            assert!(
                clients.len() <= impush_helper::CLEAR_CHUNK,
                "one command carries {} ids",
                clients.len()
            );
            commands += 1;
            left.extend(clients);
        }
    }
    assert_eq!(commands, 3);
    left.sort();
    let mut want = members.clone();
    want.sort();
    assert_eq!(left, want);
    assert!(h.channel_members(&room).await.unwrap().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn leave_channels_removes_one_client_from_several() {
    let nodes = start_cluster(2, |c| c.history.size = 0).await;
    let h = nodes[0].helper();
    let [a, b] = one_per_node(&h);
    let mut ca = Client::connect(&h, &a, 1).await;
    let mut cb = Client::connect(&h, &b, 1).await;
    let rooms = [ch("r1"), ch("r2"), ch("r3")];
    for r in &rooms {
        h.join_channel(r, &[id(&a), id(&b)]).await.unwrap();
    }

    // `a` (on n1) leaves r1 and r2 (r1 listed twice, plus a channel it never joined), through
    // the helper of n2, which then publishes the checks: `.all` keeps one publisher's order.
    let h2 = nodes[1].helper();
    h2.leave_channels(
        &id(&a),
        &[
            rooms[0].clone(),
            rooms[1].clone(),
            rooms[0].clone(),
            ch("nope"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        h.client_channels(&id(&a)).await.unwrap(),
        vec![rooms[2].clone()]
    );
    assert_eq!(h.client_channels(&id(&b)).await.unwrap(), rooms.to_vec());
    for r in &rooms {
        h2.send_channel_message(&id("sys"), r, &r.as_str())
            .await
            .unwrap();
    }
    broadcast_marker(&h2, "m2").await;
    assert_eq!(ca.next_json().await["data"], "r3");
    next_is_marker(&mut ca, "m2").await;
    for r in &rooms {
        assert_eq!(cb.next_json().await["data"], r.as_str());
    }
    next_is_marker(&mut cb, "m2").await;

    // Nothing to leave is fine.
    h.leave_channels(&id(&b), &[]).await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// The default `[channels] linger`: a client whose last connection closed is still in its
/// channels for a while (a dropped link must not cost it its rooms), and leaves them once the
/// linger is over without it coming back.
#[tokio::test]
async fn memberships_linger_after_a_dropped_link() {
    let server = start(|c| c.channels.linger = Duration::from_millis(1500)).await;
    let h = server.helper();
    let room = ch("linger");
    let a = Client::connect(&h, "alice", 1).await;
    h.join_channel(&room, &[id("alice")]).await.unwrap();
    drop(a);
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    // Back within the linger: still a member, and channel messages reach her.
    assert_eq!(
        h.client_channels(&id("alice")).await.unwrap(),
        vec![room.clone()]
    );
    let mut a = Client::connect(&h, "alice", 1).await;
    h.send_channel_message(&id("bob"), &room, &"back")
        .await
        .unwrap();
    assert_eq!(a.next_json().await["data"], "back");
    // Gone for longer than the linger: the membership ends.
    a.ws.close(None).await.unwrap();
    eventually(|| async { !h.is_online(&id("alice")).await.unwrap().value }).await;
    assert_eq!(
        h.client_channels(&id("alice")).await.unwrap(),
        vec![room.clone()]
    );
    eventually(|| async { h.client_channels(&id("alice")).await.unwrap().is_empty() }).await;
    assert!(h.channel_members(&room).await.unwrap().is_empty());
    server.shutdown().await.unwrap();
}
