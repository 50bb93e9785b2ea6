//! The conformance suite against the in-process backends (always runs: nothing to install).

use std::sync::Arc;

use impush_core::{
    Broker, MemoryBroker, MemoryOfflineStore, MemoryPresenceStore, OfflineStore, PresenceStore,
};

// The macros want `async fn() -> Option<..>`; the memory backends need nothing awaited.
#[allow(clippy::unused_async)]
async fn broker() -> Option<Arc<dyn Broker>> {
    Some(Arc::new(MemoryBroker::default()))
}

#[allow(clippy::unused_async)]
async fn presence() -> Option<Arc<dyn PresenceStore>> {
    Some(Arc::new(MemoryPresenceStore::new()))
}

#[allow(clippy::unused_async)]
async fn offline() -> Option<Arc<dyn OfflineStore>> {
    Some(Arc::new(MemoryOfflineStore::new(
        impush_tests::OFFLINE_LIMITS,
    )))
}

impush_tests::broker_conformance!(broker);
impush_tests::offline_conformance!(offline);
impush_tests::presence_conformance!(presence);

#[tokio::test]
async fn a_large_inbox_is_fetched_whole() {
    let store = MemoryOfflineStore::new(impush_tests::LARGE_INBOX_LIMITS);
    impush_tests::offline_large_inbox_is_fetched_whole(&store, &impush_tests::unique_ns()).await;
}
