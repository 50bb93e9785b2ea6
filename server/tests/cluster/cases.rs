//! The multi-process cluster cases, written once against a [`Backend`]: what the business sees
//! from events and queries must match the sockets that exist, and an accepted message must not
//! be lost, under the faults of DESIGN section 13.

use std::{collections::HashSet, time::Duration};

use futures_util::SinkExt;
use impush_core::{ChannelName, ClientId, Event};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::harness::*;

fn shared(backend: &Backend) -> Option<String> {
    (backend.shared_url)()
}

/// Cross-node delivery with receipts and an ack, a channel on every node, broadcast, the HTTP
/// API of any node, a kick across nodes, and events seen by a helper in another process.
pub async fn cross_node_delivery_channels_kick_and_events(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    let cluster = Cluster::start(backend, &url, &Spec::new(3, "10s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let cs: Vec<ClientId> = (0..3).map(|i| client_on(&h, i, "u")).collect();
    let mut ws = Vec::new();
    for c in &cs {
        ws.push(connect(&h, c).await);
        let c2 = c.clone();
        wait_event(
            &mut events,
            move |e| matches!(e, Event::Online { client, first: true, .. } if *client == c2),
        )
        .await;
    }
    eventually("all online", || async {
        h.online_clients().await.unwrap().len() == 3
    })
    .await;

    // Point to point across nodes, with receipts and an ack.
    let r = h
        .send_message(&cs[0], &cs[1..], &json!({"hi": 1}), true)
        .await
        .unwrap();
    assert_eq!(r.nodes, 2);
    for w in &mut ws[1..] {
        let f = next_json(w).await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str()),
            (Some("message"), Some(r.id.as_str()))
        );
        assert_eq!(f["data"], json!({"hi": 1}));
    }
    // The receivers are on two nodes: each node settles its own and sends one receipt frame.
    let mut st = vec![next_json(&mut ws[0]).await, next_json(&mut ws[0]).await];
    st.sort_by_key(|v| v["to"][0].as_str().unwrap().to_owned());
    assert!(st.iter().all(|v| v["status"] == "delivered"), "{st:?}");
    let mut want = vec![json!([cs[1].as_str()]), json!([cs[2].as_str()])];
    want.sort_by_key(|v| v[0].as_str().unwrap().to_owned());
    assert_eq!(vec![st[0]["to"].clone(), st[1]["to"].clone()], want);
    ws[2]
        .send(Message::Text(
            json!({"type":"ack","id": r.id.as_str()}).to_string().into(),
        ))
        .await
        .unwrap();
    let acked = next_json(&mut ws[0]).await;
    assert_eq!(
        (acked["status"].as_str(), &acked["to"]),
        (Some("acked"), &json!([cs[2].as_str()]))
    );

    // A channel with members on all nodes; broadcast.
    let room: ChannelName = "everywhere".parse().unwrap();
    h.join_channel(&room, &cs).await.unwrap();
    assert_eq!(h.channel_online(&room).await.unwrap(), 3);
    h.send_channel_message(&cs[1], &room, &"to the room")
        .await
        .unwrap();
    for w in &mut ws {
        assert_eq!(next_json(w).await["data"], "to the room");
    }
    h.broadcast(&"to all").await.unwrap();
    for w in &mut ws {
        assert_eq!(next_json(w).await["type"], "broadcast");
    }

    // Any node's HTTP API sees the whole cluster.
    let online: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/clients/online", cluster.http(1)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(online["clients"].as_array().unwrap().len(), 3, "{online}");
    assert!(online.get("partial").is_none(), "{online}");

    // Kick a client of node 3 from this process.
    assert_eq!(h.force_offline(&cs[2]).await.unwrap(), 1);
    assert_eq!(close_code(&mut ws[2]).await, 4001);
    let c2 = cs[2].clone();
    wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, last: true, .. } if *client == c2),
    )
    .await;
    // Queries follow the events (immediately with a store, within milliseconds with cluster
    // presence, whose view is fed by its own topic).
    eventually("queries agree with the kick", || async {
        !h.is_online(&cs[2]).await.unwrap().value
            && h.channel_members(&room).await.unwrap().len() == 2
    })
    .await;
}

