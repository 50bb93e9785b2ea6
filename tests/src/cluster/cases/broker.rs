//! Broker faults, on a private broker instance: stalled past the lease, frozen while presence
//! writes happen, stopped and started again with and without traffic.

#![allow(clippy::unwrap_used)] // a case is a test body: a failed step fails the test

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use impush_core::{ChannelName, Event};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{
    cluster::{
        clients::{
            client_on, connect, events_during, eventually, next_json, read_data, wait_online,
        },
        harness::{Backend, Cluster, Spec, WAIT},
        http::{post, status, Sender},
    },
    support::eventually_within,
};

/// The broker stalls (SIGSTOP) for longer than the lease while node 2 is frozen too and
/// thaws a second after the broker: node 1 comes back first and finds node 2's lease long
/// expired, but that is stale data (node 1 could not see anything either), so it waits a lease
/// of its own before judging; node 2 renews meanwhile and nobody is declared dead. Queries
/// and delivery agree with the sockets afterwards.
pub async fn stalled_broker_declares_nobody_dead(backend: &Backend) {
    let Some(mut broker) = backend.start_private() else {
        return;
    };
    let mut cluster = Cluster::start(backend, &broker.url(), &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    wait_online(&h, &[a.clone(), b.clone()]).await;

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

/// A connect and a disconnect whose presence writes fail (the broker/store is frozen) are
/// reconciled once it answers again: no ghost online, nobody connected missing.
pub async fn failed_presence_writes_are_reconciled(backend: &Backend) {
    let Some(mut broker) = backend.start_private() else {
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
    let Some(mut broker) = backend.start_private() else {
        return;
    };
    let mut cluster = Cluster::start(backend, &broker.url(), &Spec::new(2, "2s"));
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let mut wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    wait_online(&h, &[a.clone(), b.clone()]).await;
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
    wait_online(&h, &[a.clone(), b.clone()]).await; // presence registered again
    eventually("channel registered again", || async {
        h.channel_members(&room).await.is_ok_and(|m| m.len() == 2)
    })
    .await;
    // The sockets were never closed; delivery works again across nodes and on the channel.
    // A send that failed may still have been published: each attempt is its own message, and
    // the one refused while the broker was down may arrive now (a broker client may keep what
    // it could not send while disconnected, as NATS's does).
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    eventually("message accepted after the restart", || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        h.send_message(&a, std::slice::from_ref(&b), &format!("after-{n}"), false)
            .await
            .is_ok()
    })
    .await;
    let refused = |f: &Value| f["data"] == 1;
    let is_retry = |f: &Value| f["data"].as_str().is_some_and(|d| d.starts_with("after-"));
    let mut f = next_json(&mut wb).await;
    while refused(&f) {
        f = next_json(&mut wb).await;
    }
    assert!(is_retry(&f), "delivery after the restart: {f}");
    h.send_channel_message(&b, &room, &"room after")
        .await
        .unwrap();
    assert_eq!(next_json(&mut wa).await["data"], "room after");
    let mut f = next_json(&mut wb).await;
    while is_retry(&f) || refused(&f) {
        f = next_json(&mut wb).await;
    }
    assert_eq!(f["data"], "room after");
    drop(cluster);
}

/// Traffic through a broker restart: sends keep coming while the broker stops, are refused
/// promptly with 503 while it is down (never a hang), no node exits and no socket closes; once
/// it is back every node is ready again and sends are accepted, and every accepted send
/// reaches the receiver exactly once: those accepted after the restart, and with a broker that
/// keeps its data (durable queues, persistent messages) every one accepted before it too.
pub async fn traffic_through_a_broker_restart(backend: &Backend) {
    let Some(broker) = backend.start_private() else {
        return;
    };
    let keeps_data = broker.keeps_data();
    let mut cluster = Cluster::start(backend, &broker.url(), &Spec::new(2, "5s"));
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let wb = connect(&h, &b).await;
    wait_online(&h, &[a.clone(), b.clone()]).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn(read_data(wb, seen.clone()));
    let arrived = |want: &[u64]| {
        let got: HashSet<u64> = seen.lock().unwrap().iter().map(|(_, d)| *d).collect();
        want.iter().all(|i| got.contains(i))
    };

    let mut sender = Sender::new(&cluster, 0, &a, &b);
    let mut before = Vec::new();
    for _ in 0..20 {
        assert_eq!(sender.send(&mut before).await.0, 200);
    }
    eventually_within("the first sends arrive", Duration::from_secs(20), || {
        let ok = arrived(&before);
        async move { ok }
    })
    .await;

    // Stop it in the background and keep sending meanwhile.
    let stopping = std::thread::spawn(move || {
        let mut broker = broker;
        broker.stop();
        broker
    });
    let (mut refused, mut slowest) = (0, Duration::ZERO);
    let deadline = Instant::now() + WAIT;
    while refused < 5 {
        assert!(
            Instant::now() < deadline,
            "no send refused while the broker stopped"
        );
        let (status, took) = sender.send(&mut before).await;
        match status {
            200 => {}
            503 => refused += 1,
            other => panic!("send answered {other}"),
        }
        slowest = slowest.max(took);
    }
    let mut broker = tokio::task::block_in_place(|| stopping.join().unwrap());
    for _ in 0..5 {
        let (status, took) = sender.send(&mut Vec::new()).await;
        assert_eq!(status, 503, "send while the broker is down");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < backend.refusal_bound(),
        "a send took {slowest:?} while the broker was going down"
    );

    tokio::task::block_in_place(|| broker.start());
    for i in 0..2 {
        let ready = cluster.http(i) + "/readyz";
        eventually_within("readyz back to 200", Duration::from_secs(30), || {
            let r = ready.clone();
            async move { status(r, None).await == 200 }
        })
        .await;
    }
    cluster.assert_running();
    // Ready, and sends are accepted again (at once where the broker's client is connected by
    // the time the node says it is ready; Kafka's producer may take a moment longer).
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sender.send(&mut after).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "no send accepted after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(
            sender.send(&mut after).await.0,
            200,
            "send after the restart"
        );
    }
    let must: Vec<u64> = if keeps_data {
        before.iter().chain(&after).copied().collect()
    } else {
        after.clone()
    };
    eventually_within(
        "every accepted message arrives",
        Duration::from_secs(30),
        || {
            let ok = arrived(&must);
            async move { ok }
        },
    )
    .await;
    assert!(!reader.is_finished(), "the receiver's socket closed");
    reader.abort();
    let seen = seen.lock().unwrap().clone();
    let ids: HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), seen.len(), "a message was delivered twice");
    cluster.assert_running();
    eprintln!(
        "[{}] {} sends accepted before the restart, {} after, {refused} refused while stopping \
         (slowest {slowest:?}); {} delivered",
        backend.name(),
        before.len(),
        after.len(),
        seen.len()
    );
    drop(cluster); // the nodes go before their broker
    drop(broker);
}
