//! The conformance suite against a real Redis: `IMPUSH_TEST_REDIS_URL`
//! (`scripts/brokers.sh up` starts one and prints it). Without the variable every case prints
//! SKIPPED; with `IMPUSH_REQUIRE_BROKERS` set (as `scripts/test.sh` and CI do) it fails instead.

use std::sync::Arc;

use impush_broker_redis::{RedisBroker, RedisConfig, RedisOfflineStore, RedisPresenceStore};
use impush_core::{Broker, InboxLimits, OfflineStore, PresenceStore};

fn config() -> Option<RedisConfig> {
    let url = impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL")?;
    Some(RedisConfig {
        // Well inside impush_tests::REDELIVERY_TIMEOUT: how long a gone member's unacked
        // entries wait before another member claims them.
        claim_idle: std::time::Duration::from_secs(1),
        ..RedisConfig::from_url(url)
    })
}

async fn broker() -> Option<Arc<dyn Broker>> {
    let cfg = config()?;
    Some(Arc::new(
        RedisBroker::connect(&cfg).await.expect("connect to redis"),
    ))
}

async fn presence() -> Option<Arc<dyn PresenceStore>> {
    let cfg = config()?;
    Some(Arc::new(
        // Every test in its own keyspace: tests run in parallel and the nodes of the cluster
        // tests reap expired leases under their own prefixes, never under ours.
        RedisPresenceStore::connect(&cfg, &impush_tests::unique_ns())
            .await
            .expect("connect to redis"),
    ))
}

/// A store in a keyspace of its own; the large-inbox case checks that the script reads a
/// returning client's inbox of thousands in slices.
async fn offline(limits: InboxLimits) -> Option<Arc<dyn OfflineStore>> {
    let cfg = config()?;
    Some(Arc::new(
        RedisOfflineStore::connect(&cfg, &impush_tests::unique_ns(), limits)
            .await
            .expect("connect to redis"),
    ))
}

impush_tests::broker_conformance!(broker);
impush_tests::offline_conformance!(offline);
impush_tests::presence_conformance!(presence);

/// A fanout reader that falls so far behind that Redis trims entries it has not read hears of
/// it (`Lagged`) instead of skipping them silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_fanout_entries_are_reported_as_lag() {
    use futures_util::StreamExt;
    use impush_core::{Error, SubscribeMode};
    let Some(cfg) = config() else { return };
    let cfg = RedisConfig {
        stream_max_len: 10,
        ..cfg
    };
    let b = RedisBroker::connect(&cfg).await.expect("connect to redis");
    let topic = format!("{}.lag", impush_tests::unique_ns());
    let mut sub = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    // Nobody reads meanwhile: the reader fills its buffer, then Redis trims past it.
    for i in 0..3000 {
        b.publish(&topic, format!("m{i}").into()).await.unwrap();
    }
    let mut received = 0;
    let lagged = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match sub.next().await.expect("stream open") {
                Ok(_) => received += 1,
                Err(Error::Lagged { dropped }) => return dropped,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    })
    .await
    .expect("a Lagged item");
    assert!(lagged >= 1);
    assert!(received < 3000, "got {received}, expected a gap");
}

/// `events_in_group` over Redis: two readers in one group share the online events, each
/// exactly once, with no late duplicate (the group is a consumer group on the events stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_event_readers_gets_each_event_once_over_redis() {
    use futures_util::StreamExt;
    use std::time::Duration;
    let Some(url) = impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL") else {
        return;
    };
    let mut config = impush_server::Config::default();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.broker = impush_brokers::Section::new("redis")
        .set("url", url)
        .unwrap()
        .set("prefix", impush_tests::unique_ns())
        .unwrap();
    let server = impush_server::ImServer::start(config).await.unwrap();
    let h = server.helper();
    let mut a = h.events_in_group("billing").await.unwrap();
    let mut b = h.events_in_group("billing").await.unwrap();
    let mut sockets = Vec::new();
    for name in ["u1", "u2", "u3", "u4"] {
        let client = impush_core::ClientId::new(name).unwrap();
        let url = h
            .prepare_connect(&client, serde_json::Value::Null)
            .unwrap()
            .url;
        sockets.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    let mut seen = Vec::new();
    let mut merged = futures_util::stream::select(&mut a, &mut b);
    while seen.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), merged.next())
            .await
            .expect("four group events in time")
            .expect("group streams open")
            .unwrap();
        seen.push(ev.client().to_string());
    }
    if let Ok(extra) = tokio::time::timeout(Duration::from_secs(1), merged.next()).await {
        panic!("a fifth group event: {extra:?} after {seen:?}");
    }
    seen.sort();
    assert_eq!(seen, ["u1", "u2", "u3", "u4"]);
    drop(sockets);
    server.shutdown().await.unwrap();
}
