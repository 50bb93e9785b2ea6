//! The [`OfflineStore`] cases ([`offline_conformance!`](crate::offline_conformance)).

use std::time::Duration;

use impush_core::{InboxLimits, MessageId, OfflineStore, StoredMessage};

use crate::support::{call, client};

/// The bounds an [`OfflineStore`] under test must be built with (the cases depend on them).
pub const OFFLINE_LIMITS: InboxLimits = InboxLimits {
    ttl: Duration::from_secs(3),
    max_per_client: 5,
    max_bytes: 2000,
};

/// A message of about `size` bytes (see [`StoredMessage::size`]) sent `age_ms` ago.
fn stored(ns: &str, n: u32, age_ms: u64, size: usize) -> StoredMessage {
    let id = MessageId::new(format!("{ns}-m{n:04}")).expect("valid message id");
    let from = client(ns, "sender");
    let pad = size.saturating_sub(id.as_str().len() + from.as_str().len() + 16 + 2);
    let data = serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(pad)))
        .expect("valid JSON");
    let ts = impush_core::envelope::now_ms() - age_ms;
    StoredMessage {
        id,
        from,
        data,
        ts,
        receipt: n % 2 == 0,
        written: false,
    }
}

fn ids(msgs: &[StoredMessage]) -> Vec<String> {
    msgs.iter().map(|m| m.id.to_string()).collect()
}

/// Messages [`offline_large_inbox_is_fetched_whole`] stores: more than a Redis script can
/// `unpack()` at once (about 8,000).
pub const LARGE_INBOX: u32 = 9_000;

/// The bounds a store under [`offline_large_inbox_is_fetched_whole`] must be built with.
pub const LARGE_INBOX_LIMITS: InboxLimits = InboxLimits {
    ttl: Duration::from_secs(120),
    max_per_client: LARGE_INBOX as usize,
    max_bytes: 16 << 20,
};

/// An inbox of thousands comes back whole and in order from one fetch (a client returning to
/// a full inbox gets it all). Needs a store built with [`LARGE_INBOX_LIMITS`] (the macro asks
/// `setup` for one).
pub async fn offline_large_inbox_is_fetched_whole(s: &dyn OfflineStore, ns: &str) {
    let alice = client(ns, "alice");
    for n in 0..LARGE_INBOX {
        let r = call("store", s.store(&alice, stored(ns, n, 0, 60))).await;
        assert!(r.kept && r.evicted == 0, "message {n}: {r:?}");
    }
    let all = call("fetch", s.fetch(&alice, LARGE_INBOX as usize)).await;
    assert_eq!(all.len(), LARGE_INBOX as usize);
    let expected: Vec<String> = (0..LARGE_INBOX).map(|n| format!("{ns}-m{n:04}")).collect();
    let got: Vec<String> = all.iter().map(|m| m.id.as_str().to_owned()).collect();
    assert!(got == expected, "the inbox came back out of order");
}

/// Messages come back oldest first (by send time), whatever order they were stored in, each
/// field intact; `limit` caps a fetch; stats count them.
pub async fn offline_returns_oldest_first(s: &dyn OfflineStore, ns: &str) {
    let alice = client(ns, "alice");
    let (older, newer, newest) = (
        stored(ns, 1, 300, 100),
        stored(ns, 2, 200, 100),
        stored(ns, 3, 100, 100),
    );
    for m in [&newer, &newest, &older] {
        let r = call("store", s.store(&alice, m.clone())).await;
        assert!(r.kept && r.evicted == 0, "{r:?}");
    }
    let all = call("fetch", s.fetch(&alice, 10)).await;
    assert_eq!(all, vec![older.clone(), newer.clone(), newest.clone()]);
    assert_eq!(
        ids(&call("fetch 2", s.fetch(&alice, 2)).await),
        ids(&all[..2])
    );
    let st = call("stats", s.stats(&alice)).await;
    assert_eq!(st.count, 3);
    assert_eq!(st.bytes, older.size() + newer.size() + newest.size());
    assert_eq!(st.oldest_ts, Some(older.ts));
    // Storing an id again changes nothing.
    call("store again", s.store(&alice, newer.clone())).await;
    assert_eq!(call("fetch after dup", s.fetch(&alice, 10)).await.len(), 3);
}

