//! The cluster suite (`impush_tests::cluster`) with `[presence] kind = "cluster"`: no presence
//! store, the nodes answer each other over the broker (here Redis streams,
//! `IMPUSH_TEST_REDIS_URL`; the RabbitMQ and Kafka suites run the same cases over their
//! brokers). Fault cases freeze and restart a private `redis-server`, which here is the only
//! thing presence depends on.

use impush_tests::cluster::{brokers::private_redis, harness::Backend};

fn redis_broker_cluster_presence() -> Backend {
    Backend::new(
        "redis+cluster",
        env!("CARGO_BIN_EXE_impush"),
        |url| {
            format!(
                "[broker]\nkind = \"redis\"\nurl = \"{url}\"\ncommand_timeout = \"1s\"\nclaim_idle = \"1s\"\n\
                 [presence]\nkind = \"cluster\"\nquery_timeout = \"1s\"\n"
            )
        },
        || impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL"),
    )
    .private(private_redis)
    .offline("kind = \"redis\"")
}

impush_tests::cluster_suite!(redis_broker_cluster_presence; private_broker, cluster_presence, broker_proxy, partitions, failover, rolling);
