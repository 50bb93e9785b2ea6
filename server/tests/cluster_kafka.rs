//! The cluster suite (`impush_tests::cluster`) over Kafka alone: real `impush` processes, a
//! Kafka-protocol broker (tansu, `scripts/brokers.sh`) as the broker, presence kept by the
//! nodes (`[presence] kind = "cluster"`) and the offline inbox in each node's file. The shared
//! broker is `IMPUSH_TEST_KAFKA_URL` (`scripts/brokers.sh up`); fault cases start a private
//! tansu (the binary `brokers.sh` installed, on a free port) that they may stop, freeze and
//! restart. tansu keeps everything in memory, so a restart loses every topic, group and
//! offset, like a Kafka cluster rebuilt from scratch. Without them the cases print SKIPPED (or
//! fail when `IMPUSH_REQUIRE_BROKERS` is set, as in CI).
//!
//! Timeouts are short so that faults show quickly: `session_timeout = "6s"` (a group join or
//! rebalance takes about half of it on tansu; a killed node's inbox is free again after it),
//! `request_timeout = "1s"` (`/readyz` answers 503 within it), `publish_timeout = "2s"` (a send
//! while the broker is down answers 503 within it). `fetch.wait.max.ms = 10`: tansu does not
//! answer a waiting fetch when a record arrives (Kafka does), it answers when the wait is over,
//! so the default (500 ms) would make every delivery take ~50-300 ms.
//!
//! A Kafka client takes the address the URL names only to bootstrap, then connects where the
//! broker advertises itself: the cases that put a node's broker link behind a proxy
//! (`broker_proxy`, `partitions`) get a private tansu that advertises the proxy, which acts on
//! the cut node's connections only (`BrokerLink::KafkaAdvertised`).
//!
//! `partitions` hands a node's inbox over and back (a survivor takes the inbox of a node it
//! sees dead and lets go when the node is back): on tansu 0.6 that ran reliably only once a
//! takeover member stopped sending a LeaveGroup (static membership, README "Over Kafka").
//!
//! Besides the shared suite: the broker itself (through the registry, as the server builds it)
//! through a stop and a start of tansu, and through a stall.

#![allow(clippy::unwrap_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use impush_core::{Broker, SubscribeMode};
use impush_tests::{
    cluster::{
        brokers::{private_tansu, private_tansu_advertising, PrivateBroker, ProcessBroker},
        harness::{Backend, BrokerLink, WAIT},
    },
    eventually_within,
    proxy::{Direction, FaultProxy},
};

/// `[broker]` and `[presence]` for the tansu at `url`.
fn sections(url: &str) -> String {
    format!(
        "[broker]\nkind = \"kafka\"\nurl = \"{url}\"\nsession_timeout = \"6s\"\n\
         request_timeout = \"1s\"\npublish_timeout = \"2s\"\n\
         [broker.consumer_properties]\n\"fetch.wait.max.ms\" = 10\n\
         [presence]\nkind = \"cluster\"\nquery_timeout = \"1s\"\n"
    )
}

fn kafka() -> Backend {
    Backend::new("kafka", env!("CARGO_BIN_EXE_impush"), sections, || {
        impush_tests::env_or_skip("IMPUSH_TEST_KAFKA_URL")
    })
    .private(|| private_tansu().map(ProcessBroker::boxed))
    .broker_link(BrokerLink::KafkaAdvertised(|port, advertise| {
        private_tansu_advertising(port, advertise).map(ProcessBroker::boxed)
    }))
    // No Redis needed: each node keeps its clients' inboxes in a local file.
    .offline("kind = \"disk\"\npath = \"{dir}/offline-{node}.redb\"")
}

impush_tests::cluster_suite!(kafka; private_broker, cluster_presence, broker_proxy, partitions, rolling);

// ---------------------------------------------------------------------------------------------
// Kafka-specific cases
// ---------------------------------------------------------------------------------------------

/// A broker for `tansu` through the registry, as the server builds it, with the suite's
/// timeouts.
async fn connect_through_the_registry(tansu: &ProcessBroker) -> Arc<dyn Broker> {
    connect_to(tansu.url()).await
}

