//! The conformance suite against the in-process backends (always runs: nothing to install).

use std::sync::Arc;

use impush_core::{
    Broker, InboxLimits, MemoryBroker, MemoryOfflineStore, MemoryPresenceStore, OfflineStore,
    PresenceStore,
};

// The macros want `async fn(..) -> Option<..>`; the memory backends need nothing awaited.
#[allow(clippy::unused_async)]
async fn broker() -> Option<Arc<dyn Broker>> {
    Some(Arc::new(MemoryBroker::default()))
}

#[allow(clippy::unused_async)]
async fn presence() -> Option<Arc<dyn PresenceStore>> {
    Some(Arc::new(MemoryPresenceStore::new()))
}

#[allow(clippy::unused_async)]
async fn offline(limits: InboxLimits) -> Option<Arc<dyn OfflineStore>> {
    Some(Arc::new(MemoryOfflineStore::new(limits)))
}

impush_tests::broker_conformance!(broker);
impush_tests::offline_conformance!(offline);
impush_tests::presence_conformance!(presence);
