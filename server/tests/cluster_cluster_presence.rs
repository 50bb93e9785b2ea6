//! The cluster suite (`cluster/cases.rs`) with `[presence] kind = "cluster"`: no presence store,
//! the nodes answer each other over the broker (here Redis streams, `IMPUSH_TEST_REDIS_URL`;
//! the RabbitMQ and Kafka suites run the same cases over their brokers). Fault cases freeze
//! and restart a private `redis-server`, which here is the only thing presence depends on.

#![allow(clippy::unwrap_used)]

mod cluster;

use cluster::harness::{Backend, PrivateRedis};

fn redis_broker_cluster_presence() -> Backend {
    Backend {
        name: "redis+cluster",
        sections: |url| {
            format!(
                "[broker]\nkind = \"redis\"\nurl = \"{url}\"\ncommand_timeout = \"1s\"\nclaim_idle = \"1s\"\n\
                 [presence]\nkind = \"cluster\"\nquery_timeout = \"1s\"\n"
            )
        },
        shared_url: || impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL"),
        private: PrivateRedis::start_boxed,
        offline: "kind = \"redis\"",
    }
}

cluster_suite!(redis_broker_cluster_presence);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_gives_partial_answers_then_goes_offline() {
    cluster::cases::silent_node_gives_partial_answers_then_goes_offline(
        &redis_broker_cluster_presence(),
    )
    .await;
}