/// A node killed with SIGKILL and not restarted: its clients' offline events (`last` right)
/// arrive within the lease (plus the heartbeat period and slack), from a surviving node, and
/// queries and channels agree.
pub async fn killed_node_drops_its_clients_within_the_lease(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    let lease = Duration::from_secs(2);
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let _wb1 = connect(&h, &b).await;
    let _wb2 = connect(&h, &b).await;
    eventually("both online", || async {
        h.connections(&b).await.unwrap() == 2 && h.is_online(&a).await.unwrap().value
    })
    .await;
    let room: ChannelName = "lobby".parse().unwrap();
    h.join_channel(&room, &[a.clone(), b.clone()])
        .await
        .unwrap();

    let killed = Instant::now();
    cluster.kill9(1);
    let mut lasts = Vec::new();
    for _ in 0..2 {
        let b2 = b.clone();
        let ev = wait_event(
            &mut events,
            move |e| matches!(e, Event::Offline { client, .. } if *client == b2),
        )
        .await;
        let Event::Offline { node, last, .. } = ev else {
            unreachable!()
        };
        assert_eq!(node.as_str(), "n2");
        lasts.push(last);
    }
    let took = killed.elapsed();
    lasts.sort();
    assert_eq!(
        lasts,
        vec![false, true],
        "exactly the last connection says last"
    );
    assert!(
        took < lease + Duration::from_secs(3),
        "offline after {took:?} with a lease of {lease:?}"
    );
    eventually("queries agree with the events", || async {
        !h.is_online(&b).await.unwrap().value
            && h.is_online(&a).await.unwrap().value
            && h.channel_members(&room).await.unwrap() == vec![a.clone()]
    })
    .await;
    // Nobody else publishes them again.
    let again = events_during(&mut events, Duration::from_secs(2)).await;
    assert!(
        !again.iter().any(|e| e.client() == &b),
        "offline published twice: {again:?}"
    );
    eprintln!(
        "[{}] offline events after {took:?} (lease {lease:?})",
        backend.name
    );
    cluster.assert_running();
}

/// A node killed and restarted within the lease publishes offline events for the connections
/// it lost before it takes new ones, and the store forgets them.
pub async fn restarted_node_announces_the_connections_it_lost(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    let lease = Duration::from_secs(10);
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "10s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let b = client_on(&h, 1, "b");
    let _old = connect(&h, &b).await;
    eventually("b online", || async {
        h.is_online(&b).await.unwrap().value
    })
    .await;

    let killed = Instant::now();
    cluster.kill9(1);
    cluster.restart(1);
    let b2 = b.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, .. } if *client == b2),
    )
    .await;
    let took = killed.elapsed();
    assert!(
        matches!(ev, Event::Offline { last: true, ref node, .. } if node.as_str() == "n2"),
        "{ev:?}"
    );
    // Well before the lease: the restarted node said so, not a reaper.
    assert!(took < lease, "offline after {took:?}, lease {lease:?}");
    eventually("b offline in queries", || async {
        !h.is_online(&b).await.unwrap().value
    })
    .await;

    let _new = connect_when_up(&h, &b).await;
    let b3 = b.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Online { client, .. } if *client == b3),
    )
    .await;
    assert!(matches!(ev, Event::Online { first: true, .. }), "{ev:?}");
    eventually("b online once", || async {
        h.connections(&b).await.unwrap() == 1
    })
    .await;
    cluster.assert_running();
}

