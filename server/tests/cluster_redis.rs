//! The cluster suite (`impush_tests::cluster`) over Redis: real `impush` processes, Redis
//! streams as the broker and Redis presence. The shared broker is `IMPUSH_TEST_REDIS_URL`
//! (`scripts/brokers.sh up`); fault cases start a private `redis-server` they may freeze and
//! restart. Without them the cases print SKIPPED (or fail when `IMPUSH_REQUIRE_BROKERS` is set,
//! as in CI).

use impush_tests::cluster::{brokers::private_redis, harness::Backend};

fn redis() -> Backend {
    Backend::new(
        "redis",
        env!("CARGO_BIN_EXE_impush"),
        |url| {
            format!(
                "[broker]\nkind = \"redis\"\nurl = \"{url}\"\ncommand_timeout = \"1s\"\nclaim_idle = \"1s\"\n\
                 [presence]\nkind = \"redis\"\n"
            )
        },
        || impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL"),
    )
    .private(private_redis)
    .offline("kind = \"redis\"")
}

impush_tests::cluster_suite!(redis; private_broker, broker_proxy, partitions, failover, rolling);
