//! impush-brokers: the facade that turns the `[broker]` and `[presence]` config sections into
//! `Arc<dyn Broker>` and `Arc<dyn PresenceStore>`.
//!
//! Selecting a backend is configuration, never code: the server and the helper call
//! [`connect_broker`] and [`connect_presence`] and hold trait objects. Each real backend lives in
//! its own crate (`brokers/redis`, `brokers/rabbitmq`, `brokers/kafka`) behind a Cargo feature of
//! this crate of the same name, so that building with memory only never compiles a broker client.
//!
//! Backends:
//! - `memory` (always): [`MemoryBroker`](impush_core::MemoryBroker) and
//!   [`MemoryPresenceStore`](impush_core::MemoryPresenceStore), one process only.
//! - `redis` (feature `redis`): `impush_broker_redis::RedisBroker` and `RedisPresenceStore`.
//! - `rabbitmq`, `kafka`: recognised in config; connecting fails with "backend `kafka` is not
//!   compiled in; rebuild with `--features kafka`" until their crates land.
//!
//! A backend recognised in config but compiled out fails the same way.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> impush_core::Result<()> {
//! let cfg: impush_brokers::BrokerConfig = serde_json::from_str(r#"{"kind":"memory"}"#).unwrap();
//! let broker = impush_brokers::connect_broker(&cfg).await?;
//! broker.ping().await?;
//! assert_eq!(cfg.prefix(), "impush");
//! # Ok(()) }
//! ```

use std::sync::Arc;

use impush_core::{Broker, Error, MemoryBroker, MemoryPresenceStore, PresenceStore, Result};
use serde::Deserialize;

fn default_prefix() -> String {
    "impush".to_owned()
}

/// `[broker] kind = "memory"`: the in-process broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBrokerConfig {
    /// Topic prefix (default `impush`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Messages a fanout subscriber may fall behind before it lags (default 16384).
    #[serde(default = "default_fanout_capacity")]
    pub fanout_capacity: usize,
    /// Undelivered messages a queue group keeps (default 65536).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

fn default_fanout_capacity() -> usize {
    16 * 1024
}

fn default_queue_capacity() -> usize {
    64 * 1024
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        Self {
            prefix: default_prefix(),
            fanout_capacity: default_fanout_capacity(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

/// The `[broker]` section: which backbone carries messages between helpers and nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum BrokerConfig {
    /// In-process (single node, the embedded default).
    Memory(MemoryBrokerConfig),
    /// Redis streams.
    #[cfg(feature = "redis")]
    Redis(impush_broker_redis::RedisConfig),
    /// Redis (not compiled into this build).
    #[cfg(not(feature = "redis"))]
    Redis(serde::de::IgnoredAny),
    /// RabbitMQ (not compiled into this build).
    #[serde(rename = "rabbitmq")]
    RabbitMq(serde::de::IgnoredAny),
    /// Kafka (not compiled into this build).
    Kafka(serde::de::IgnoredAny),
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig::Memory(MemoryBrokerConfig::default())
    }
}

impl BrokerConfig {
    /// The topic prefix of this cluster.
    pub fn prefix(&self) -> &str {
        match self {
            BrokerConfig::Memory(c) => &c.prefix,
            #[cfg(feature = "redis")]
            BrokerConfig::Redis(c) => &c.prefix,
            _ => "impush",
        }
    }

    /// The backend name, as written in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerConfig::Memory(_) => "memory",
            BrokerConfig::Redis(_) => "redis",
            BrokerConfig::RabbitMq(_) => "rabbitmq",
            BrokerConfig::Kafka(_) => "kafka",
        }
    }
}

/// The `[presence]` section: where presence and channel membership live.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum PresenceConfig {
    /// In-process (single node, the embedded default).
    #[default]
    Memory,
    /// Redis, with node leases.
    #[cfg(feature = "redis")]
    Redis(RedisPresenceConfig),
    /// Redis (not compiled into this build).
    #[cfg(not(feature = "redis"))]
    Redis(serde::de::IgnoredAny),
}

/// `[presence] kind = "redis"`: every field defaults to the broker's when the broker is Redis too.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisPresenceConfig {
    /// `redis://...`; defaults to `broker.url` when `broker.kind = "redis"`.
    pub url: Option<String>,
    /// Key prefix; defaults to the broker's prefix.
    pub prefix: Option<String>,
    /// Connections in the pool (default 4).
    pub pool_size: Option<usize>,
    /// How long a command may take before it fails as unavailable (default 3s).
    #[serde(default, with = "humantime_serde::option")]
    pub command_timeout: Option<std::time::Duration>,
}

