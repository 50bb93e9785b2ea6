//! The kinds impush ships (`memory` and `cluster` always, the others per Cargo feature),
//! registered by [`register`]: one cfg-gated function, so a build
//! without a backend's feature never compiles that backend's client, and selecting it says
//! which feature brings it.

use impush_core::{MemoryBroker, MemoryPresenceStore};
use serde::Deserialize;

use crate::Backends;

/// `[broker] kind = "memory"`: the in-process broker (one process only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryBrokerConfig {
    /// Messages a fanout subscriber may fall behind before it lags (default 16384).
    pub fanout_capacity: usize,
    /// Undelivered messages a queue group keeps (default 65536).
    pub queue_capacity: usize,
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        Self {
            fanout_capacity: 16 * 1024,
            queue_capacity: 64 * 1024,
        }
    }
}

/// `[presence] kind = "memory"`: no options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryPresenceConfig {}

/// Registers every built-in kind this build has, and marks the others as compiled out.
pub(crate) fn register(b: &mut Backends) {
    b.register_broker("memory", |c: MemoryBrokerConfig, _| async move {
        Ok(MemoryBroker::new(c.fanout_capacity, c.queue_capacity))
    });
    b.register_presence("memory", |_: MemoryPresenceConfig, _| async move {
        Ok(MemoryPresenceStore::new())
    });
    cluster(b);
    redis(b);
    b.broker_not_compiled("rabbitmq");
    b.broker_not_compiled("kafka");
}

/// `[presence] kind = "cluster"`: no store, the nodes answer each other over the broker.
fn cluster(b: &mut Backends) {
    use impush_presence_cluster::{ClusterPresence, ClusterPresenceConfig};

    b.register_presence("cluster", |c: ClusterPresenceConfig, ctx| async move {
        c.validate()?;
        let (Some(broker), Some(cluster)) = (ctx.broker.clone(), ctx.cluster.clone()) else {
            return Err(impush_core::Error::Config(
                "presence `cluster` needs the connected broker and the cluster's node list".into(),
            ));
        };
        ClusterPresence::start(broker, &ctx.prefix, ctx.node, cluster, ctx.node_lease, &c).await
    });
}

#[cfg(feature = "redis")]
fn redis(b: &mut Backends) {
    use impush_broker_redis::{RedisBroker, RedisConfig, RedisPresenceConfig, RedisPresenceStore};

    b.register_broker("redis", |c: RedisConfig, _| async move {
        RedisBroker::connect(&c).await
    });
    b.register_presence("redis", |c: RedisPresenceConfig, ctx| async move {
        let broker = match ctx.broker_section.kind() {
            "redis" => Some(ctx.broker_section.options::<RedisConfig>("broker")?),
            _ => None,
        };
        RedisPresenceStore::connect(&c.resolve(broker)?, &ctx.prefix).await
    });
}

#[cfg(not(feature = "redis"))]
fn redis(b: &mut Backends) {
    b.broker_not_compiled("redis");
    b.presence_not_compiled("redis");
}