/// The broker stalls (SIGSTOP) for longer than the lease while node 2 is frozen too and
/// thaws a second after the broker: node 1 comes back first and finds node 2's lease long
/// expired, but that is stale data (node 1 could not see anything either), so it waits a lease
/// of its own before judging; node 2 renews meanwhile and nobody is declared dead. Queries
/// and delivery agree with the sockets afterwards.
pub async fn stalled_broker_declares_nobody_dead(backend: &Backend) {
    let Some(mut broker) = (backend.private)() else {
        return;
    };
    let mut cluster = Cluster::start(backend, &broker.url(), &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;

    cluster.signal(1, "-STOP");
    broker.stall();
    tokio::time::sleep(Duration::from_secs(5)).await; // the fault itself: 2.5 leases
    broker.resume();
    tokio::time::sleep(Duration::from_secs(1)).await; // node 2 thaws after the broker
    cluster.signal(1, "-CONT");

    // Two leases after the thaw: any wrong verdict would have been published by now.
    let seen = events_during(&mut events, Duration::from_secs(4)).await;
    let wrong: Vec<&Event> = seen
        .iter()
        .filter(|e| matches!(e, Event::Offline { .. }))
        .collect();
    assert!(wrong.is_empty(), "offline for live clients: {wrong:?}");
    eventually("queries agree after the stall", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;
    eventually("delivery works after the stall", || async {
        h.send_message(&a, std::slice::from_ref(&b), &"after the stall", false)
            .await
            .is_ok()
    })
    .await;
    assert_eq!(next_json(&mut wb).await["data"], "after the stall");
    cluster.assert_running();
    drop(cluster); // the nodes go before their broker
}

/// A node frozen (SIGSTOP) for longer than the lease is declared dead: its clients go offline
/// (`last`), once. When it thaws it learns it was forgotten and re-announces its connections
/// (`online`, `first`) and channel memberships, so events and queries agree again.
pub async fn frozen_node_is_declared_dead_then_announces_itself_again(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    let room: ChannelName = "together".parse().unwrap();
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;
    h.join_channel(&room, &[a.clone(), b.clone()])
        .await
        .unwrap();
    // Node 2 must have applied the join before it freezes, or the thaw has nothing to restore.
    h.send_channel_message(&a, &room, &"before").await.unwrap();
    assert_eq!(next_json(&mut wb).await["data"], "before");

    cluster.signal(1, "-STOP");
    let b2 = b.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, .. } if *client == b2),
    )
    .await;
    assert!(matches!(ev, Event::Offline { last: true, .. }), "{ev:?}");
    eventually("b offline in queries", || async {
        !h.is_online(&b).await.unwrap().value
    })
    .await;
    cluster.signal(1, "-CONT");

    let b3 = b.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Online { client, .. } if *client == b3),
    )
    .await;
    assert!(
        matches!(ev, Event::Online { first: true, ref node, .. } if node.as_str() == "n2"),
        "{ev:?}"
    );
    eventually("b online again, in its channel", || async {
        h.is_online(&b).await.is_ok_and(|o| o.value)
            && h.channel_members(&room).await.is_ok_and(|m| m.len() == 2)
    })
    .await;
    // Its socket survived, and channel delivery reaches it again.
    h.send_channel_message(&a, &room, &"welcome back")
        .await
        .unwrap();
    assert_eq!(next_json(&mut wb).await["data"], "welcome back");
    cluster.assert_running();
}

