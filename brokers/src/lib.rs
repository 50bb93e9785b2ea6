//! impush-brokers: the registry that turns the `[broker]`, `[presence]` and `[offline]` config
//! sections into `Arc<dyn Broker>`, `Arc<dyn PresenceStore>` and `Arc<dyn OfflineStore>`.
//!
//! `kind` names an entry of a [`Backends`] registry, not a variant of a closed enum: the built-in
//! kinds are registered by one cfg-gated function ([`Backends::with_defaults`]) and a user
//! registers more in code with [`Backends::register_broker`], [`Backends::register_presence`]
//! and [`Backends::register_offline`].
//! Each factory deserialises its own options from the [`Section`]; the keys every kind shares
//! (`kind`, `prefix`) are read once, here. The server and the helper take a `Backends`, so one
//! custom broker serves both.
//!
//! Built-in kinds (each real backend is its own crate behind a Cargo feature of the same name, so
//! a memory-only build compiles no broker client; selecting a kind that is compiled out fails
//! with "backend `kafka` is not compiled in; rebuild with `--features kafka`"):
//! - brokers: `memory` (always, one process), `redis` (feature `redis`, Redis streams),
//!   `rabbitmq` (feature `rabbitmq`, lapin), `kafka` (feature `kafka`, rdkafka);
//! - presence: `memory` (always), `redis` (feature `redis`), `cluster` (always: the nodes keep
//!   it and answer each other over the broker, `impush-presence-cluster`);
//! - offline inbox: `memory` (always), `redis` (feature `redis`), `disk` (feature `disk`, a
//!   redb file per node).
//!
//! ```
//! use impush_brokers::{BackendContext, Backends, Section};
//! use impush_core::MemoryBroker;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> impush_core::Result<()> {
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct MineConfig { capacity: usize }
//!
//! let mut backends = Backends::with_defaults();
//! backends.register_broker("mine", |c: MineConfig, _ctx| async move {
//!     Ok(MemoryBroker::new(c.capacity, c.capacity))
//! });
//! let section = Section::new("mine").set("capacity", 64)?;
//! let broker = backends.connect_broker(&section, &BackendContext::new(&section)).await?;
//! broker.ping().await?;
//! # Ok(()) }
//! ```

mod builtin;
mod registry;
mod section;

pub use builtin::{MemoryBrokerConfig, MemoryOfflineConfig, MemoryPresenceConfig};
pub use registry::{BackendContext, Backends};
pub use section::{Section, DEFAULT_KIND, DEFAULT_PREFIX};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use impush_core::{Broker, Error, MemoryBroker};
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Root {
        #[serde(default)]
        broker: Section,
        #[serde(default)]
        presence: Section,
    }

    fn parse(toml: &str) -> Root {
        use figment::providers::{Format, Toml};
        figment::Figment::new()
            .merge(Toml::string(toml))
            .extract::<Root>()
            .expect("parses")
    }

    async fn start(b: &Backends, root: &Root) -> impush_core::Result<()> {
        let ctx = BackendContext::new(&root.broker);
        let broker = b.connect_broker(&root.broker, &ctx).await?;
        let mut ctx = ctx;
        ctx.broker = Some(broker);
        b.connect_presence(&root.presence, &ctx).await.map(drop)
    }

    #[tokio::test]
    async fn memory_is_the_default() {
        let root = parse("");
        assert_eq!(root.broker.kind(), "memory");
        assert_eq!(root.presence.kind(), "memory");
        assert_eq!(BackendContext::new(&root.broker).prefix, "impush");
        start(&Backends::with_defaults(), &root).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_kind_lists_the_registered_ones() {
        let err = start(
            &Backends::with_defaults(),
            &parse("[broker]\nkind = \"nats\"\n"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config key `broker.kind`: unknown broker kind `nats`"),
            "{err}"
        );
        assert!(err.contains("memory"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = start(
            &Backends::with_defaults(),
            &parse("[presence]\nkind = \"zk\"\n"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown presence kind `zk`"), "{err}");
    }

    #[tokio::test]
    async fn typos_name_the_key() {
        let err = start(
            &Backends::with_defaults(),
            &parse("[broker]\nkind = \"memory\"\nfanout_capacty = 5\n"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config key `broker.fanout_capacty`: unknown field"),
            "{err}"
        );
        let err = start(
            &Backends::with_defaults(),
            &parse("[presence]\nkind = \"memory\"\nurl = \"x\"\n"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("config key `presence.url`"), "{err}");
    }

    // Only in a build without Kafka (a workspace build unifies the server's `kafka` feature in).
    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn compiled_out_kind_names_its_feature() {
        let err = start(
            &Backends::with_defaults(),
            &parse("[broker]\nkind = \"kafka\"\nurl = \"x:9092\"\n"),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::NotCompiled(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "backend `kafka` is not compiled in; rebuild with `--features kafka`"
        );
    }

    #[tokio::test]
    async fn a_custom_kind_gets_its_options_and_the_shared_prefix() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Custom {
            capacity: usize,
        }
        let seen = Arc::new(std::sync::Mutex::new(None));
        let mut b = Backends::with_defaults();
        let record = seen.clone();
        b.register_broker("custom", move |c: Custom, ctx: BackendContext| {
            *record.lock().unwrap() = Some((c.capacity, ctx.prefix.clone()));
            async move { Ok(MemoryBroker::new(c.capacity, c.capacity)) }
        });
        assert!(b.broker_kinds().contains(&"custom"));
        start(
            &b,
            &parse("[broker]\nkind = \"custom\"\nprefix = \"app\"\ncapacity = 7\n"),
        )
        .await
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), Some((7, "app".to_owned())));
    }

    #[tokio::test]
    async fn a_failing_factory_names_its_kind() {
        let mut b = Backends::empty();
        b.register_broker("flaky", |_: MemoryBrokerConfig, _| async move {
            Err::<MemoryBroker, _>(Error::Unavailable {
                backend: "flaky",
                source: Some("cannot connect to flaky://db:1".into()),
            })
        });
        let section = Section::new("flaky");
        let err = b
            .connect_broker(&section, &BackendContext::new(&section))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "cannot start broker `flaky`");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(cause, "flaky is unavailable");
        assert!(err.is_transient());
    }

    #[test]
    fn an_empty_registry_has_nothing() {
        let b = Backends::empty();
        assert!(b.broker_kinds().is_empty() && b.presence_kinds().is_empty());
        let _: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    }
}