/// Beyond `max_per_client` messages or `max_bytes`, the oldest go first and are counted; a
/// message larger than `max_bytes` alone is not kept.
pub async fn offline_bounds_drop_the_oldest(s: &dyn OfflineStore, ns: &str) {
    let alice = client(ns, "alice");
    let msgs: Vec<StoredMessage> = (0..7)
        .map(|i| stored(ns, i, 1000 - u64::from(i) * 10, 100))
        .collect();
    let mut evicted = 0;
    for m in &msgs {
        evicted += call("store", s.store(&alice, m.clone())).await.evicted;
    }
    assert_eq!(evicted, 2, "two over max_per_client = 5");
    assert_eq!(
        ids(&call("fetch", s.fetch(&alice, 10)).await),
        ids(&msgs[2..])
    );

    let bob = client(ns, "bob");
    let big: Vec<StoredMessage> = (10..14)
        .map(|i| stored(ns, i, 1000 - u64::from(i), 600))
        .collect();
    let mut evicted = 0;
    for m in &big {
        evicted += call("store big", s.store(&bob, m.clone())).await.evicted;
    }
    let kept = call("fetch bob", s.fetch(&bob, 10)).await;
    assert_eq!(
        ids(&kept),
        ids(&big[1..]),
        "3 x 600 fit in 2000 bytes, 4 do not"
    );
    assert_eq!(evicted, 1);
    assert!(call("stats bob", s.stats(&bob)).await.bytes <= OFFLINE_LIMITS.max_bytes);

    let huge = stored(ns, 20, 10, 5000);
    let r = call("store huge", s.store(&bob, huge)).await;
    assert!(!r.kept, "a message larger than max_bytes is not kept");
    assert_eq!(
        ids(&call("fetch bob again", s.fetch(&bob, 10)).await),
        ids(&kept)
    );
}

/// Acked ids go; unknown ids are harmless; clear empties and says how many there were; clients
/// are separate.
pub async fn offline_remove_and_clear(s: &dyn OfflineStore, ns: &str) {
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let msgs: Vec<StoredMessage> = (0..4)
        .map(|i| stored(ns, i, 500 - u64::from(i), 50))
        .collect();
    for m in &msgs {
        call("store", s.store(&alice, m.clone())).await;
    }
    call("store bob", s.store(&bob, msgs[0].clone())).await;
    let unknown = MessageId::new(format!("{ns}-nope")).expect("valid id");
    call(
        "remove",
        s.remove(
            &alice,
            &[msgs[1].id.clone(), unknown.clone(), msgs[3].id.clone()],
        ),
    )
    .await;
    assert_eq!(
        ids(&call("fetch", s.fetch(&alice, 10)).await),
        ids(&[msgs[0].clone(), msgs[2].clone()])
    );
    assert_eq!(call("bob untouched", s.fetch(&bob, 10)).await.len(), 1);
    call(
        "remove from nobody",
        s.remove(&client(ns, "nobody"), &[unknown]),
    )
    .await;
    assert_eq!(call("clear", s.clear(&alice)).await, 2);
    assert!(call("fetch cleared", s.fetch(&alice, 10)).await.is_empty());
    assert_eq!(
        call("stats cleared", s.stats(&alice)).await,
        impush_core::InboxStats::default()
    );
    assert_eq!(call("clear empty", s.clear(&alice)).await, 0);
    assert_eq!(call("clear bob", s.clear(&bob)).await, 1);
}

/// Messages older than the TTL are not kept, and stored ones disappear when they reach it.
pub async fn offline_messages_expire(s: &dyn OfflineStore, ns: &str) {
    let alice = client(ns, "alice");
    let ttl_ms = OFFLINE_LIMITS.ttl.as_millis() as u64;
    let stale = stored(ns, 1, ttl_ms + 1000, 50);
    assert!(!call("store stale", s.store(&alice, stale)).await.kept);
    let soon = stored(ns, 2, ttl_ms - 1000, 50); // a second left
    let fresh = stored(ns, 3, 0, 50);
    call("store soon", s.store(&alice, soon.clone())).await;
    call("store fresh", s.store(&alice, fresh.clone())).await;
    assert_eq!(call("fetch", s.fetch(&alice, 10)).await.len(), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = call("fetch", s.fetch(&alice, 10)).await;
        if ids(&now) == ids(std::slice::from_ref(&fresh)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired: {:?}",
            ids(&now)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call("stats", s.stats(&alice)).await.count, 1);
}

/// `ping` succeeds on a working store.
pub async fn offline_ping_succeeds(s: &dyn OfflineStore, _ns: &str) {
    call("ping", s.ping()).await;
}

// ---------------------------------------------------------------------------------------------
// Macros

/// A store kept per node lists the clients with messages waiting (so an inbox can follow its
/// client to another node); a shared store may list none.
pub async fn offline_lists_clients_with_messages(s: &dyn OfflineStore, ns: &str) {
    let (alice, bob, carol) = (client(ns, "alice"), client(ns, "bob"), client(ns, "carol"));
    let m = stored(ns, 0, 100, 50);
    call("store alice", s.store(&alice, m.clone())).await;
    call("store bob", s.store(&bob, m.clone())).await;
    let mine = |all: Vec<impush_core::ClientId>| -> Vec<impush_core::ClientId> {
        all.into_iter()
            .filter(|c| [&alice, &bob, &carol].contains(&c))
            .collect()
    };
    let listed = mine(call("clients", s.clients(100_000)).await);
    if s.is_shared() {
        return;
    }
    assert_eq!(listed, vec![alice.clone(), bob.clone()]);
    call("clear alice", s.clear(&alice)).await;
    assert_eq!(
        mine(call("clients", s.clients(100_000)).await),
        vec![bob.clone()]
    );
    assert!(
        call("limit", s.clients(0)).await.is_empty(),
        "the limit holds"
    );
    call("clear bob", s.clear(&bob)).await;
}