/// A connect and a disconnect whose presence writes fail (the broker/store is frozen) are
/// reconciled once it answers again: no ghost online, nobody connected missing.
pub async fn failed_presence_writes_are_reconciled(backend: &Backend) {
    let Some(mut broker) = (backend.private)() else {
        return;
    };
    let mut cluster = Cluster::start(backend, &broker.url(), &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let (gone, arriving) = (client_on(&h, 0, "gone"), client_on(&h, 0, "arriving"));
    let mut w_gone = connect(&h, &gone).await;
    eventually("gone online", || async {
        h.is_online(&gone).await.is_ok_and(|a| a.value)
    })
    .await;

    broker.stall();
    // Both connection changes happen while the store cannot hear them.
    let _w_arriving = connect(&h, &arriving).await;
    w_gone.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // the writes time out meanwhile
    broker.resume();

    eventually_within(
        "store matches the sockets",
        Duration::from_secs(10),
        || async {
            h.is_online_many(&[gone.clone(), arriving.clone()])
                .await
                .is_ok_and(|v| v == vec![false, true])
        },
    )
    .await;
    assert_eq!(h.connections(&arriving).await.unwrap(), 1);
    cluster.assert_running();
    drop(cluster);
}

/// The broker restarts (and loses its data, like Redis without persistence): no node exits,
/// no socket closes, /readyz says 503 meanwhile and 200 after, presence and channels are
/// registered again and delivery resumes.
pub async fn broker_restart_keeps_sockets_and_delivery_resumes(backend: &Backend) {
    let Some(mut broker) = (backend.private)() else {
        return;
    };
    let mut cluster = Cluster::start(backend, &broker.url(), &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let mut wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;
    let room: ChannelName = "survivors".parse().unwrap();
    h.join_channel(&room, &[a.clone(), b.clone()])
        .await
        .unwrap();

    broker.stop();
    for i in 0..2 {
        let ready = cluster.http(i) + "/readyz";
        eventually("readyz says 503", || {
            let r = ready.clone();
            async move { status(r, None).await == 503 }
        })
        .await;
    }
    let send = cluster.http(0) + "/api/v1/messages";
    let (s, _) = post(
        send.clone(),
        json!({"from": a.as_str(), "to": [b.as_str()], "data": 1}),
    )
    .await;
    assert_eq!(s, 503, "send while the broker is down");

    broker.start();
    for i in 0..2 {
        let ready = cluster.http(i) + "/readyz";
        eventually("readyz back to 200", || {
            let r = ready.clone();
            async move { status(r, None).await == 200 }
        })
        .await;
    }
    cluster.assert_running();
    eventually("presence registered again", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;
    eventually("channel registered again", || async {
        h.channel_members(&room).await.is_ok_and(|m| m.len() == 2)
    })
    .await;
    // The sockets were never closed; delivery works again across nodes and on the channel.
    // A send that failed may still have been published: each attempt is its own message.
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    eventually("message accepted after the restart", || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        h.send_message(&a, std::slice::from_ref(&b), &format!("after-{n}"), false)
            .await
            .is_ok()
    })
    .await;
    let is_retry = |f: &Value| f["data"].as_str().is_some_and(|d| d.starts_with("after-"));
    assert!(
        is_retry(&next_json(&mut wb).await),
        "delivery after the restart"
    );
    h.send_channel_message(&b, &room, &"room after")
        .await
        .unwrap();
    assert_eq!(next_json(&mut wa).await["data"], "room after");
    let mut f = next_json(&mut wb).await;
    while is_retry(&f) {
        f = next_json(&mut wb).await;
    }
    assert_eq!(f["data"], "room after");
    drop(cluster);
}

/// A flood of messages with receipts while the receiver's node is killed and restarted: every
/// message the API accepted (HTTP 200) ends with a receipt to the sender or in the
/// receiver's hands, and no socket sees an id twice.
pub async fn flood_with_receipts_survives_a_receiver_node_kill(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    const N: usize = 300;
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "3s"));
    let h = cluster.helper().await;
    let (s, r) = (client_on(&h, 0, "sender"), client_on(&h, 1, "receiver"));
    let mut ws_s = connect(&h, &s).await;
    let ws_r = connect(&h, &r).await;
    eventually("both online", || async {
        h.is_online_many(&[s.clone(), r.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;

    // The receiver's first socket: read until it dies with its node.
    let first_socket = tokio::spawn(read_ids(ws_r));
    let accepted = flood_through_a_restart(&mut cluster, &s, &r, N, true).await;
    assert!(accepted.len() > N / 2, "most sends were accepted");
    let ws_r2 = connect_when_up(&h, &r).await;
    let second_socket = tokio::spawn(read_ids(ws_r2));

    // Receipts at the sender, until every accepted id is accounted for.
    let accepted_set: HashSet<String> = accepted.iter().cloned().collect();
    let mut receipted = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !accepted_set.is_subset(&receipted) {
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted messages never got a receipt",
            accepted_set.difference(&receipted).count(),
            accepted.len()
        );
        if let Some(f) = next_json_within(&mut ws_s, Duration::from_millis(500)).await {
            if f["type"] == "receipt" && f["status"] != "acked" {
                receipted.insert(f["id"].as_str().unwrap().to_owned());
            }
        }
    }
    cluster.kill9(1); // ends the second socket's reader
    let first = first_socket.await.unwrap();
    let second = second_socket.await.unwrap();
    for (name, ids) in [("first", &first), ("second", &second)] {
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{name} socket saw an id twice");
    }
    eprintln!(
        "[{}] {} accepted, {} receipted; receiver got {} before the kill, {} after",
        backend.name,
        accepted.len(),
        receipted.len(),
        first.len(),
        second.len()
    );
}

/// Sends `n` messages from `s` to `r` through node 1's HTTP API, killing `r`'s node (node 2)
/// with SIGKILL a third of the way and restarting it half way; returns the ids the API
/// accepted (HTTP 200).
async fn flood_through_a_restart(
    cluster: &mut Cluster,
    s: &ClientId,
    r: &ClientId,
    n: usize,
    receipt: bool,
) -> Vec<String> {
    let send = cluster.http(0) + "/api/v1/messages";
    let mut accepted = Vec::new();
    for i in 0..n {
        if i == n / 3 {
            cluster.kill9(1);
        }
        if i == n / 2 {
            cluster.restart(1);
        }
        let (status, body) = post(
            send.clone(),
            json!({"from": s.as_str(), "to": [r.as_str()], "data": i, "receipt": receipt}),
        )
        .await;
        if status == 200 {
            accepted.push(body["id"].as_str().unwrap().to_owned());
        }
    }
    accepted
}

/// The message ids a socket receives until it closes or goes quiet for long.
async fn read_ids(mut ws: Ws) -> Vec<String> {
    use futures_util::StreamExt;
    let mut ids = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "message" {
                ids.push(v["id"].as_str().unwrap().to_owned());
            }
        }
    }
    ids
}

/// Cluster presence only (the nodes answer queries): a node that stops answering (SIGSTOP)
/// makes channel queries answer partially, naming it, within the query timeout (never a hang);
/// once its lease runs out its clients go offline and it is no longer waited for.
pub async fn silent_node_gives_partial_answers_then_goes_offline(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    let cluster = Cluster::start(backend, &url, &Spec::new(3, "3s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, c) = (client_on(&h, 0, "a"), client_on(&h, 2, "c"));
    let _wa = connect(&h, &a).await;
    let _wc = connect(&h, &c).await;
    let room: ChannelName = "partial".parse().unwrap();
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), c.clone()])
            .await
            .is_ok_and(|v| v.value == vec![true, true])
    })
    .await;
    h.join_channel(&room, &[a.clone(), c.clone()])
        .await
        .unwrap();
    let members = h.channel_members(&room).await.unwrap();
    assert!(members.is_complete(), "{members:?}");
    assert_eq!(members.len(), 2);

    cluster.signal(2, "-STOP");
    let asked = Instant::now();
    let members = h.channel_members(&room).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(
        members.missing,
        vec!["n3".parse::<impush_core::NodeId>().unwrap()],
        "{members:?}"
    );
    assert_eq!(
        members.value,
        vec![a.clone()],
        "n3's member is unknown meanwhile"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The HTTP API says the same.
    let (status, body) = get_json(format!("{}/api/v1/channels/partial", cluster.http(0))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["partial"], json!(["n3"]), "{body}");

    let c2 = c.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, .. } if *client == c2),
    )
    .await;
    assert!(matches!(ev, Event::Offline { last: true, .. }), "{ev:?}");
    // Known dead now: not waited for, still named.
    let asked = Instant::now();
    let members = h.channel_members(&room).await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(members.missing.len(), 1);
    cluster.signal(2, "-CONT");
}

