//! Node faults: a node killed (and not restarted, or restarted within its lease), frozen past
//! its lease, or silent while queries wait for it (`docs/design.md` section 13).

#![allow(clippy::unwrap_used)] // a case is a test body: a failed step fails the test

use std::time::Duration;

use impush_core::{ChannelName, Event};
use serde_json::json;
use tokio::time::Instant;

use crate::cluster::{
    clients::{
        client_on, connect, connect_when_up, events_during, eventually, next_json, wait_event,
        wait_online,
    },
    harness::{Backend, Cluster, Spec},
    http::get_json,
};

/// A node killed with SIGKILL and not restarted: its clients' offline events (`last` right)
/// arrive within the lease (plus the heartbeat period and slack), from a surviving node, and
/// queries and channels agree.
pub async fn killed_node_drops_its_clients_within_the_lease(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let lease = Duration::from_secs(2);
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "2s").without_linger());
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
        backend.name()
    );
    cluster.assert_running();
}

/// A node killed and restarted within the lease publishes offline events for the connections
/// it lost before it takes new ones, and the store forgets them.
pub async fn restarted_node_announces_the_connections_it_lost(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
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

/// A node frozen (SIGSTOP) for longer than the lease is declared dead: its clients go offline
/// (`last`), once. When it thaws it learns it was forgotten and re-announces its connections
/// (`online`, `first`) and channel memberships, so events and queries agree again.
pub async fn frozen_node_is_declared_dead_then_announces_itself_again(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    let room: ChannelName = "together".parse().unwrap();
    wait_online(&h, &[a.clone(), b.clone()]).await;
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

/// Cluster presence only (the nodes answer queries): a node that stops answering (SIGSTOP)
/// makes channel queries answer partially, naming it, within the query timeout (never a hang),
/// its clients' memberships still known from their other keeper; once its lease runs out its
/// clients go offline and it is no longer waited for.
pub async fn silent_node_gives_partial_answers_then_goes_offline(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let cluster = Cluster::start(backend, &url, &Spec::new(3, "3s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, c) = (client_on(&h, 0, "a"), client_on(&h, 2, "c"));
    let _wa = connect(&h, &a).await;
    let _wc = connect(&h, &c).await;
    let room: ChannelName = "partial".parse().unwrap();
    wait_online(&h, &[a.clone(), c.clone()]).await;
    h.join_channel(&room, &[a.clone(), c.clone()])
        .await
        .unwrap();
    let members = h.channel_members(&room).await.unwrap();
    assert!(members.is_complete(), "{members:?}");
    assert_eq!(members.len(), 2);

    cluster.signal(2, "-STOP");
    // Every answer comes within the query timeout, and one soon names n3. (In a few fresh-clone
    // runs the first answer after the SIGSTOP was complete, n3's reply included: unexplained;
    // every later one named n3.)
    let n3: impush_core::NodeId = "n3".parse().unwrap();
    let stopped = Instant::now();
    let (members, took) = loop {
        let asked = Instant::now();
        let members = h.channel_members(&room).await.unwrap();
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(3), "answered after {took:?}");
        if members.missing == [n3.clone()] {
            break (members, took);
        }
        assert!(
            members.missing.is_empty() && stopped.elapsed() < Duration::from_secs(5),
            "{members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // c's memberships are kept by its home (n3) and the next node in its order too.
    let mut both = vec![a.clone(), c.clone()];
    both.sort();
    assert_eq!(
        members.value, both,
        "n3's member is still known, from its other keeper"
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
