//! The kinds impush ships (`memory` and `cluster` always, the others per Cargo feature),
//! registered by [`register`] (for [`Backends::with_defaults`]): one cfg-gated function, so a
//! build without a backend's feature never compiles that backend's client, and selecting it
//! says which feature brings it.

use impush_core::{MemoryBroker, MemoryOfflineStore, MemoryPresenceStore, Topics};
use serde::Deserialize;

use crate::Backends;

/// `[broker] kind = "memory"`: the in-process broker (one process only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryBrokerConfig {
    /// Messages a fanout subscriber may fall behind before it lags (default 16384).
    pub fanout_capacity: usize,
    /// Undelivered messages a queue group keeps (default 65536): beyond it a send to a node's
    /// inbox is refused (503, retried by its sender), other groups drop their oldest.
    pub queue_capacity: usize,
    /// How long a queue group with no member keeps what is published for it (default `60s`);
    /// then it is dropped, so abandoned group names (SSE `?group=`) cannot grow the process.
    #[serde(with = "humantime_serde")]
    pub group_idle_ttl: std::time::Duration,
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        Self {
            fanout_capacity: 16 * 1024,
            queue_capacity: 64 * 1024,
            group_idle_ttl: MemoryBroker::DEFAULT_GROUP_IDLE_TTL,
        }
    }
}

/// `[presence] kind = "memory"`: no options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryPresenceConfig {}

/// `[offline] kind = "memory"`: no options (inboxes live in this process: one node only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryOfflineConfig {}

impl Backends {
    /// Every kind this build contains: `memory` always, the others as compiled in (a kind
    /// compiled out stays known, so selecting it says which feature brings it).
    // Here rather than in `registry`, so that the registry does not depend on the built-ins
    // it registers.
    pub fn with_defaults() -> Self {
        let mut b = Self::empty();
        register(&mut b);
        b
    }
}

/// Registers every built-in kind this build has, and marks the others as compiled out.
fn register(b: &mut Backends) {
    b.register_broker("memory", |c: MemoryBrokerConfig, ctx| async move {
        Ok(MemoryBroker::new(c.fanout_capacity, c.queue_capacity)
            .with_group_idle_ttl(c.group_idle_ttl)
            .refusing_full_inboxes(&Topics::new(&ctx.prefix)))
    });
    b.register_presence("memory", |_: MemoryPresenceConfig, _| async move {
        Ok(MemoryPresenceStore::new())
    });
    b.register_offline("memory", |_: MemoryOfflineConfig, ctx| async move {
        Ok(MemoryOfflineStore::new(ctx.inbox_limits))
    });
    cluster(b);
    disk(b);
    redis(b);
    rabbitmq(b);
    kafka(b);
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
        RedisPresenceStore::connect(&c.resolve(broker, "presence")?, &ctx.prefix).await
    });
    b.register_offline("redis", |c: RedisPresenceConfig, ctx| async move {
        // Defaults from the presence section when it is Redis, else from the broker's.
        let base = match (ctx.presence_section.kind(), ctx.broker_section.kind()) {
            ("redis", _) => {
                let p = ctx
                    .presence_section
                    .options::<RedisPresenceConfig>("presence")?;
                let broker = match ctx.broker_section.kind() {
                    "redis" => Some(ctx.broker_section.options::<RedisConfig>("broker")?),
                    _ => None,
                };
                Some(p.resolve(broker, "presence")?)
            }
            (_, "redis") => Some(ctx.broker_section.options::<RedisConfig>("broker")?),
            _ => None,
        };
        let cfg = c.resolve(base, "offline")?;
        impush_broker_redis::RedisOfflineStore::connect(&cfg, &ctx.prefix, ctx.inbox_limits).await
    });
}

#[cfg(not(feature = "redis"))]
fn redis(b: &mut Backends) {
    b.broker_not_compiled("redis");
    b.presence_not_compiled("redis");
    b.offline_not_compiled("redis");
}

/// `[offline] kind = "disk"`: the owning node's local file (redb).
#[cfg(feature = "disk")]
fn disk(b: &mut Backends) {
    use impush_offline_disk::{DiskOfflineConfig, DiskOfflineStore};
    b.register_offline("disk", |c: DiskOfflineConfig, ctx| async move {
        DiskOfflineStore::open(&c, ctx.inbox_limits).await
    });
}

#[cfg(not(feature = "disk"))]
fn disk(b: &mut Backends) {
    b.offline_not_compiled("disk");
}

#[cfg(feature = "rabbitmq")]
fn rabbitmq(b: &mut Backends) {
    use impush_broker_rabbitmq::{RabbitMqBroker, RabbitMqConfig};

    b.register_broker("rabbitmq", |c: RabbitMqConfig, _| async move {
        RabbitMqBroker::connect(&c).await
    });
}

#[cfg(not(feature = "rabbitmq"))]
fn rabbitmq(b: &mut Backends) {
    b.broker_not_compiled("rabbitmq");
}

#[cfg(feature = "kafka")]
fn kafka(b: &mut Backends) {
    use impush_broker_kafka::{KafkaBroker, KafkaConfig};

    b.register_broker("kafka", |c: KafkaConfig, ctx| async move {
        match &ctx.node {
            Some(node) => KafkaBroker::connect_for_node(&c, node, &Topics::new(&ctx.prefix)).await,
            None => KafkaBroker::connect(&c).await,
        }
    });
}

#[cfg(not(feature = "kafka"))]
fn kafka(b: &mut Backends) {
    b.broker_not_compiled("kafka");
}