/// A GET with the API key.
async fn get_json(url: String) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("an answer, not a hang");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// With the offline inbox on, a flood to a receiver whose node is killed (kill -9) and
/// restarted mid-stream: every message the API accepted reaches the receiver (on the socket
/// before the kill, or stored and pushed to the socket after), and no socket sees an id twice.
pub async fn flood_with_inbox_reaches_the_receiver_despite_a_node_kill(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    const N: usize = 300;
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "3s").with_offline());
    let h = cluster.helper().await;
    let (s, r) = (client_on(&h, 0, "sender"), client_on(&h, 1, "receiver"));
    let ws_r = connect(&h, &r).await;
    eventually("receiver online", || async {
        h.is_online(&r).await.is_ok_and(|o| o.value)
    })
    .await;
    let first_socket = tokio::spawn(read_ids(ws_r));
    let accepted: HashSet<String> = flood_through_a_restart(&mut cluster, &s, &r, N, false)
        .await
        .into_iter()
        .collect();
    assert!(accepted.len() > N / 2, "most sends were accepted");
    let first = first_socket.await.unwrap();

    let mut ws_r2 = connect_when_up(&h, &r).await;
    let mut second = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: HashSet<&String> = first.iter().chain(second.iter()).collect();
        let missing = accepted.iter().filter(|id| !seen.contains(id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted messages never reached the receiver",
            accepted.len()
        );
        if let Some(f) = next_json_within(&mut ws_r2, Duration::from_millis(500)).await {
            if f["type"] == "message" {
                let id = f["id"].as_str().unwrap().to_owned();
                ws_r2
                    .send(Message::Text(
                        json!({"type": "ack", "id": id}).to_string().into(),
                    ))
                    .await
                    .unwrap();
                second.push(id);
            }
        }
    }
    for (name, ids) in [("first", &first), ("second", &second)] {
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{name} socket saw an id twice");
    }
    eprintln!(
        "[{}] {} accepted; receiver got {} before the kill, {} after (stored or redelivered)",
        backend.name,
        accepted.len(),
        first.len(),
        second.len()
    );
    cluster.assert_running();
}

