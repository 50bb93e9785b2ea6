//! The conformance suite against a real Redis: `IMPUSH_TEST_REDIS_URL`
//! (`scripts/brokers.sh up` starts one and prints it). Without the variable every case prints
//! SKIPPED; with `IMPUSH_REQUIRE_BROKERS` set (as `scripts/test.sh` and CI do) it fails instead.

use std::sync::Arc;

use impush_broker_redis::{RedisBroker, RedisConfig, RedisPresenceStore};
use impush_core::{Broker, PresenceStore};

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

impush_tests::broker_conformance!(broker);
impush_tests::presence_conformance!(presence);
