//! The cluster suite (`impush_tests::cluster`) over RabbitMQ alone: real `impush` processes,
//! RabbitMQ as the broker, presence kept by the nodes (`[presence] kind = "cluster"`) and the
//! offline inbox in each node's file: no second piece of infrastructure. The shared broker is
//! `IMPUSH_TEST_RABBITMQ_URL` (`scripts/brokers.sh up`); fault cases start a private RabbitMQ
//! (`scripts/brokers.sh` with a state dir and ports of their own) that they may stop, freeze and
//! restart (its data stays across a restart, as with a real RabbitMQ). Without them the cases
//! print SKIPPED (or fail when `IMPUSH_REQUIRE_BROKERS` is set, as in CI).
//!
//! Besides the shared suite: the broker itself (through the registry, as the server builds it)
//! through a stop and a start, and through a stall longer than its heartbeat.

#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use impush_core::SubscribeMode;
use impush_tests::{
    cluster::{
        brokers::{PrivateBroker, PrivateRabbitMq},
        harness::{Backend, WAIT},
    },
    eventually_within,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/brokers.sh");

/// `[broker]` and `[presence]` for the RabbitMQ at `url`.
fn sections(url: &str) -> String {
    // Persistent messages: the restart cases assert that every message the API accepted
    // arrives, also those waiting in a durable inbox queue across the restart.
    format!(
        "[broker]\nkind = \"rabbitmq\"\nurl = \"{url}\"\npublish_timeout = \"1s\"\n\
         connect_timeout = \"2s\"\nqueue_expires = \"10m\"\npersistent = true\n\
         [presence]\nkind = \"cluster\"\nquery_timeout = \"1s\"\n"
    )
}

fn rabbitmq() -> Backend {
    Backend::new("rabbitmq", env!("CARGO_BIN_EXE_impush"), sections, || {
        impush_tests::env_or_skip("IMPUSH_TEST_RABBITMQ_URL")
    })
    .private(|| PrivateRabbitMq::start(Path::new(SCRIPT)).map(PrivateRabbitMq::boxed))
    // No Redis needed: each node keeps its clients' inboxes in a local file.
    .offline("kind = \"disk\"\npath = \"{dir}/offline-{node}.redb\"")
    // publish_timeout = 1s, plus slack for a loaded CI machine (3 s was passed by 7 ms once).
    .refusal_within(Duration::from_secs(4))
}

impush_tests::cluster_suite!(rabbitmq; private_broker, durable_broker, cluster_presence, broker_proxy, partitions, failover, rolling);

/// The broker itself (through the registry, as the server builds it) across a stop and a
/// start of RabbitMQ: calls fail promptly while it is down; once it is back (with its data)
/// the broker has reconnected by itself, and by the time `ping` succeeds its subscriptions
/// consume again: the fanout one reports the gap (`Lagged`) and gets what is published next,
/// the queue member carries on, and a memberless group's persistent messages are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_resumes_after_rabbitmq_restarts() {
    async fn recv(
        sub: &mut impush_core::Subscription,
    ) -> impush_core::Result<impush_core::Delivery> {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(item)) => item,
            other => panic!("expected an item, got {other:?}"),
        }
    }
    let Some(mut rmq) = PrivateRabbitMq::start(Path::new(SCRIPT)) else {
        return;
    };
    let section = impush_brokers::Section::new("rabbitmq")
        .set("url", rmq.url())
        .unwrap()
        .set("publish_timeout", "1s")
        .unwrap()
        .set("persistent", true)
        .unwrap();
    let ctx = impush_brokers::BackendContext::new(&section);
    let b = impush_brokers::Backends::with_defaults()
        .connect_broker(&section, &ctx)
        .await
        .unwrap();
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let group = |g: &str| SubscribeMode::Queue {
        group: format!("{ns}-{g}"),
    };
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = b.subscribe(&topic, group("live")).await.unwrap();
    drop(b.subscribe(&topic, group("idle")).await.unwrap()); // memberless from now on
    for m in ["before-1", "before-2"] {
        b.publish(&topic, m.into()).await.unwrap();
    }
    for m in ["before-1", "before-2"] {
        assert_eq!(recv(&mut fan).await.unwrap().payload(), m);
        assert_eq!(recv(&mut member).await.unwrap().ack(), m);
    }

    tokio::task::block_in_place(|| rmq.stop());
    for _ in 0..3 {
        let t = Instant::now();
        let ping = b.ping().await;
        assert!(ping.as_ref().is_err_and(|e| e.is_transient()), "{ping:?}");
        let publish = b.publish(&topic, "lost".into()).await;
        assert!(
            publish.as_ref().is_err_and(|e| e.is_transient()),
            "{publish:?}"
        );
        let sub = b.subscribe(&topic, group("late")).await;
        assert!(
            sub.as_ref().is_err_and(|e| e.is_transient()),
            "subscribe while down"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "calls took {:?}",
            t.elapsed()
        );
    }

    tokio::task::block_in_place(|| rmq.start());
    // The fanout subscriber is told about the gap as soon as its consumer is back, and may
    // publish at once (cluster presence asks every node for its state then): the broker is
    // connected again before any subscriber hears of it.
    let gap = match tokio::time::timeout(Duration::from_secs(20), fan.next()).await {
        Ok(Some(item)) => item,
        other => panic!("expected the gap, got {other:?}"),
    };
    assert!(
        matches!(gap, Err(impush_core::Error::Lagged { .. })),
        "the fanout subscriber is told about the gap first: {gap:?}"
    );
    let publish = b.publish(&topic, "after".into()).await;
    assert!(publish.is_ok(), "publish as the gap is told: {publish:?}");
    b.ping().await.unwrap();
    assert_eq!(recv(&mut fan).await.unwrap().payload(), "after");
    assert_eq!(recv(&mut member).await.unwrap().ack(), "after");
    let mut idle = b.subscribe(&topic, group("idle")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv(&mut idle).await.unwrap().ack());
    }
    got.sort();
    assert_eq!(
        got,
        ["after", "before-1", "before-2"],
        "persistent, durable"
    );
    b.shutdown().await.unwrap();
    let ended = tokio::time::timeout(WAIT, fan.next()).await.unwrap();
    assert!(ended.is_none(), "shutdown ends subscriptions: {ended:?}");
}