/// Brokers whose node inboxes are durable (a RabbitMQ queue, a Kafka group with committed
/// offsets): what is published to a node's inbox while the node is down (killed) waits, and
/// the node handles it when it is back (its receiver is gone, so each message ends
/// in an `offline` receipt to the sender: the node read it). Then live delivery resumes.
pub async fn inbox_waits_for_its_node_across_a_kill_and_restart(backend: &Backend) {
    let Some(url) = shared(backend) else { return };
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "10s"));
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let mut wa = connect(&h, &a).await;
    let _wb = connect(&h, &b).await;
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;

    cluster.kill9(1);
    let ids = send_n(&cluster, 0, &a, &b, 20).await;
    // Nobody reads n2's inbox meanwhile.
    assert!(
        next_json_within(&mut wa, Duration::from_millis(500))
            .await
            .is_none(),
        "a receipt while the receiver's node is down"
    );
    cluster.restart(1);
    let statuses = receipts_for(&mut wa, &ids).await;
    assert!(statuses.iter().all(|s| s == "offline"), "{statuses:?}");

    let mut wb = connect_when_up(&h, &b).await;
    eventually("b online again", || async {
        h.is_online(&b).await.is_ok_and(|o| o.value)
    })
    .await;
    h.send_message(&a, std::slice::from_ref(&b), &"live again", false)
        .await
        .unwrap();
    assert_eq!(next_json(&mut wb).await["data"], "live again");
    cluster.assert_running();
}