/// [`connect_through_the_registry`] for the Kafka cluster at `url`.
async fn connect_to(url: String) -> Arc<dyn Broker> {
    let section = impush_brokers::Section::new("kafka")
        .set("url", url)
        .unwrap()
        .set("session_timeout", "6s")
        .unwrap()
        .set("request_timeout", "1s")
        .unwrap()
        .set("publish_timeout", "2s")
        .unwrap();
    let ctx = impush_brokers::BackendContext::new(&section);
    impush_brokers::Backends::with_defaults()
        .connect_broker(&section, &ctx)
        .await
        .unwrap()
}

/// The broker itself (through the registry, as the server builds it) across a stop and a
/// start of tansu (which comes back empty): calls fail promptly as unavailable while it is
/// down, and afterwards the *same* subscriptions deliver again (new consumers, the topic
/// created again, the queue group rejoined), the fanout one after reporting a gap, with
/// nothing published before the stop delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_its_subscriptions_survive_a_kafka_restart() {
    let Some(mut tansu) = private_tansu() else {
        return;
    };
    let b = connect_through_the_registry(&tansu).await;
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = queue_member(&b, &ns, &topic).await;
    for m in ["before-1", "before-2"] {
        b.publish(&topic, m.into()).await.unwrap();
    }
    for sub in [&mut fan, &mut member] {
        for want in ["before-1", "before-2"] {
            let d = tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(d.ack(), want);
        }
    }

    tokio::task::block_in_place(|| tansu.stop());
    for _ in 0..3 {
        let t = Instant::now();
        let ping = b.ping().await;
        assert!(ping.as_ref().is_err_and(|e| e.is_transient()), "{ping:?}");
        let publish = b.publish(&topic, "lost".into()).await;
        assert!(
            publish.as_ref().is_err_and(|e| e.is_transient()),
            "{publish:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "calls took {:?}",
            t.elapsed()
        );
    }

    tokio::task::block_in_place(|| tansu.start());
    eventually_within(
        "ping after the restart",
        Duration::from_secs(20),
        || async { b.ping().await.is_ok() },
    )
    .await;
    eventually_within(
        "publish after the restart",
        Duration::from_secs(20),
        || async { b.publish(&topic, "after".into()).await.is_ok() },
    )
    .await;
    // The fanout subscription reports a gap first: it cannot know what the cluster lost (all
    // of it, here). Then both get what was published after the restart, and nothing from
    // before. (A publish that failed late may have gone out twice: at-least-once.)
    let gap = next_item(&mut fan).await;
    assert!(
        matches!(gap, Err(impush_core::Error::Lagged { .. })),
        "fanout reports the possible gap first: {gap:?}"
    );
    assert_eq!(next_item(&mut fan).await.unwrap().ack(), "after", "fanout");
    assert_eq!(
        next_item(&mut member).await.unwrap().ack(),
        "after",
        "queue member"
    );
    b.shutdown().await.unwrap();
}

