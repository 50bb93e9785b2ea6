//! The offline store conformance suite against the local-disk store (redb), one fresh file per
//! test.

use std::sync::Arc;

use impush_core::{InboxLimits, OfflineStore};
use impush_offline_disk::{DiskOfflineConfig, DiskOfflineStore};

/// A config for a new file in a directory of its own (returned for cleaning up).
fn fresh_file() -> (std::path::PathBuf, DiskOfflineConfig) {
    let dir = std::env::temp_dir().join(format!("impush-disk-{}", impush_tests::unique_ns()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = DiskOfflineConfig {
        path: dir.join("offline.redb"),
    };
    (dir, cfg)
}

async fn offline(limits: InboxLimits) -> Option<Arc<dyn OfflineStore>> {
    let (dir, cfg) = fresh_file();
    let store = DiskOfflineStore::open(&cfg, limits)
        .await
        .expect("open the file");
    // The suite hands the store away, so nothing would remove the directory afterwards. Once
    // open, the file lives on (unlinked) until the store is dropped.
    std::fs::remove_dir_all(&dir).expect("remove the temp dir");
    Some(Arc::new(store))
}

impush_tests::offline_conformance!(offline);

/// What the disk store adds: the inbox survives the process (the file is reopened).
#[tokio::test]
async fn inboxes_survive_a_reopen() {
    use impush_core::{ClientId, MessageId, StoredMessage};
    let (dir, cfg) = fresh_file();
    let alice: ClientId = "alice".parse().expect("id");
    let msg = StoredMessage {
        id: MessageId::new("m1").expect("id"),
        from: "bob".parse().expect("id"),
        data: serde_json::value::RawValue::from_string("{\"t\":1}".into()).expect("json"),
        ts: impush_core::envelope::now_ms(),
        receipt: true,
        written: false,
    };
    {
        let s = DiskOfflineStore::open(&cfg, impush_tests::OFFLINE_LIMITS)
            .await
            .expect("open");
        assert!(s.store(&alice, msg.clone()).await.expect("store").kept);
    }
    let s = DiskOfflineStore::open(&cfg, impush_tests::OFFLINE_LIMITS)
        .await
        .expect("reopen");
    assert_eq!(s.fetch(&alice, 10).await.expect("fetch"), vec![msg]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A path that cannot be a database is a clear error naming it.
#[tokio::test]
async fn a_bad_path_names_the_file() {
    let cfg = DiskOfflineConfig {
        path: "/nonexistent-dir/x/offline.redb".into(),
    };
    let err = DiskOfflineStore::open(&cfg, impush_tests::OFFLINE_LIMITS)
        .await
        .expect_err("cannot create");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(chain.contains("/nonexistent-dir/x/offline.redb"), "{chain}");
}
