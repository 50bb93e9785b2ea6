//! The cluster cases: one `pub async fn` per behaviour, taking the [`Backend`] to run over.
//! Which backbones run which case is decided by the groups of
//! [`cluster_suite!`](crate::cluster_suite), in `cluster/mod.rs`.
//!
//! [`Backend`]: super::harness::Backend

mod broker;
mod delivery;
mod device;
mod failover;
mod floods;
mod links;
mod nodes;
mod partitions;
mod rolling;

pub use broker::*;
pub use delivery::*;
pub use device::*;
pub use failover::*;
pub use floods::*;
pub use links::*;
pub use nodes::*;
pub use partitions::*;
pub use rolling::*;