/// A RabbitMQ that stops answering (SIGSTOP) for longer than two heartbeats: the broker drops
/// the silent connection (calls fail promptly meanwhile), connects again once RabbitMQ thaws,
/// and the subscriptions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_recovers_from_a_stall_longer_than_the_heartbeat() {
    async fn next(
        sub: &mut impush_core::Subscription,
    ) -> Option<impush_core::Result<impush_core::Delivery>> {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("an item in time")
    }
    let Some(mut rmq) = PrivateRabbitMq::start(Path::new(SCRIPT)) else {
        return;
    };
    let section = impush_brokers::Section::new("rabbitmq")
        .set("url", rmq.url())
        .unwrap()
        .set("publish_timeout", "1s")
        .unwrap()
        .set("connect_timeout", "1s")
        .unwrap()
        .set("heartbeat", "1s")
        .unwrap();
    let ctx = impush_brokers::BackendContext::new(&section);
    let b = impush_brokers::Backends::with_defaults()
        .connect_broker(&section, &ctx)
        .await
        .unwrap();
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.all");
    let group = SubscribeMode::Queue {
        group: format!("{ns}-n1"),
    };
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = b.subscribe(&topic, group).await.unwrap();

    rmq.stall();
    // Silent for more than two heartbeats: lapin gives the connection up, and the broker says
    // so promptly.
    eventually_within(
        "ping fails while frozen",
        Duration::from_secs(10),
        || async {
            let t = Instant::now();
            let failed = b.ping().await.is_err();
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "ping took {:?}",
                t.elapsed()
            );
            failed
        },
    )
    .await;
    let t = Instant::now();
    assert!(b.publish(&topic, "frozen".into()).await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "publish took {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault itself: frozen a while longer
    rmq.resume();

    eventually_within("ping after the thaw", Duration::from_secs(20), || async {
        b.ping().await.is_ok()
    })
    .await;
    b.publish(&topic, "thawed".into()).await.unwrap();
    // The fanout subscriber hears of the gap, then gets what comes next.
    let mut got = Vec::new();
    while got.last().map(Vec::as_slice) != Some(b"thawed".as_slice()) {
        match next(&mut fan).await {
            Some(Ok(d)) => got.push(d.payload().to_vec()),
            Some(Err(e)) => assert!(matches!(e, impush_core::Error::Lagged { .. }), "{e:?}"),
            None => panic!("the fanout subscription ended"),
        }
    }
    // The queue member gets it too (and maybe "frozen", if RabbitMQ had taken it in).
    loop {
        let d = next(&mut member).await.expect("open").expect("a delivery");
        if d.ack() == "thawed" {
            break;
        }
    }
    b.shutdown().await.unwrap();
}
