//! What the conformance suite cannot see: a slow fanout subscriber is told what it lost, a
//! queue member that leaves (or a broker that shuts down) gives back what it held, the broker
//! survives a NATS server restart (fanout reports the gap, queue groups keep their messages),
//! and configuration and connection errors say what is wrong without leaking the password. The shared server is `IMPUSH_TEST_NATS_URL`; the restart case runs a private
//! `nats-server` (Debian's package, `scripts/brokers.sh install nats`).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use impush_brokers::{BackendContext, Backends, Section};
use impush_core::{Broker, Error, SubscribeMode, Subscription};
use impush_example_nats::{NatsBroker, NatsConfig};
use impush_tests::cluster::brokers::PrivateBroker;

const WAIT: Duration = Duration::from_secs(15);

async fn next(sub: &mut Subscription, what: &str) -> impush_core::Result<bytes::Bytes> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(item)) => item.map(|d| d.ack()),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: nothing within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fanout_subscriber_is_told_what_it_lost() {
    const N: usize = 300;
    const BUFFER: usize = 10;
    let Some(url) = impush_tests::env_or_skip("IMPUSH_TEST_NATS_URL") else {
        return;
    };
    let cfg = NatsConfig {
        fanout_buffer: BUFFER,
        ..shared_cfg(url)
    };
    let broker = NatsBroker::connect(&cfg).await.unwrap();
    let topic = format!("{}.slow", impush_tests::unique_ns());
    let mut sub = broker
        .subscribe(&topic, SubscribeMode::Fanout)
        .await
        .unwrap();
    // Nobody reads while N messages are published: the first BUFFER fit, most of the rest are
    // lost.
    for i in 0..N {
        broker.publish(&topic, format!("{i}").into()).await.unwrap();
    }
    // Everything read is in order, and what is missing is reported once, exactly, where it is
    // missing: never silent.
    let mut expected = 0;
    let mut lags = Vec::new();
    while expected < N {
        match next(&mut sub, "slow subscriber").await {
            Ok(p) => {
                let i: usize = std::str::from_utf8(&p).unwrap().parse().unwrap();
                assert_eq!(i, expected, "out of order, or lost without a report");
                expected += 1;
            }
            Err(Error::Lagged { dropped }) => {
                lags.push(dropped);
                expected += usize::try_from(dropped).unwrap();
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(expected, N, "every message was received or reported lost");
    // Publishing returns before the server has delivered everything, so the reader may start
    // while messages still arrive: the loss can come in more than one report, each in place.
    let lost: u64 = lags.iter().sum();
    assert!(!lags.is_empty() && lost > 0, "{lags:?}");
    assert!(
        N - lost as usize >= BUFFER,
        "the buffer's worth was kept: {lags:?}"
    );
    broker.publish(&topic, "after".into()).await.unwrap();
    assert_eq!(next(&mut sub, "after the loss").await.unwrap(), "after");
    broker.shutdown().await.unwrap();
}

fn shared_cfg(url: String) -> NatsConfig {
    NatsConfig {
        stream_max_bytes: 16 << 20,
        stream_max_age: Duration::from_secs(600),
        ..NatsConfig::from_url(url)
    }
}

/// Receives `n` deliveries without acking them.
async fn hold(sub: &mut Subscription, n: usize, what: &str) -> Vec<impush_core::Delivery> {
    let mut held = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(Ok(d))) => held.push(d),
            other => panic!("{what}: {other:?}"),
        }
    }
    held
}

