//! The cluster suite (`cluster/cases.rs`) over Redis: real `impush` processes, Redis streams as
//! the broker and Redis presence. The shared broker is `IMPUSH_TEST_REDIS_URL`
//! (`scripts/brokers.sh up`); fault cases start a private `redis-server` they may freeze and
//! restart. Without them the cases print SKIPPED (or fail when `IMPUSH_REQUIRE_BROKERS` is set,
//! as in CI).

#![allow(clippy::unwrap_used)]

mod cluster;

use cluster::harness::{Backend, PrivateRedis};

fn redis() -> Backend {
    Backend {
        name: "redis",
        sections: |url| {
            format!(
                "[broker]\nkind = \"redis\"\nurl = \"{url}\"\ncommand_timeout = \"1s\"\nclaim_idle = \"1s\"\n\
                 [presence]\nkind = \"redis\"\n"
            )
        },
        shared_url: || impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL"),
        private: PrivateRedis::start_boxed,
        offline: "kind = \"redis\"",
    }
}

cluster_suite!(redis);
