//! impush's multi-process cluster suite (`impush_tests::cluster_suite!`) over NATS, as any
//! broker author runs it: real `impush-nats` processes (two or three per case) with
//! `[presence] kind = "cluster"` (the nodes keep presence among themselves over the broker:
//! NATS is the only service), a helper in this process built with the same registry, and
//! WebSocket clients on every node. The cases cover messages across nodes with receipts,
//! channels, broadcast, the online/offline events the helper sees, a kick across nodes, node
//! kills, restarts and freezes, floods with receipts and with the offline inbox, broken links,
//! (on a private `nats-server` of each case's own) NATS stalled, frozen and restarted, 1,500
//! clients of a killed node moving and coming home, and a rolling restart under traffic.
//!
//! The shared server is `IMPUSH_TEST_NATS_URL` (`scripts/brokers.sh up nats`); without it the
//! cases print SKIPPED, or fail when `IMPUSH_REQUIRE_BROKERS` is set. Each cluster's stream
//! (named after its prefix, see the crate docs) is deleted when the cluster stops.

mod support;

use std::time::Duration;

use impush_tests::cluster::{brokers::ProcessBroker, harness::Backend};

/// `[broker]` and `[presence]` for the NATS server at `url`.
fn sections(url: &str) -> String {
    // A small stream per cluster (NATS reserves `stream_max_bytes` of storage for it), and a
    // short ack_wait: what a killed node held goes to its restarted self within seconds.
    format!(
        "[broker]\nkind = \"nats\"\nurl = \"{url}\"\nrequest_timeout = \"1s\"\n\
         stream_max_age = \"10m\"\nstream_max_bytes = 67108864\nack_wait = \"5s\"\n\
         [presence]\nkind = \"cluster\"\nquery_timeout = \"1s\"\n"
    )
}

/// The helper's registry: the same registrations as the nodes' binary (`src/main.rs`).
fn backends() -> impush_helper::Backends {
    let mut backends = impush_helper::Backends::with_defaults();
    impush_example_nats::register(&mut backends);
    backends
}

/// Deletes the cluster's stream (best effort: the server may be down or gone).
fn delete_stream(url: &str, prefix: &str) {
    let (url, stream) = (url.to_owned(), prefix.to_owned());
    // Called while a cluster is dropped, inside the test's runtime: a runtime of its own on a
    // thread of its own.
    let deleted = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
                async_nats::jetstream::new(client)
                    .delete_stream(&stream)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|_| "timed out".to_owned())?
        })
    })
    .join();
    if let Ok(Err(e)) = deleted {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "stream {prefix} not deleted: {e}");
    }
}

fn nats() -> Backend {
    Backend::new("nats", env!("CARGO_BIN_EXE_impush-nats"), sections, || {
        impush_tests::env_or_skip("IMPUSH_TEST_NATS_URL")
    })
    .helper_backends(backends)
    .private(|| support::private_nats().map(ProcessBroker::boxed))
    .cleanup(delete_stream)
    // A cluster without Redis keeps inboxes in each node's file, so a killed node's pending
    // messages are there when it comes back (`docs/design.md` section 15).
    .offline("kind = \"disk\"\npath = \"{dir}/offline-{node}.redb\"")
}

impush_tests::cluster_suite!(nats; private_broker, durable_broker, cluster_presence, broker_proxy, partitions, failover, rolling);
