//! impush's test kit: the conformance suites every backend runs, the multi-process cluster
//! suite every backbone runs, and the tools they are made of.
//!
//! # Conformance suites
//!
//! Each behaviour is a `pub async fn` taking the trait object (`&dyn Broker`,
//! `&dyn PresenceStore` or `&dyn OfflineStore`) and a namespace from [`unique_ns`]. A backend's
//! test file calls [`broker_conformance!`], [`presence_conformance!`] or
//! [`offline_conformance!`] with an async `setup` function; the macros expand to one
//! `#[tokio::test]` per behaviour, so failures are named per case:
//!
//! ```ignore
//! async fn setup() -> Option<Arc<dyn Broker>> {
//!     let url = impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL")?;
//!     Some(Arc::new(RedisBroker::connect(&RedisConfig::from_url(&url)).await.expect("connect")))
//! }
//! impush_tests::broker_conformance!(setup);
//! ```
//!
//! Rules every case follows, so that it can run against a real, shared broker or store:
//! - every topic, queue group, client id, channel name, node id and connection id contains the
//!   namespace, and global listings (`online_clients`, `channels`) are filtered to it;
//! - every call and every receive is wrapped in [`tokio::time::timeout`], so a broken backend
//!   fails instead of hanging;
//! - an `Err` item on a subscription (e.g. `Error::Lagged`) fails the test;
//! - only what the trait contracts in `impush-core` state is asserted.
//!
//! # The cluster suite (feature `cluster`)
//!
//! `cluster` holds real node processes over a real broker and the cases run against them
//! (`cluster_suite!`); see its module docs. It is a feature because it brings an HTTP client, a
//! WebSocket client and `impush-helper`, which a crate that only runs the conformance suites
//! does not need.
//!
//! # Layout
//!
//! [`support`] (skips, namespaces, ports, waiting), `broker`, `presence` and `offline` (the
//! cases, all re-exported here, where the macros find them), `macros`, [`proxy`] (a TCP proxy
//! that injects link faults) and `cluster`.

pub mod support;

mod broker;
mod macros;
mod offline;
mod presence;
pub mod proxy;

#[cfg(feature = "cluster")]
pub mod cluster;

pub use broker::*;
pub use offline::*;
pub use presence::*;
pub use support::*;

/// Re-exported so that the macros work in crates that do not depend on tokio.
pub use tokio;