async fn expect_quiet(sub: &mut Subscription, what: &str) {
    if let Ok(item) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        panic!("{what}: expected nothing, got {item:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_gives_back_to_the_member_that_stays() {
    let Some(url) = impush_tests::env_or_skip("IMPUSH_TEST_NATS_URL") else {
        return;
    };
    let broker = NatsBroker::connect(&shared_cfg(url)).await.unwrap();
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let group = || SubscribeMode::Queue { group: "g".into() };
    let mut leaving = broker.subscribe(&topic, group()).await.unwrap();
    for i in 0..4 {
        broker
            .publish(&topic, format!("m{i}").into())
            .await
            .unwrap();
    }
    let held = hold(&mut leaving, 4, "leaving member").await;
    let mut staying = broker.subscribe(&topic, group()).await.unwrap();
    let started = Instant::now();
    drop(held);
    drop(leaving);
    let mut got: Vec<String> = Vec::new();
    for _ in 0..4 {
        let p = next(&mut staying, "given back").await.unwrap();
        got.push(String::from_utf8(p.to_vec()).unwrap());
    }
    got.sort();
    assert_eq!(got, ["m0", "m1", "m2", "m3"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    expect_quiet(&mut staying, "no duplicate").await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_what_members_hold() {
    let Some(url) = impush_tests::env_or_skip("IMPUSH_TEST_NATS_URL") else {
        return;
    };
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let group = || SubscribeMode::Queue {
        group: "node".into(),
    };
    let old = NatsBroker::connect(&shared_cfg(url.clone())).await.unwrap();
    let mut member = old.subscribe(&topic, group()).await.unwrap();
    for i in 0..3 {
        old.publish(&topic, format!("m{i}").into()).await.unwrap();
    }
    let held = hold(&mut member, 3, "before shutdown").await;
    old.shutdown().await.unwrap();
    // Acks after shutdown are too late: what was held comes back all the same.
    for d in held {
        d.ack();
    }
    let new = NatsBroker::connect(&shared_cfg(url)).await.unwrap();
    let mut restarted = new.subscribe(&topic, group()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut restarted, "after restart").await.unwrap());
    }
    got.sort();
    assert_eq!(got, ["m0", "m1", "m2"]);
    expect_quiet(&mut restarted, "no duplicate").await;
    new.shutdown().await.unwrap();
}

/// Retries `publish` until it succeeds (the broker is reconnecting meanwhile).
async fn publish_when_back(broker: &NatsBroker, topic: &str, payload: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match broker.publish(topic, payload.into()).await {
            Ok(()) => return,
            Err(e) => {
                assert!(e.is_transient(), "a restart is transient: {e:?}");
                assert!(Instant::now() < deadline, "publish never came back: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_a_reported_gap_for_fanout_and_nothing_for_queues() {
    let Some(mut server) = tokio::task::block_in_place(support::private_nats) else {
        return;
    };
    let cfg = NatsConfig {
        request_timeout: Duration::from_secs(1),
        ..NatsConfig::from_url(server.url())
    };
    let broker = NatsBroker::connect(&cfg).await.unwrap();
    let topic = "app.events";
    let inbox = "app.inbox.n1";
    let mut fan = broker
        .subscribe(topic, SubscribeMode::Fanout)
        .await
        .unwrap();
    let mut member = broker
        .subscribe(
            topic,
            SubscribeMode::Queue {
                group: "biz".into(),
            },
        )
        .await
        .unwrap();
    // A group whose only member is gone: its messages must wait, also through the restart.
    drop(
        broker
            .subscribe(inbox, SubscribeMode::Queue { group: "n1".into() })
            .await
            .unwrap(),
    );
    broker.publish(topic, "before".into()).await.unwrap();
    broker.publish(inbox, "waiting".into()).await.unwrap();
    assert_eq!(next(&mut fan, "fanout").await.unwrap(), "before");
    assert_eq!(next(&mut member, "queue").await.unwrap(), "before");

    tokio::task::block_in_place(|| server.stop());
    // The client learns of the dead connection when it reads its end: a ping issued in that
    // moment can still be flushed into the socket. Wait for the failure, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match broker.ping().await {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "ping kept succeeding with the server down"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(err.is_transient(), "{err:?}");
    tokio::task::block_in_place(|| server.start());

    publish_when_back(&broker, topic, "after").await;
    broker.ping().await.unwrap();
    // Fanout: told that it may have missed messages, then goes on.
    match next(&mut fan, "fanout after the restart").await {
        Err(Error::Lagged { dropped: 0 }) => {}
        other => panic!("expected Lagged {{ dropped: 0 }}, got {other:?}"),
    }
    assert_eq!(next(&mut fan, "fanout").await.unwrap(), "after");
    // Queue: the member pulls again by itself; the memberless group's message was kept.
    assert_eq!(
        next(&mut member, "queue after the restart").await.unwrap(),
        "after"
    );
    let mut n1 = broker
        .subscribe(inbox, SubscribeMode::Queue { group: "n1".into() })
        .await
        .unwrap();
    assert_eq!(
        next(&mut n1, "kept through the restart").await.unwrap(),
        "waiting"
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_name_the_key_or_the_server_but_never_the_password() {
    let mut backends = Backends::empty();
    impush_example_nats::register(&mut backends);
    let connect = |section: Section| {
        let backends = backends.clone();
        async move {
            let ctx = BackendContext::new(&section);
            backends.connect_broker(&section, &ctx).await.map(drop)
        }
    };
    let chain = |e: &Error| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(c) = src {
            s = format!("{s}: {c}");
            src = c.source();
        }
        s
    };

    // A typo is refused, naming the key.
    let typo = Section::new("nats").set("urll", "nats://h:1").unwrap();
    let err = connect(typo).await.unwrap_err();
    assert!(chain(&err).contains("broker.urll"), "{}", chain(&err));

    // Nothing listens there: unavailable, naming the server without the password.
    let port = impush_tests::free_addrs(1)[0].port();
    let down = Section::new("nats")
        .set("url", format!("nats://alice:hunter2@127.0.0.1:{port}"))
        .unwrap()
        .set("request_timeout", "1s")
        .unwrap();
    let err = connect(down).await.unwrap_err();
    let msg = chain(&err);
    assert!(err.is_transient(), "{msg}");
    assert!(
        msg.contains(&format!("nats://alice:***@127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(
        !msg.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
        "{msg}"
    );

    // Not a URL at all.
    let bad = Section::new("nats")
        .set("url", "nats://h:notaport")
        .unwrap();
    let err = connect(bad).await.unwrap_err();
    assert!(chain(&err).contains("broker.url"), "{}", chain(&err));
}