#[cfg(feature = "redis")]
fn redis_presence_config(
    p: &RedisPresenceConfig,
    broker: &BrokerConfig,
) -> Result<impush_broker_redis::RedisConfig> {
    let mut cfg = match broker {
        BrokerConfig::Redis(b) => b.clone(),
        _ => impush_broker_redis::RedisConfig {
            prefix: broker.prefix().to_owned(),
            ..Default::default()
        },
    };
    match (&p.url, broker) {
        (Some(url), _) => cfg.url.clone_from(url),
        (None, BrokerConfig::Redis(_)) => {}
        (None, _) => {
            return Err(Error::Config(
                "config key `presence.url`: required when the broker is not Redis".into(),
            ))
        }
    }
    if let Some(prefix) = &p.prefix {
        cfg.prefix.clone_from(prefix);
    }
    if let Some(n) = p.pool_size {
        cfg.pool_size = n;
    }
    if let Some(t) = p.command_timeout {
        cfg.command_timeout = t;
    }
    Ok(cfg)
}

impl PresenceConfig {
    /// The backend name, as written in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            PresenceConfig::Memory => "memory",
            PresenceConfig::Redis(_) => "redis",
        }
    }
}

/// Connects the broker `cfg` names.
///
/// # Errors
/// [`Error::NotCompiled`] for a backend this build lacks; the backend's own connection errors.
#[allow(clippy::unused_async)] // real backends connect asynchronously
pub async fn connect_broker(cfg: &BrokerConfig) -> Result<Arc<dyn Broker>> {
    Ok(match cfg {
        BrokerConfig::Memory(c) => Arc::new(MemoryBroker::new(c.fanout_capacity, c.queue_capacity)),
        #[cfg(feature = "redis")]
        BrokerConfig::Redis(c) => Arc::new(impush_broker_redis::RedisBroker::connect(c).await?),
        #[allow(unreachable_patterns)] // every kind may be compiled in
        other => return Err(Error::NotCompiled(other.kind())),
    })
}

/// Connects the presence store `cfg` names (`broker` supplies defaults such as the Redis URL).
///
/// # Errors
/// [`Error::NotCompiled`] for a backend this build lacks; the backend's own connection errors.
#[allow(clippy::unused_async)]
pub async fn connect_presence(
    cfg: &PresenceConfig,
    broker: &BrokerConfig,
) -> Result<Arc<dyn PresenceStore>> {
    let _ = broker; // only Redis presence reads it
    Ok(match cfg {
        PresenceConfig::Memory => Arc::new(MemoryPresenceStore::new()),
        #[cfg(feature = "redis")]
        PresenceConfig::Redis(p) => {
            let c = redis_presence_config(p, broker)?;
            Arc::new(impush_broker_redis::RedisPresenceStore::connect(&c).await?)
        }
        #[allow(unreachable_patterns)]
        other => return Err(Error::NotCompiled(other.kind())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Root {
        broker: BrokerConfig,
        #[serde(default)]
        presence: PresenceConfig,
    }

    fn parse(toml: &str) -> std::result::Result<Root, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::new()
            .merge(Toml::string(toml))
            .extract::<Root>()
            .map_err(|e| impush_core::config::describe(&e))
    }

    #[tokio::test]
    async fn memory_is_the_default_and_connects() {
        let root = parse("[broker]\nkind = \"memory\"\nprefix = \"app\"\n").unwrap();
        assert_eq!(root.broker.prefix(), "app");
        connect_broker(&root.broker).await.unwrap();
        connect_presence(&root.presence, &root.broker)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn missing_backend_is_actionable() {
        let root = parse("[broker]\nkind = \"kafka\"\nbrokers = \"x:9092\"\n").unwrap();
        let err = connect_broker(&root.broker).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "backend `kafka` is not compiled in; rebuild with `--features kafka`"
        );
    }

    #[test]
    fn unknown_kind_lists_valid_ones_and_typos_name_the_key() {
        let err = parse("[broker]\nkind = \"nats\"\n").unwrap_err();
        assert!(err.contains("memory") && err.contains("redis"), "{err}");
        let err = parse("[broker]\nkind = \"memory\"\nprefx = \"a\"\n").unwrap_err();
        assert!(err.contains("prefx"), "{err}");
    }
}
