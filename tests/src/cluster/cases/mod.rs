//! The cluster cases: one `pub async fn` per behaviour, taking the [`Backend`] to run over.
//! Which backbones run which case is decided by the groups of
//! [`cluster_suite!`](crate::cluster_suite), in `cluster/mod.rs`.
//!
//! [`Backend`]: super::harness::Backend

mod broker;
mod delivery;
mod device;
mod floods;
mod links;
mod nodes;

pub use broker::*;
pub use delivery::*;
pub use device::*;
pub use floods::*;
pub use links::*;
pub use nodes::*;
