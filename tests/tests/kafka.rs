//! The conformance suite against a real Kafka-protocol broker: `IMPUSH_TEST_KAFKA_URL`
//! (`scripts/brokers.sh up` starts tansu and prints it). Without the variable every case prints
//! SKIPPED; with `IMPUSH_REQUIRE_BROKERS` set (as `scripts/test.sh` and CI do) it fails instead.

use std::{sync::Arc, time::Duration};

use impush_broker_kafka::{KafkaBroker, KafkaConfig};
use impush_core::Broker;

async fn broker() -> Option<Arc<dyn Broker>> {
    let url = impush_tests::env_or_skip("IMPUSH_TEST_KAFKA_URL")?;
    let mut cfg = KafkaConfig {
        // A group join or rebalance takes about half the session timeout on tansu, so a
        // member that joins waits ~3 s; a longer timeout only slows the queue cases down.
        session_timeout: Duration::from_secs(6),
        ..KafkaConfig::from_url(url)
    };
    // tansu answers a waiting fetch when the wait is over, not when a record arrives (Kafka
    // does the latter): keep the wait short so deliveries take milliseconds.
    cfg.consumer_properties
        .insert("fetch.wait.max.ms".into(), "10".into());
    Some(Arc::new(
        KafkaBroker::connect(&cfg).await.expect("connect to kafka"),
    ))
}

impush_tests::broker_conformance!(broker);