/// The broker itself across a stall (SIGSTOP) longer than `publish_timeout`: publishes and
/// pings fail as unavailable meanwhile, and afterwards publishing works again (records that
/// timed out make an idempotent producer bump its epoch, which tansu answers by fencing it for
/// good: the producer is replaced) and the same subscriptions get what is published, with
/// nothing delivered twice to the queue member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_its_subscriptions_survive_a_kafka_stall() {
    let Some(mut tansu) = private_tansu() else {
        return;
    };
    let b = connect_through_the_registry(&tansu).await;
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = queue_member(&b, &ns, &topic).await;
    b.publish(&topic, "before".into()).await.unwrap();
    assert_eq!(next_item(&mut fan).await.unwrap().ack(), "before");
    assert_eq!(next_item(&mut member).await.unwrap().ack(), "before");

    tansu.stall();
    for _ in 0..2 {
        let t = Instant::now();
        let publish = b.publish(&topic, "stalled".into()).await;
        assert!(
            publish.as_ref().is_err_and(|e| e.is_transient()),
            "{publish:?}"
        );
        // `publish_timeout` bounds the whole publish, retries included (a send through a
        // stopping broker once took 7.5 s with the suite's 2 s).
        assert!(
            t.elapsed() < Duration::from_millis(2_500),
            "the publish took {:?}",
            t.elapsed()
        );
        let ping = b.ping().await;
        assert!(ping.as_ref().is_err_and(|e| e.is_transient()), "{ping:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "calls took {:?}",
            t.elapsed()
        );
    }
    tansu.resume();

    // Publishing works again, every time (not just once, before a fenced producer dies).
    publish_once_back(&*b, &topic, "after-0").await;
    for i in 1..5 {
        b.publish(&topic, format!("after-{i}").into())
            .await
            .unwrap();
    }
    // The stalled publishes failed, but the broker may have taken some of them in before it
    // froze (at-least-once): skip those; every "after" arrives, once, in order on fanout.
    let mut got = Vec::new();
    while got.len() < 5 {
        match next_item(&mut fan).await {
            Ok(d) => {
                let p = d.ack();
                if p != "stalled" {
                    got.push(p);
                }
            }
            Err(impush_core::Error::Lagged { .. }) => {}
            Err(e) => panic!("fanout: {e:?}"),
        }
    }
    let want: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    assert_eq!(got, want, "fanout after the stall");
    let mut got = Vec::new();
    while got.len() < 5 {
        let p = next_item(&mut member).await.unwrap().ack();
        if p != "stalled" {
            got.push(p);
        }
    }
    got.sort();
    assert_eq!(got, want, "queue member after the stall");
    b.shutdown().await.unwrap();
}

/// The next item of `sub`, within 30 s.
async fn next_item(
    sub: &mut impush_core::Subscription,
) -> impush_core::Result<impush_core::Delivery> {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("an item after the restart")
        .expect("subscription open")
}

/// A queue member whose writes are lost for a while and whose connections to every broker are
/// then reset, while the cluster keeps its state (a one-way partition, not a broker restart),
/// goes on as the same member and gets what is published afterwards. Replacing it instead
/// (what a subscription did after losing every broker) left the new member without an
/// assignment: tansu refused its syncs for as long as this test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_whose_connections_are_reset_goes_on() {
    // Every client reaches tansu through a proxy that tansu advertises, so a reset of the
    // proxy's connections is a reset of every broker connection.
    let port = impush_tests::free_addrs(1)[0].port();
    let proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let Some(_tansu) = private_tansu_advertising(port, proxy.addr()) else {
        return;
    };
    let b = connect_to(proxy.addr().to_string()).await;
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let mut member = queue_member(&b, &ns, &topic).await;
    b.publish(&topic, "before".into()).await.unwrap();
    assert_eq!(next_item(&mut member).await.unwrap().ack(), "before");

    // What the member writes is lost for a while (its heartbeats too), then its connections
    // are reset: the one-way partition that found this.
    proxy.blackhole(Direction::ToUpstream);
    tokio::time::sleep(Duration::from_secs(4)).await; // the fault itself
    proxy.reset();
    eventually_within("every connection reset", WAIT, || async {
        proxy.connections() == 0
    })
    .await;
    proxy.heal();
    publish_once_back(&*b, &topic, "after").await;
    // At-least-once: "before" may come again if its offset was not committed yet.
    let mut got = next_item(&mut member).await.unwrap().ack();
    while got == "before" {
        got = next_item(&mut member).await.unwrap().ack();
    }
    assert_eq!(got, "after");
    b.shutdown().await.unwrap();
}

/// A queue member of `topic` in the group `{ns}-node`.
async fn queue_member(b: &Arc<dyn Broker>, ns: &str, topic: &str) -> impush_core::Subscription {
    b.subscribe(
        topic,
        SubscribeMode::Queue {
            group: format!("{ns}-node"),
        },
    )
    .await
    .unwrap()
}

/// Publishes `payload` once the broker takes publishes again after a fault (within 30 s).
async fn publish_once_back(b: &dyn Broker, topic: &str, payload: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.publish(topic, payload.into()).await.is_err() {
        assert!(Instant::now() < deadline, "no publish after the fault");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
