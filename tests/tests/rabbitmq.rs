//! The conformance suite against a real RabbitMQ: `IMPUSH_TEST_RABBITMQ_URL`
//! (`scripts/brokers.sh up rabbitmq` starts one and prints it). Without the variable every case
//! prints SKIPPED; with `IMPUSH_REQUIRE_BROKERS` set (as `scripts/test.sh` and CI do) it fails
//! instead. Faults (RabbitMQ stopped, restarted, frozen) are in
//! `server/tests/cluster_rabbitmq.rs`, which runs a private instance.

use std::{sync::Arc, time::Duration};

use impush_broker_rabbitmq::{RabbitMqBroker, RabbitMqConfig};
use impush_core::{Broker, Error};

fn config() -> Option<RabbitMqConfig> {
    let url = impush_tests::env_or_skip("IMPUSH_TEST_RABBITMQ_URL")?;
    Some(RabbitMqConfig {
        // The shared RabbitMQ forgets the cases' queue groups once they are done with them.
        queue_expires: Some(Duration::from_secs(300)),
        ..RabbitMqConfig::from_url(url)
    })
}

async fn broker() -> Option<Arc<dyn Broker>> {
    let cfg = config()?;
    Some(Arc::new(
        RabbitMqBroker::connect(&cfg)
            .await
            .expect("connect to rabbitmq"),
    ))
}

impush_tests::broker_conformance!(broker);

/// Nothing listens on port 1: connecting fails at once, as "unavailable", naming the address
/// without the password.
#[tokio::test]
async fn connect_errors_name_the_address_without_the_password() {
    let cfg = RabbitMqConfig::from_url("amqp://guest:hunter2@127.0.0.1:1/%2f");
    let err = tokio::time::timeout(Duration::from_secs(10), RabbitMqBroker::connect(&cfg))
        .await
        .expect("connect fails promptly")
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let mut chain = vec![err.to_string()];
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    assert!(
        text.contains("cannot connect to amqp://guest:***@127.0.0.1:1/%2f"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    assert!(!format!("{cfg:?}").contains("hunter2"), "{cfg:?}");
}

#[tokio::test]
async fn bad_urls_are_config_errors_without_the_password() {
    for url in [
        "redis://guest:hunter2@127.0.0.1:1",
        "amqp://guest:hunter2@127.0.0.1:1/?heartbeat=soon",
    ] {
        let err = RabbitMqBroker::connect(&RabbitMqConfig::from_url(url))
            .await
            .expect_err("a bad URL");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("config key `broker.url`"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}

/// The live broker's `Debug` shows the redacted URL only.
#[tokio::test]
async fn debug_never_shows_the_password() {
    let Some(cfg) = config() else { return };
    let b = RabbitMqBroker::connect(&cfg).await.expect("connect");
    let shown = format!("{b:?}");
    assert!(shown.contains("connected: true"), "{shown}");
    if let Some((_, rest)) = cfg.url.split_once("://") {
        if let Some((userinfo, _)) = rest.split_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                assert!(!shown.contains(&format!(":{password}@")), "{shown}");
            }
        }
    }
    b.shutdown().await.expect("shutdown");
}

/// Names RabbitMQ cannot take are refused before anything is sent.
#[tokio::test]
async fn overlong_topics_are_refused() {
    let Some(cfg) = config() else { return };
    let b = RabbitMqBroker::connect(&cfg).await.expect("connect");
    let long = "t".repeat(256);
    let err = b.publish(&long, "x".into()).await.expect_err("too long");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = b
        .subscribe(&long, impush_core::SubscribeMode::Fanout)
        .await
        .err()
        .expect("too long");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    b.shutdown().await.expect("shutdown");
}

/// A subscribe that RabbitMQ answers too late (past `publish_timeout`, dropped wherever it
/// waited) leaves no consumer behind: left on an open channel, a consumer registered after all
/// would take a share of the queue group's messages and never ack them while the connection
/// lives (in the cluster suite's API-node-cut case, a node taking over a dead node's inbox
/// held two of its messages that way). Replies from RabbitMQ are delayed 300 ms each on the
/// slow broker's link, so its subscribe (channel, qos, declare, bind, consume: five round
/// trips) gives up at 1.35 s with `basic.consume` sent and unanswered; then a second member of
/// the group must get every message published.
#[tokio::test]
async fn a_subscribe_answered_too_late_leaves_no_consumer_holding_messages() {
    let Some(cfg) = config() else { return };
    let upstream: std::net::SocketAddr = cfg
        .url
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|hostport| hostport.parse().ok())
        .expect("IMPUSH_TEST_RABBITMQ_URL names host:port");
    let proxy = impush_tests::proxy::FaultProxy::start(upstream)
        .await
        .expect("proxy");
    let via = cfg
        .url
        .replace(&upstream.to_string(), &proxy.addr().to_string());
    let slow = RabbitMqBroker::connect(&RabbitMqConfig {
        url: via,
        publish_timeout: Duration::from_millis(1350),
        ..cfg.clone()
    })
    .await
    .expect("connect through the proxy");
    let good = RabbitMqBroker::connect(&cfg).await.expect("connect");
    let topic = format!("late-subscribe-{}", impush_tests::unique_ns());
    let group = impush_core::SubscribeMode::Queue {
        group: "members".into(),
    };

    proxy.delay(
        impush_tests::proxy::Direction::ToClient,
        Duration::from_millis(300),
    );
    let late = slow.subscribe(&topic, group.clone()).await;
    proxy.heal();
    drop(late);
    let mut member = good.subscribe(&topic, group).await.expect("subscribe");
    for i in 0..40 {
        good.publish(&topic, format!("m{i}").into())
            .await
            .expect("publish");
    }
    let mut got = std::collections::HashSet::new();
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        while got.len() < 40 {
            let d = member.next().await.expect("stream open").expect("delivery");
            got.insert(d.ack());
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "the group's live member got {} of 40 messages: a consumer left by the late subscribe \
         holds the rest",
        got.len()
    );
    slow.shutdown().await.expect("shutdown");
    good.shutdown().await.expect("shutdown");
}
