//! In-process backends: [`MemoryBroker`] and [`MemoryPresenceStore`].
//!
//! They make the embedded single-node default work with nothing installed, and they are the
//! reference implementations the conformance suite is first run against.

mod broker;
mod presence;

pub use broker::MemoryBroker;
pub use presence::MemoryPresenceStore;
