//! impush's broker conformance suite (`impush_tests::broker_conformance!`) against a real NATS
//! server with JetStream: `IMPUSH_TEST_NATS_URL` (`scripts/brokers.sh up nats`, then
//! `eval "$(scripts/brokers.sh env)"`). Without it every case is skipped (loudly), or fails when
//! `IMPUSH_REQUIRE_BROKERS` is set.
//!
//! Every case uses its own namespace as the first token of its topics, so it gets a stream of
//! its own (`naming`: a stream per first token) and cases never see each other's messages. The
//! suite has no teardown, so the first setup of a run deletes the test streams of earlier runs
//! (NATS reserves `max_bytes` of storage for each, hence also the small `stream_max_bytes`).

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::StreamExt;
use impush_core::Broker;
use impush_example_nats::{NatsBroker, NatsConfig};

async fn setup() -> Option<Arc<dyn Broker>> {
    let url = impush_tests::env_or_skip("IMPUSH_TEST_NATS_URL")?;
    sweep_old_test_streams(&url).await;
    let cfg = NatsConfig {
        // NATS reserves `max_bytes` of its storage for every stream, and every case has one.
        stream_max_bytes: 16 << 20,
        stream_max_age: Duration::from_secs(600),
        // A member that leaves may leave a pull request on the server for up to 2 s
        // (`queue::PULL_EXPIRES`); a message published meanwhile can be handed to it and then
        // waits for `ack_wait` (default 30 s) before the group's next member gets it. One
        // fresh-clone CI run met it in `queue_retains_messages_while_group_has_no_member`
        // (message 9 of 10 not within the suite's 5 s). Short here, as in `two_nodes.rs`, so
        // such a message arrives within the suite's bounds: late, never lost.
        ack_wait: Duration::from_secs(4),
        ..NatsConfig::from_url(url)
    };
    Some(Arc::new(NatsBroker::connect(&cfg).await.expect("connect")))
}

impush_tests::broker_conformance!(setup);

/// Deletes the streams of earlier test runs: named like an `impush_tests::unique_ns()`
/// (`t{pid}x{nanos}x{n}`) and older than five minutes (no test runs that long, so a run going
/// on beside this one keeps its streams). Once per test process.
async fn sweep_old_test_streams(url: &str) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut streams = js.streams();
    let cutoff = std::time::SystemTime::now() - Duration::from_secs(300);
    let mut old = Vec::new();
    while let Some(Ok(info)) = streams.next().await {
        let name = &info.config.name;
        let test_like = name.starts_with('t')
            && name[1..].split('x').count() == 3
            && name[1..]
                .split('x')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if test_like && std::time::SystemTime::from(info.created) < cutoff {
            old.push(name.clone());
        }
    }
    for name in old {
        let _ = js.delete_stream(&name).await;
    }
}
