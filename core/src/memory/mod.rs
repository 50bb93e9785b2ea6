//! In-process backends: [`MemoryBroker`], [`MemoryPresenceStore`] and [`MemoryOfflineStore`].
//!
//! They make the embedded single-node default work with nothing installed, and they are the
//! reference implementations the conformance suite is first run against.

mod broker;
mod offline;
mod presence;

pub use broker::MemoryBroker;
pub use offline::MemoryOfflineStore;
pub use presence::MemoryPresenceStore;
