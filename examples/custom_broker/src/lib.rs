#![doc = include_str!("../README.md")]

mod broker;
mod config;
mod error;
mod fanout;
mod naming;
mod queue;

pub use broker::NatsBroker;
pub use config::{NatsConfig, Storage};

use impush_brokers::{BackendContext, Backends};

/// Registers broker kind `nats` in `backends`, as `src/main.rs` does: `[broker] kind = "nats"`
/// then starts a [`NatsBroker`] from the section's options ([`NatsConfig`]).
///
/// The nodes and the helpers of a cluster need the same registrations; a business backend
/// calls this on the registry it gives `ImHelper::builder(..).backends(..)`.
///
/// ```
/// let mut backends = impush_brokers::Backends::with_defaults();
/// impush_example_nats::register(&mut backends);
/// assert!(backends.broker_kinds().contains(&"nats"));
/// ```
pub fn register(backends: &mut Backends) -> &mut Backends {
    backends.register_broker("nats", |cfg: NatsConfig, ctx: BackendContext| async move {
        NatsBroker::connect_for(&cfg, &ctx).await
    })
}
