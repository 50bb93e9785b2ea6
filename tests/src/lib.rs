//! The impush conformance suite: one set of behaviours, run against every backend.
//!
//! Each behaviour is a `pub async fn` taking the trait object (`&dyn Broker` or
//! `&dyn PresenceStore`) and a namespace from [`unique_ns`], in the style of object_store's
//! `integration` module. A backend's test file calls [`broker_conformance!`] or
//! [`presence_conformance!`] with an async `setup` function; the macros expand to one
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

use std::{
    collections::BTreeSet,
    fmt::Debug,
    future::Future,
    io::Write,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{
    Broker, ChannelInfo, ChannelName, ClientId, ConnectionId, Delivery, DroppedConnection,
    InboxLimits, MessageId, NodeId, OfflineStore, PresenceStore, Result, StoredMessage,
    SubscribeMode, Subscription,
};

/// Re-exported so that the conformance macros work in crates that do not depend on tokio.
pub use tokio;

/// How long a case waits for one expected message before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a case waits for any single call (publish, subscribe, a presence query) to return.
/// Generous, because joining a consumer group (Kafka) can take several seconds.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a case watches a subscription to make sure that nothing more arrives.
pub const QUIET_PERIOD: Duration = Duration::from_millis(500);
/// How long an unacked queue delivery may take to reach another member after its subscription
/// ended. Backends that redeliver after an idle timeout must be configured below it in their
/// test setup (Redis: `claim_idle = 1s` in `tests/redis.rs`).
pub const REDELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns the value of the environment variable `var`, or `None` after printing
/// `SKIPPED: set {var} to run this test` to stderr.
///
/// The message goes to [`std::io::stderr`] directly, not through `eprintln!`, so libtest does not
/// capture it and a skip shows up in normal `cargo test` output.
///
/// # Panics
/// When `var` is unset and `IMPUSH_REQUIRE_BROKERS` is set (CI with real brokers running), so a
/// missing URL fails instead of silently skipping.
pub fn env_or_skip(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) if std::env::var_os("IMPUSH_REQUIRE_BROKERS").is_some() => {
            panic!("{var} must be set (IMPUSH_REQUIRE_BROKERS is set)")
        }
        Err(_) => {
            let _ = writeln!(std::io::stderr(), "SKIPPED: set {var} to run this test");
            None
        }
    }
}

/// A namespace unique to this call: `t{pid}x{nanos since the epoch}x{counter}`.
///
/// It only uses ASCII letters and digits, so it fits every id kind (node ids allow only
/// `[A-Za-z0-9._-]`) and every broker's topic and queue naming rules. Cases append `-` or `.`
/// and a suffix, so one namespace is never a prefix of another's ids.
pub fn unique_ns() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{}x{nanos}x{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Awaits `fut` within [`CALL_TIMEOUT`] and unwraps its `Ok` value; panics naming `what` on an
/// error or a timeout.
pub async fn call<T, F>(what: &str, fut: F) -> T
where
    F: Future<Output = Result<T>>,
{
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: failed: {e} ({e:?})"),
        Err(_) => panic!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

/// Receives the next delivery from `sub` within `within`, without acking it.
///
/// # Panics
/// On a timeout, on an `Err` item (a lagging backend fails the test) and when the stream ends.
pub async fn recv_delivery(sub: &mut Subscription, within: Duration, what: &str) -> Delivery {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("{what}: subscription yielded an error: {e} ({e:?})"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: nothing received within {within:?}"),
    }
}

/// Receives the next payload from `sub` within [`RECV_TIMEOUT`] and acks it.
///
/// # Panics
/// As [`recv_delivery`].
pub async fn recv(sub: &mut Subscription, what: &str) -> Bytes {
    recv_delivery(sub, RECV_TIMEOUT, what).await.ack()
}

/// Receives `n` payloads from `sub` (each within [`RECV_TIMEOUT`]), in arrival order.
pub async fn recv_n(sub: &mut Subscription, n: usize, what: &str) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(recv(sub, &format!("{what} (message {i} of {n})")).await);
    }
    out
}

/// Asserts that nothing arrives on `sub` during [`QUIET_PERIOD`] and that it stays open.
pub async fn expect_quiet(sub: &mut Subscription, what: &str) {
    expect_quiet_for(sub, QUIET_PERIOD, what).await;
}

/// Asserts that nothing arrives on `sub` during `period` and that it stays open (a subscription
/// that ended would also "receive nothing", and hide a late duplicate).
pub async fn expect_quiet_for(sub: &mut Subscription, period: Duration, what: &str) {
    match tokio::time::timeout(period, sub.next()).await {
        Err(_) => {}
        Ok(Some(item)) => panic!("{what}: expected nothing more, got {item:?}"),
        Ok(None) => panic!("{what}: the subscription ended while it should stay open"),
    }
}

async fn subscribe(b: &dyn Broker, topic: &str, mode: SubscribeMode) -> Subscription {
    let what = format!("subscribe({topic}, {mode:?})");
    call(&what, b.subscribe(topic, mode)).await
}

async fn publish(b: &dyn Broker, topic: &str, payload: impl Into<Bytes>) {
    call(
        &format!("publish({topic})"),
        b.publish(topic, payload.into()),
    )
    .await;
}

fn queue(group: String) -> SubscribeMode {
    SubscribeMode::Queue { group }
}

/// `prefix0`, `prefix1`, ... as payloads.
fn numbered(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}{i}")))
        .collect()
}

fn sorted(mut v: Vec<Bytes>) -> Vec<Bytes> {
    v.sort();
    v
}

/// Compares payload lists without printing megabytes on failure.
#[track_caller]
fn assert_payloads(got: &[Bytes], want: &[Bytes], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: wrong number of messages");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let show = |b: &Bytes| {
                if b.len() > 64 {
                    format!("{} bytes starting {:?}", b.len(), b.slice(..64))
                } else {
                    format!("{b:?}")
                }
            };
            panic!(
                "{what}: message {i} differs: got {}, want {}",
                show(g),
                show(w)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Broker cases
// ---------------------------------------------------------------------------------------------

/// Every fanout subscriber of a topic receives every message, in publish order.
pub async fn fanout_reaches_every_subscriber(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.fanout");
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(subscribe(b, &topic, SubscribeMode::Fanout).await);
    }
    let msgs = numbered("m", 5);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    for (k, sub) in subs.iter_mut().enumerate() {
        let got = recv_n(sub, msgs.len(), &format!("subscriber {k}")).await;
        assert_payloads(&got, &msgs, &format!("subscriber {k}"));
    }
    for (k, sub) in subs.iter_mut().enumerate() {
        expect_quiet(sub, &format!("subscriber {k}")).await;
    }
}

/// A fanout subscriber gets only messages published after its `subscribe` returned.
pub async fn fanout_delivers_only_messages_published_after_subscribe(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.fanout");
    // Nobody is listening: at-most-once fanout may drop this.
    publish(b, &topic, "before-anyone").await;
    let mut early = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "after-early").await;
    let mut late = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "after-late").await;

    assert_eq!(recv(&mut early, "early").await, "after-early");
    assert_eq!(recv(&mut early, "early").await, "after-late");
    assert_eq!(recv(&mut late, "late").await, "after-late");
    expect_quiet(&mut early, "early").await;
    expect_quiet(&mut late, "late").await;
}

/// Messages from one publisher on one topic arrive in publish order (1000 messages).
pub async fn fanout_preserves_publisher_order(b: &dyn Broker, ns: &str) {
    const N: usize = 1000;
    let topic = format!("{ns}.order");
    let mut sub = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let msgs = numbered("", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got = recv_n(&mut sub, N, "ordered subscriber").await;
    assert_payloads(&got, &msgs, "ordered subscriber");
    expect_quiet(&mut sub, "ordered subscriber (no late duplicate)").await;
}

/// Many publishes in flight at once on one topic (as a busy helper makes them) all arrive,
/// each exactly once, to fanout and queue subscribers alike; each publisher's own messages
/// keep their order.
pub async fn concurrent_publishes_all_arrive_once(b: &dyn Broker, ns: &str) {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 100;
    let topic = format!("{ns}.concurrent");
    let mut fan = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-cq"))).await;
    let publishers = (0..PUBLISHERS).map(|p| {
        let topic = topic.clone();
        async move {
            for m in numbered(&format!("p{p}-"), EACH) {
                publish(b, &topic, m).await;
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    for (sub, what) in [(&mut fan, "fanout"), (&mut q, "queue")] {
        let got = recv_n(sub, PUBLISHERS * EACH, what).await;
        for p in 0..PUBLISHERS {
            let prefix = format!("p{p}-");
            let mine: Vec<Bytes> = got
                .iter()
                .filter(|m| m.starts_with(prefix.as_bytes()))
                .cloned()
                .collect();
            assert_payloads(
                &mine,
                &numbered(&prefix, EACH),
                &format!("{what}, publisher {p}"),
            );
        }
    }
    expect_quiet(&mut fan, "fanout (no late duplicate)").await;
    expect_quiet(&mut q, "queue (no late duplicate)").await;
}

/// Messages stay on their topic, also for topics whose names are prefixes of each other, and
/// a queue group name used on two topics is two independent groups.
pub async fn topics_are_isolated(b: &dyn Broker, ns: &str) {
    let topics = [format!("{ns}.a"), format!("{ns}.b"), format!("{ns}.a.b")];
    let group = format!("{ns}-shared-group");
    let mut fanout = Vec::new();
    let mut queues = Vec::new();
    for t in &topics {
        fanout.push(subscribe(b, t, SubscribeMode::Fanout).await);
        queues.push(subscribe(b, t, queue(group.clone())).await);
    }
    for t in &topics {
        publish(b, t, format!("only-{t}")).await;
    }
    // A marker after the real message: receiving it right after our own message proves that no
    // other topic's message got in between.
    for t in &topics {
        publish(b, t, format!("end-{t}")).await;
    }
    for (i, t) in topics.iter().enumerate() {
        let want = vec![
            Bytes::from(format!("only-{t}")),
            Bytes::from(format!("end-{t}")),
        ];
        let got = recv_n(&mut fanout[i], 2, &format!("fanout on {t}")).await;
        assert_payloads(&got, &want, &format!("fanout on {t}"));
        let got = recv_n(&mut queues[i], 2, &format!("queue on {t}")).await;
        assert_payloads(&sorted(got), &sorted(want), &format!("queue on {t}"));
    }
    for (i, t) in topics.iter().enumerate() {
        expect_quiet(&mut fanout[i], &format!("fanout on {t}")).await;
        expect_quiet(&mut queues[i], &format!("queue on {t}")).await;
    }
}

/// Two members of one queue group: every message reaches exactly one of them (the union is
/// every message, with no duplicates). How the work is split is up to the backend.
pub async fn queue_delivers_each_message_to_one_member(b: &dyn Broker, ns: &str) {
    const N: usize = 200;
    let topic = format!("{ns}.work");
    let group = format!("{ns}-workers");
    let m0 = subscribe(b, &topic, queue(group.clone())).await;
    let m1 = subscribe(b, &topic, queue(group.clone())).await;
    // Merge the two members into one stream, tagging each payload with a leading member byte.
    let tag = |member: u8| {
        move |item: Result<Delivery>| {
            item.map(|d| {
                let (p, acker) = d.into_parts();
                let mut v = Vec::with_capacity(p.len() + 1);
                v.push(member);
                v.extend_from_slice(&p);
                Delivery::with_ack(Bytes::from(v), acker)
            })
        }
    };
    let mut both: Subscription =
        futures_util::stream::select(m0.map(tag(0)), m1.map(tag(1))).boxed();
    let msgs = numbered("job-", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let tagged = recv_n(&mut both, N, "queue group").await;
    expect_quiet(&mut both, "queue group (after every message arrived once)").await;

    let mut per_member = [0usize; 2];
    let mut got = Vec::with_capacity(N);
    for t in tagged {
        let (member, payload) = untag(&t);
        per_member[member] += 1;
        got.push(payload);
    }
    let unique: BTreeSet<&Bytes> = got.iter().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "queue group: a message was delivered twice (split {per_member:?})"
    );
    assert_payloads(&sorted(got), &sorted(msgs), "queue group union");
}

fn untag(tagged: &Bytes) -> (usize, Bytes) {
    let member = *tagged.first().expect("a tagged payload has a member byte");
    (usize::from(member), tagged.slice(1..))
}

/// Two different queue groups on one topic each get every message.
pub async fn queue_groups_each_get_every_message(b: &dyn Broker, ns: &str) {
    const N: usize = 50;
    let topic = format!("{ns}.jobs");
    let mut g1 = subscribe(b, &topic, queue(format!("{ns}-g1"))).await;
    let mut g2 = subscribe(b, &topic, queue(format!("{ns}-g2"))).await;
    let msgs = numbered("job-", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got1 = recv_n(&mut g1, N, "group g1").await;
    let got2 = recv_n(&mut g2, N, "group g2").await;
    assert_payloads(&sorted(got1), &sorted(msgs.clone()), "group g1");
    assert_payloads(&sorted(got2), &sorted(msgs), "group g2");
    expect_quiet(&mut g1, "group g1").await;
    expect_quiet(&mut g2, "group g2").await;
}

/// Messages published while a queue group has no member (it had one, which was dropped) wait
/// and are delivered to the next member that subscribes.
pub async fn queue_retains_messages_while_group_has_no_member(b: &dyn Broker, ns: &str) {
    const N: usize = 10;
    let topic = format!("{ns}.inbox");
    let group = format!("{ns}-node");
    // Subscribing once creates the group; dropping the subscription leaves it memberless.
    drop(subscribe(b, &topic, queue(group.clone())).await);
    let msgs = numbered("waiting-", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let mut next = subscribe(b, &topic, queue(group)).await;
    let got = recv_n(&mut next, N, "next member").await;
    assert_payloads(&sorted(got), &sorted(msgs), "next member");
    expect_quiet(&mut next, "next member").await;
}

/// A fanout subscriber and a queue group on the same topic both receive every message.
pub async fn fanout_and_queue_on_same_topic_both_receive(b: &dyn Broker, ns: &str) {
    const N: usize = 10;
    let topic = format!("{ns}.mixed");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    let msgs = numbered("m", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got_f = recv_n(&mut f, N, "fanout subscriber").await;
    assert_payloads(&got_f, &msgs, "fanout subscriber");
    let got_q = recv_n(&mut q, N, "queue member").await;
    assert_payloads(&sorted(got_q), &sorted(msgs), "queue member");
    expect_quiet(&mut f, "fanout subscriber").await;
    expect_quiet(&mut q, "queue member").await;
}

/// Dropping a subscription unsubscribes: publishing keeps working (also well past any
/// per-subscriber buffer a dropped subscriber could have filled) and other subscribers still
/// receive.
pub async fn dropping_subscription_unsubscribes(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.drop");
    let gone = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut kept = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "both").await;
    drop(gone);
    publish(b, &topic, "after-drop").await;
    assert_eq!(recv(&mut kept, "kept subscriber").await, "both");
    assert_eq!(recv(&mut kept, "kept subscriber").await, "after-drop");

    // Everyone gone: publishing still succeeds and does not block.
    drop(kept);
    for m in numbered("nobody-", 100) {
        publish(b, &topic, m).await;
    }
    // And a new subscriber starts fresh.
    let mut fresh = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "fresh").await;
    assert_eq!(recv(&mut fresh, "fresh subscriber").await, "fresh");
}

/// Payloads come out byte for byte as they went in: empty, every byte value, invalid UTF-8,
/// multi-byte UTF-8; through fanout and through a queue group.
pub async fn payloads_are_byte_exact(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.bytes");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let msgs = vec![
        Bytes::new(),
        Bytes::from(all_bytes.clone()),
        Bytes::from(all_bytes.into_iter().rev().collect::<Vec<u8>>()),
        Bytes::from_static(b"\0"),
        Bytes::from_static(b"\xff\xfe\x00not utf-8\x80"),
        Bytes::from("用户 ✓ \r\n\t \"quoted\" {json}".to_owned()),
        Bytes::from_static(b"   "),
    ];
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got_f = recv_n(&mut f, msgs.len(), "fanout").await;
    assert_payloads(&got_f, &msgs, "fanout");
    let got_q = recv_n(&mut q, msgs.len(), "queue").await;
    assert_payloads(&sorted(got_q), &sorted(msgs), "queue");
    expect_quiet(&mut f, "fanout (no late duplicate)").await;
    expect_quiet(&mut q, "queue (no late duplicate)").await;
}

/// A 1 MiB payload comes out byte for byte, through fanout and through a queue group.
pub async fn large_payload_is_byte_exact(b: &dyn Broker, ns: &str) {
    const SIZE: usize = 1024 * 1024;
    let topic = format!("{ns}.large");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    // A pattern that is not periodic in any power of two, so a misplaced chunk shows.
    let big: Bytes = (0..SIZE)
        .map(|i| u8::try_from((i * 31 + i / 251) % 251).expect("below 251"))
        .collect::<Vec<u8>>()
        .into();
    publish(b, &topic, big.clone()).await;
    let got_f = recv(&mut f, "fanout").await;
    assert_payloads(&[got_f], std::slice::from_ref(&big), "fanout");
    let got_q = recv(&mut q, "queue").await;
    assert_payloads(&[got_q], &[big], "queue");
    expect_quiet(&mut f, "fanout (no late duplicate)").await;
    expect_quiet(&mut q, "queue (no late duplicate)").await;
}

/// At-least-once: what a member received but did not ack when its subscription ended goes to
/// the next member of the group, and what it acked does not.
pub async fn queue_redelivers_unacked_when_member_leaves(b: &dyn Broker, ns: &str) {
    const N: usize = 6;
    const ACKED: usize = 2;
    let topic = format!("{ns}.inbox");
    let group = format!("{ns}-node");
    let mut first = subscribe(b, &topic, queue(group.clone())).await;
    let msgs = numbered("m", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let mut held = Vec::new();
    for i in 0..N {
        let d = recv_delivery(&mut first, RECV_TIMEOUT, &format!("first member ({i})")).await;
        if i < ACKED {
            d.ack();
        } else {
            held.push(d); // read, never acked: as if the process died before settling it
        }
    }
    let mut got: Vec<Bytes> = Vec::new();
    for d in held {
        got.push(d.into_parts().0);
    }
    drop(first);

    let mut next = subscribe(b, &topic, queue(group)).await;
    let mut again = Vec::new();
    for i in 0..N - ACKED {
        let d = recv_delivery(&mut next, REDELIVERY_TIMEOUT, &format!("redelivery ({i})")).await;
        again.push(d.ack());
    }
    assert_payloads(
        &sorted(again),
        &sorted(got),
        "redelivered = the unacked ones",
    );
    expect_quiet_for(
        &mut next,
        Duration::from_secs(3),
        "acked messages stay acked",
    )
    .await;
}

/// Fanout deliveries carry nothing to acknowledge; queue deliveries do.
pub async fn only_queue_deliveries_need_an_ack(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.acks");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    publish(b, &topic, "x").await;
    let (_, fan_ack) = recv_delivery(&mut f, RECV_TIMEOUT, "fanout")
        .await
        .into_parts();
    assert!(!fan_ack.is_needed(), "a fanout delivery wants an ack");
    let (payload, queue_ack) = recv_delivery(&mut q, RECV_TIMEOUT, "queue")
        .await
        .into_parts();
    assert_eq!(payload, "x");
    assert!(queue_ack.is_needed(), "a queue delivery has no ack");
    queue_ack.ack();
}

/// `ping` succeeds on a working broker.
pub async fn broker_ping_succeeds(b: &dyn Broker, _ns: &str) {
    call("ping", b.ping()).await;
}

/// `shutdown` succeeds and calling it twice is fine (the contract); afterwards publish and
/// ping fail promptly instead of hanging or pretending to work.
pub async fn shutdown_twice_is_fine(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.shutdown");
    let _live = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let _live_queue = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    publish(b, &topic, "before-shutdown").await;
    call("first shutdown", b.shutdown()).await;
    call("second shutdown", b.shutdown()).await;
    let after = tokio::time::timeout(CALL_TIMEOUT, b.publish(&topic, "late".into()))
        .await
        .expect("publish after shutdown hung");
    assert!(after.is_err(), "publish after shutdown succeeded");
    let ping = tokio::time::timeout(CALL_TIMEOUT, b.ping())
        .await
        .expect("ping after shutdown hung");
    assert!(ping.is_err(), "ping after shutdown succeeded");
}

// ---------------------------------------------------------------------------------------------
// Presence helpers
// ---------------------------------------------------------------------------------------------

fn client(ns: &str, name: &str) -> ClientId {
    ClientId::new(format!("{ns}-{name}")).expect("test client id is valid")
}

fn clients(ns: &str, names: &[&str]) -> Vec<ClientId> {
    names.iter().map(|n| client(ns, n)).collect()
}

fn channel(ns: &str, name: &str) -> ChannelName {
    ChannelName::new(format!("{ns}-{name}")).expect("test channel name is valid")
}

fn node(ns: &str, name: &str) -> NodeId {
    NodeId::new(format!("{ns}-{name}")).expect("test node id is valid")
}

fn conn(ns: &str, name: &str) -> ConnectionId {
    ConnectionId::new(format!("{ns}-{name}")).expect("test connection id is valid")
}

async fn my_online_clients(p: &dyn PresenceStore, ns: &str) -> Vec<ClientId> {
    let all = call("online_clients", p.online_clients()).await;
    assert!(
        all.is_complete(),
        "online_clients: partial {:?}",
        all.missing
    );
    assert_sorted(&all, "online_clients");
    let prefix = format!("{ns}-");
    all.into_value()
        .into_iter()
        .filter(|c| c.as_str().starts_with(&prefix))
        .collect()
}

async fn my_channels(p: &dyn PresenceStore, ns: &str) -> Vec<ChannelInfo> {
    let all = call("channels", p.channels()).await;
    assert!(all.is_complete(), "channels: partial {:?}", all.missing);
    let names: Vec<&ChannelName> = all.iter().map(|c| &c.name).collect();
    assert_sorted(&names, "channels");
    let prefix = format!("{ns}-");
    all.into_value()
        .into_iter()
        .filter(|c| c.name.as_str().starts_with(&prefix))
        .collect()
}

#[track_caller]
fn assert_sorted<T: Ord + Debug>(v: &[T], what: &str) {
    assert!(
        v.windows(2).all(|w| w[0] <= w[1]),
        "{what} is not sorted: {v:?}"
    );
}

fn info(ns: &str, name: &str, members: usize, online: usize) -> ChannelInfo {
    ChannelInfo {
        name: channel(ns, name),
        members,
        online,
    }
}

// ---------------------------------------------------------------------------------------------
// Presence cases
// ---------------------------------------------------------------------------------------------

/// Connection counts are per client across nodes; a client is online while it has one.
pub async fn presence_counts_connections_across_nodes(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let (k1, k2, k3, k4) = (
        conn(ns, "k1"),
        conn(ns, "k2"),
        conn(ns, "k3"),
        conn(ns, "k4"),
    );

    assert_eq!(call("connections", p.connections(&alice)).await, 0);
    assert_eq!(call("connect k1", p.connect(&n1, &alice, &k1)).await, 1);
    assert_eq!(call("connect k2", p.connect(&n1, &alice, &k2)).await, 2);
    assert_eq!(call("connect k3", p.connect(&n2, &alice, &k3)).await, 3);
    assert_eq!(call("connect k4", p.connect(&n2, &bob, &k4)).await, 1);
    assert_eq!(call("connections", p.connections(&alice)).await, 3);
    assert_eq!(call("connections", p.connections(&bob)).await, 1);
    let both = [alice.clone(), bob.clone()];
    assert_eq!(call("online", p.online(&both)).await, vec![true, true]);

    assert_eq!(
        call("disconnect k2", p.disconnect(&n1, &alice, &k2, false)).await,
        2
    );
    assert_eq!(
        call("disconnect k3", p.disconnect(&n2, &alice, &k3, false)).await,
        1
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    assert_eq!(call("online", p.online(&both)).await, vec![true, true]);
    assert_eq!(
        call("disconnect k1", p.disconnect(&n1, &alice, &k1, false)).await,
        0
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 0);
    assert_eq!(call("online", p.online(&both)).await, vec![false, true]);
    assert_eq!(my_online_clients(p, ns).await, vec![bob.clone()]);
    assert_eq!(
        call("disconnect k4", p.disconnect(&n2, &bob, &k4, true)).await,
        0
    );
    assert_eq!(call("online", p.online(&both)).await, vec![false, false]);
    assert!(my_online_clients(p, ns).await.is_empty());
}

/// `online` answers in the order asked (duplicates and unknown ids included);
/// `online_clients` is sorted.
pub async fn presence_online_lists_are_sorted(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    // Connected in non-sorted order, including a non-ASCII id (sorted by bytes like `str`).
    for (i, name) in ["carol", "用户", "alice", "bob", "Zed"].iter().enumerate() {
        let k = conn(ns, &format!("k{i}"));
        call("connect", p.connect(&n1, &client(ns, name), &k)).await;
    }
    let mut want = clients(ns, &["carol", "用户", "alice", "bob", "Zed"]);
    want.sort();
    assert_eq!(my_online_clients(p, ns).await, want);

    let ask = clients(ns, &["bob", "nobody", "alice", "bob", "用户", "ghost"]);
    assert_eq!(
        call("online", p.online(&ask)).await,
        vec![true, false, true, true, true, false]
    );
    assert_eq!(
        call("online of nothing", p.online(&[])).await,
        Vec::<bool>::new()
    );
}

/// `disconnect(.., clear_channels = true)` removes channel memberships only when the client's
/// last connection goes.
pub async fn presence_disconnect_clears_channels_on_last_connection(
    p: &dyn PresenceStore,
    ns: &str,
) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let (ch1, ch2) = (channel(ns, "ch1"), channel(ns, "ch2"));
    let (k1, k2) = (conn(ns, "k1"), conn(ns, "k2"));
    call("connect", p.connect(&n1, &alice, &k1)).await;
    call("connect", p.connect(&n2, &alice, &k2)).await;
    call("join", p.join_channel(&ch1, &[alice.clone(), bob.clone()])).await;
    call("join", p.join_channel(&ch2, std::slice::from_ref(&alice))).await;

    assert_eq!(
        call("disconnect k1", p.disconnect(&n1, &alice, &k1, true)).await,
        1
    );
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch1.clone(), ch2.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch1)).await,
        vec![alice.clone(), bob.clone()]
    );

    assert_eq!(
        call("disconnect k2", p.disconnect(&n2, &alice, &k2, true)).await,
        0
    );
    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    assert_eq!(
        call("channel_members", p.channel_members(&ch1)).await,
        vec![bob.clone()]
    );
    assert!(call("channel_members", p.channel_members(&ch2))
        .await
        .is_empty());
    // ch2 lost its only member and disappears; ch1 keeps (offline) bob.
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "ch1", 1, 0)]);
    // Bob never connected; his membership is untouched.
    assert_eq!(
        call("client_channels", p.client_channels(&bob)).await,
        vec![ch1]
    );
}

/// `disconnect(.., clear_channels = false)` keeps the client's channel memberships.
pub async fn presence_disconnect_without_clear_keeps_channels(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let alice = client(ns, "alice");
    let ch = channel(ns, "room");
    let k1 = conn(ns, "k1");
    call("connect", p.connect(&n1, &alice, &k1)).await;
    call("join", p.join_channel(&ch, std::slice::from_ref(&alice))).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    assert_eq!(
        call("disconnect", p.disconnect(&n1, &alice, &k1, false)).await,
        0
    );

    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![alice.clone()]
    );
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 0)]);

    // Coming back online counts again.
    call("connect", p.connect(&n1, &alice, &conn(ns, "k2"))).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 1)]);
}

fn dropped(
    node: &NodeId,
    client: &ClientId,
    connection: ConnectionId,
    last: bool,
) -> DroppedConnection {
    DroppedConnection {
        node: node.clone(),
        client: client.clone(),
        connection,
        last,
    }
}

/// `clear_node` removes only that node's connections and returns them sorted, each client's
/// last one marked when the client went fully offline; with `clear_channels = false`
/// memberships stay.
pub async fn presence_clear_node_removes_only_that_node(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [dave, carol, bob, alice] = ["dave", "carol", "bob", "alice"].map(|n| client(ns, n));
    let ch = channel(ns, "room");
    // Connected in reverse order so that a sorted answer is not an accident of insertion order.
    call("connect", p.connect(&n1, &dave, &conn(ns, "d1"))).await;
    call("connect", p.connect(&n1, &dave, &conn(ns, "d2"))).await; // two on n1 only
    call("connect", p.connect(&n2, &carol, &conn(ns, "c1"))).await; // n2 only
    call("connect", p.connect(&n1, &bob, &conn(ns, "b1"))).await; // n1 and n2
    call("connect", p.connect(&n2, &bob, &conn(ns, "b2"))).await;
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await; // n1 only
    let everyone = [alice.clone(), bob.clone(), carol.clone(), dave.clone()];
    call("join", p.join_channel(&ch, &everyone)).await;

    let gone = call("clear_node n1", p.clear_node(&n1, false)).await;
    assert_eq!(
        gone,
        vec![
            dropped(&n1, &alice, conn(ns, "a1"), true),
            dropped(&n1, &bob, conn(ns, "b1"), false),
            dropped(&n1, &dave, conn(ns, "d1"), false),
            dropped(&n1, &dave, conn(ns, "d2"), true),
        ]
    );

    assert_eq!(
        call("online", p.online(&everyone)).await,
        vec![false, true, true, false]
    );
    assert_eq!(call("connections", p.connections(&bob)).await, 1);
    assert_eq!(call("connections", p.connections(&carol)).await, 1);
    assert_eq!(call("connections", p.connections(&dave)).await, 0);
    assert_eq!(
        my_online_clients(p, ns).await,
        vec![bob.clone(), carol.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        everyone.to_vec()
    );
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 2);
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );

    // Clearing it again, or a node that never held anything, finds nobody.
    assert!(call("clear_node n1 again", p.clear_node(&n1, false))
        .await
        .is_empty());
    assert!(
        call("clear_node unknown", p.clear_node(&node(ns, "n9"), true))
            .await
            .is_empty()
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        everyone.to_vec()
    );
}

/// `clear_node(.., clear_channels = true)`: the clients that went offline leave their channels;
/// clients still connected elsewhere keep theirs.
pub async fn presence_clear_node_clears_channels(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| client(ns, n));
    let (ch1, ch2) = (channel(ns, "ch1"), channel(ns, "ch2"));
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("connect", p.connect(&n1, &bob, &conn(ns, "b1"))).await;
    call("connect", p.connect(&n2, &bob, &conn(ns, "b2"))).await;
    // carol is a member but offline; clearing n1 must not touch her.
    call(
        "join",
        p.join_channel(&ch1, &[alice.clone(), bob.clone(), carol.clone()]),
    )
    .await;
    call("join", p.join_channel(&ch2, std::slice::from_ref(&alice))).await;

    let gone = call("clear_node n1", p.clear_node(&n1, true)).await;
    assert_eq!(
        gone,
        vec![
            dropped(&n1, &alice, conn(ns, "a1"), true),
            dropped(&n1, &bob, conn(ns, "b1"), false),
        ]
    );

    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    assert_eq!(
        call("client_channels", p.client_channels(&bob)).await,
        vec![ch1.clone()]
    );
    assert_eq!(
        call("client_channels", p.client_channels(&carol)).await,
        vec![ch1.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch1)).await,
        vec![bob.clone(), carol.clone()]
    );
    assert!(call("channel_members", p.channel_members(&ch2))
        .await
        .is_empty());
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "ch1", 2, 1)]);
    assert_eq!(my_online_clients(p, ns).await, vec![bob]);
}

/// Joining and leaving are idempotent, duplicates in one call included; leaving an unknown
/// channel or as a non-member is harmless.
pub async fn presence_join_and_leave_are_idempotent(p: &dyn PresenceStore, ns: &str) {
    let ch = channel(ns, "room");
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| client(ns, n));
    call("join", p.join_channel(&ch, &[bob.clone(), alice.clone()])).await;
    call(
        "join again",
        p.join_channel(&ch, &[alice.clone(), bob.clone()]),
    )
    .await;
    call(
        "join with duplicates",
        p.join_channel(&ch, &[alice.clone(), alice.clone()]),
    )
    .await;
    call("join nobody", p.join_channel(&ch, &[])).await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![alice.clone(), bob.clone()]
    );
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 2, 0)]);

    call("leave", p.leave_channel(&ch, std::slice::from_ref(&alice))).await;
    call(
        "leave again",
        p.leave_channel(&ch, std::slice::from_ref(&alice)),
    )
    .await;
    call(
        "leave as non-member",
        p.leave_channel(&ch, std::slice::from_ref(&carol)),
    )
    .await;
    call("leave nobody", p.leave_channel(&ch, &[])).await;
    call(
        "leave unknown channel",
        p.leave_channel(&channel(ns, "nowhere"), &[alice.clone(), bob.clone()]),
    )
    .await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![bob.clone()]
    );
    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    assert!(call("client_channels", p.client_channels(&carol))
        .await
        .is_empty());
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 0)]);
}

/// `channel_members`, `client_channels` and `channels` are sorted and `channels` carries the
/// right member and online counts. Names with spaces, `:` and non-ASCII are kept intact.
pub async fn presence_channel_listings_are_sorted_with_counts(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| client(ns, n));
    call("connect", p.connect(&n1, &carol, &conn(ns, "c1"))).await;
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    let names = ["zeta", "alpha", "room: 1", "聊天", "Beta"];
    let chans: Vec<ChannelName> = names.iter().map(|n| channel(ns, n)).collect();
    // zeta: dave, carol, alice (2 online) / alpha: bob (0 online) / "room: 1": alice, bob /
    // 聊天: carol / Beta: dave, bob.
    call(
        "join",
        p.join_channel(&chans[0], &[dave.clone(), carol.clone(), alice.clone()]),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[1], std::slice::from_ref(&bob)),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[2], &[bob.clone(), alice.clone()]),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[3], std::slice::from_ref(&carol)),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[4], &[dave.clone(), bob.clone()]),
    )
    .await;

    assert_eq!(
        call("channel_members zeta", p.channel_members(&chans[0])).await,
        vec![alice.clone(), carol.clone(), dave.clone()]
    );
    assert_eq!(
        call("channel_members Beta", p.channel_members(&chans[4])).await,
        vec![bob.clone(), dave.clone()]
    );
    let mut bobs = vec![chans[1].clone(), chans[2].clone(), chans[4].clone()];
    bobs.sort();
    assert_eq!(
        call("client_channels bob", p.client_channels(&bob)).await,
        bobs
    );
    let mut alices = vec![chans[0].clone(), chans[2].clone()];
    alices.sort();
    assert_eq!(
        call("client_channels alice", p.client_channels(&alice)).await,
        alices
    );

    let mut want = vec![
        info(ns, "zeta", 3, 2),
        info(ns, "alpha", 1, 0),
        info(ns, "room: 1", 2, 1),
        info(ns, "聊天", 1, 1),
        info(ns, "Beta", 2, 0),
    ];
    want.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(my_channels(p, ns).await, want);
    assert!(call(
        "unknown channel",
        p.channel_members(&channel(ns, "unknown"))
    )
    .await
    .is_empty());
    assert!(call(
        "client in no channel",
        p.client_channels(&client(ns, "nobody"))
    )
    .await
    .is_empty());
}

/// A channel whose last member leaves disappears from `channels`.
pub async fn presence_empty_channel_disappears(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let [alice, bob] = ["alice", "bob"].map(|n| client(ns, n));
    let (ch, other) = (channel(ns, "room"), channel(ns, "other"));
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("join", p.join_channel(&ch, &[alice.clone(), bob.clone()])).await;
    call("join", p.join_channel(&other, std::slice::from_ref(&bob))).await;
    assert_eq!(
        my_channels(p, ns).await,
        vec![info(ns, "other", 1, 0), info(ns, "room", 2, 1)]
    );
    call("leave", p.leave_channel(&ch, &[alice.clone(), bob.clone()])).await;
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "other", 1, 0)]);
    assert!(call("channel_members", p.channel_members(&ch))
        .await
        .is_empty());
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    // Leaving a channel does not affect presence.
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    call("leave", p.leave_channel(&other, std::slice::from_ref(&bob))).await;
    assert!(my_channels(p, ns).await.is_empty());
}

/// Membership may be recorded for a client that is offline (never connected).
pub async fn presence_offline_client_can_join(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let ghost = client(ns, "ghost");
    let ch = channel(ns, "room");
    call("join", p.join_channel(&ch, std::slice::from_ref(&ghost))).await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![ghost.clone()]
    );
    assert_eq!(
        call("client_channels", p.client_channels(&ghost)).await,
        vec![ch.clone()]
    );
    assert_eq!(call("connections", p.connections(&ghost)).await, 0);
    assert_eq!(
        call("online", p.online(std::slice::from_ref(&ghost))).await,
        vec![false]
    );
    assert!(my_online_clients(p, ns).await.is_empty());
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 0)]);

    let k = conn(ns, "g1");
    call("connect", p.connect(&n1, &ghost, &k)).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 1)]);
    call("disconnect", p.disconnect(&n1, &ghost, &k, false)).await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![ghost]
    );
}

/// `channel_online` counts only the online members, across nodes and connections.
pub async fn presence_channel_online_counts_online_members(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| client(ns, n));
    let ch = channel(ns, "room");
    call(
        "join",
        p.join_channel(&ch, &[alice.clone(), bob.clone(), carol.clone()]),
    )
    .await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("connect", p.connect(&n2, &alice, &conn(ns, "a2"))).await; // counted once
    call("connect", p.connect(&n2, &bob, &conn(ns, "b1"))).await;
    call("connect", p.connect(&n1, &dave, &conn(ns, "d1"))).await; // online, not a member
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 2);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 3, 2)]);

    call(
        "disconnect",
        p.disconnect(&n2, &bob, &conn(ns, "b1"), false),
    )
    .await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    call("connect", p.connect(&n1, &carol, &conn(ns, "c1"))).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 2);
    assert_eq!(
        call("unknown channel", p.channel_online(&channel(ns, "nowhere"))).await,
        0
    );
}

/// Disconnecting a connection the store does not know is harmless: unknown client, or a known
/// client with an unknown connection id (even with `clear_channels`).
pub async fn presence_disconnect_unknown_is_harmless(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let alice = client(ns, "alice");
    let ch = channel(ns, "room");
    let k1 = conn(ns, "k1");
    assert_eq!(
        call(
            "disconnect unknown client",
            p.disconnect(&n1, &client(ns, "nobody"), &conn(ns, "zz"), true)
        )
        .await,
        0
    );
    call("connect", p.connect(&n1, &alice, &k1)).await;
    call("join", p.join_channel(&ch, std::slice::from_ref(&alice))).await;
    assert_eq!(
        call(
            "disconnect unknown connection",
            p.disconnect(&n1, &alice, &conn(ns, "zz"), true)
        )
        .await,
        1
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );
    // The real disconnect, then the same one again.
    assert_eq!(
        call("disconnect", p.disconnect(&n1, &alice, &k1, false)).await,
        0
    );
    assert_eq!(
        call("disconnect twice", p.disconnect(&n1, &alice, &k1, true)).await,
        0
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 0);
    assert!(my_online_clients(p, ns).await.is_empty());
    assert!(my_channels(p, ns).await.iter().all(|c| c.online == 0));
}

/// `sync_node` makes the store hold exactly the node's connections in one step: ghosts (the
/// store has them, the node does not) go, with `last` and channel clean-up for clients left
/// with none; missing connections come back, `first` where the client had none; other nodes'
/// connections and a client whose ghost is replaced by a live connection keep their channels.
pub async fn presence_sync_node_makes_the_store_match(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| client(ns, n));
    let room = channel(ns, "room");
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("connect", p.connect(&n1, &bob, &conn(ns, "b1"))).await; // ghost, bob also on n2
    call("connect", p.connect(&n2, &bob, &conn(ns, "b2"))).await;
    call("connect", p.connect(&n1, &carol, &conn(ns, "c1"))).await; // ghost, replaced by c2
    call("connect", p.connect(&n1, &dave, &conn(ns, "d1"))).await; // ghost, dave's only one
    let everyone = [alice.clone(), bob.clone(), carol.clone(), dave.clone()];
    call("join", p.join_channel(&room, &everyone)).await;

    let erin = client(ns, "erin"); // connected while a write failed: missing from the store
    let real = vec![
        (alice.clone(), conn(ns, "a1")),
        (carol.clone(), conn(ns, "c2")),
        (erin.clone(), conn(ns, "e1")),
    ];
    let sync = call("sync_node", p.sync_node(&n1, &real, true)).await;
    assert_eq!(
        sync.removed,
        vec![
            dropped(&n1, &bob, conn(ns, "b1"), false),
            dropped(&n1, &carol, conn(ns, "c1"), false),
            dropped(&n1, &dave, conn(ns, "d1"), true),
        ]
    );
    assert_eq!(
        sync.added,
        vec![
            impush_core::AddedConnection {
                client: carol.clone(),
                connection: conn(ns, "c2"),
                first: false,
            },
            impush_core::AddedConnection {
                client: erin.clone(),
                connection: conn(ns, "e1"),
                first: true,
            },
        ]
    );
    assert_eq!(
        my_online_clients(p, ns).await,
        vec![alice.clone(), bob.clone(), carol.clone(), erin.clone()]
    );
    assert_eq!(call("connections", p.connections(&bob)).await, 1);
    assert_eq!(
        call("channel_members", p.channel_members(&room)).await,
        vec![alice.clone(), bob.clone(), carol.clone()],
        "only dave, left with no connection, leaves the room"
    );

    // Already in sync: nothing changes.
    let again = call("sync_node again", p.sync_node(&n1, &real, true)).await;
    assert_eq!(again, impush_core::NodeSync::default());
    call("clear n1", p.clear_node(&n1, true)).await;
    call("clear n2", p.clear_node(&n2, true)).await;
}

/// Leases: a node that stops heartbeating loses its connections to the next `reap_expired`,
/// which returns each of them once; live nodes and their connections are untouched.
pub async fn presence_leases_expire_and_reap_drops_connections(p: &dyn PresenceStore, ns: &str) {
    use std::time::Duration;
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let (k1, k2, k3) = (conn(ns, "k1"), conn(ns, "k2"), conn(ns, "k3"));
    let room = channel(ns, "room");
    let mine = |d: &Vec<DroppedConnection>| -> Vec<DroppedConnection> {
        d.iter()
            .filter(|x| x.node == n1 || x.node == n2)
            .cloned()
            .collect()
    };

    let short = Duration::from_secs(1);
    assert!(!call("first heartbeat", p.heartbeat(&n1, short)).await);
    assert!(call("renewed heartbeat", p.heartbeat(&n1, short)).await);
    assert!(!call("heartbeat n2", p.heartbeat(&n2, Duration::from_secs(60))).await);
    call("connect k1", p.connect(&n1, &alice, &k1)).await;
    call("connect k2", p.connect(&n2, &alice, &k2)).await;
    call("connect k3", p.connect(&n1, &bob, &k3)).await;
    call("join", p.join_channel(&room, &[alice.clone(), bob.clone()])).await;

    let early = call("reap before expiry", p.reap_expired(true)).await;
    assert!(mine(&early).is_empty(), "reaped live node: {early:?}");

    // Wait for the lease to run out by polling, not by a fixed sleep: n1's connections all go in
    // the one reap that first sees it expired.
    let deadline = tokio::time::Instant::now() + short + Duration::from_secs(5);
    let dropped = loop {
        let d = mine(&call("reap", p.reap_expired(true)).await);
        if !d.is_empty() {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1's lease of {short:?} never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        dropped,
        vec![
            DroppedConnection {
                node: n1.clone(),
                client: alice.clone(),
                connection: k1.clone(),
                last: false
            },
            DroppedConnection {
                node: n1.clone(),
                client: bob.clone(),
                connection: k3.clone(),
                last: true
            },
        ]
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    assert_eq!(
        call("online", p.online(&[alice.clone(), bob.clone()])).await,
        vec![true, false]
    );
    assert_eq!(
        call("members", p.channel_members(&room)).await,
        vec![alice.clone()]
    );

    let again = call("second reap", p.reap_expired(true)).await;
    assert!(mine(&again).is_empty(), "reaped twice: {again:?}");
    // The reaped node learns from its next heartbeat that it must register again.
    assert!(!call("heartbeat after reap", p.heartbeat(&n1, short)).await);
    assert!(call("n2 still alive", p.heartbeat(&n2, Duration::from_secs(60))).await);
    call("clear n2", p.clear_node(&n2, true)).await;
    call("clear n1", p.clear_node(&n1, true)).await;
}

/// A node whose lease ran out but was not reaped (the store stalled, nobody reaped) is still
/// known: it must not re-announce its connections as if it had been declared dead.
pub async fn presence_expired_lease_is_known_until_reaped(p: &dyn PresenceStore, ns: &str) {
    use std::time::Duration;
    let n = node(ns, "n1");
    assert!(!call("first heartbeat", p.heartbeat(&n, Duration::from_millis(1))).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        call(
            "heartbeat after expiry",
            p.heartbeat(&n, Duration::from_secs(60))
        )
        .await,
        "an expired but unreaped lease was forgotten"
    );
    call("clear", p.clear_node(&n, true)).await;
    assert!(
        !call(
            "heartbeat after clear",
            p.heartbeat(&n, Duration::from_secs(60))
        )
        .await
    );
    call("clear again", p.clear_node(&n, true)).await;
}

/// `ping` succeeds on a working store.
pub async fn presence_ping_succeeds(p: &dyn PresenceStore, _ns: &str) {
    call("ping", p.ping()).await;
}

// ---------------------------------------------------------------------------------------------
// Offline store cases
// ---------------------------------------------------------------------------------------------

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
/// a full inbox gets it all). Not in [`offline_conformance!`]: it needs a store built with
/// [`LARGE_INBOX_LIMITS`].
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
// ---------------------------------------------------------------------------------------------

/// One `#[tokio::test]` per listed case, calling `$crate::$case(&*store, &$crate::unique_ns())`.
///
/// The runtime is reached through this crate's re-export (`crate = "impush_tests::tokio"`), so
/// callers need no tokio dependency but must not rename the `impush-tests` dependency.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($setup:path; $($case:ident),+ $(,)?) => {
        $(
            #[$crate::tokio::test(
                crate = "impush_tests::tokio",
                flavor = "multi_thread",
                worker_threads = 2
            )]
            async fn $case() {
                // None means the backend is not configured; setup has already said so.
                let Some(backend) = $setup().await else { return };
                $crate::$case(&*backend, &$crate::unique_ns()).await;
            }
        )+
    };
}

/// Expands to one `#[tokio::test]` per [`Broker`] behaviour.
///
/// `$setup` is an `async fn() -> Option<Arc<dyn Broker>>`, called once per test (each test has
/// its own runtime, so it must create a fresh client); `None` skips the test (use
/// [`env_or_skip`]). Test names are the case function names of this crate.
#[macro_export]
macro_rules! broker_conformance {
    ($setup:path) => {
        $crate::__conformance_cases!($setup;
            fanout_reaches_every_subscriber,
            fanout_delivers_only_messages_published_after_subscribe,
            fanout_preserves_publisher_order,
            concurrent_publishes_all_arrive_once,
            topics_are_isolated,
            queue_delivers_each_message_to_one_member,
            queue_groups_each_get_every_message,
            queue_retains_messages_while_group_has_no_member,
            fanout_and_queue_on_same_topic_both_receive,
            dropping_subscription_unsubscribes,
            payloads_are_byte_exact,
            large_payload_is_byte_exact,
            queue_redelivers_unacked_when_member_leaves,
            only_queue_deliveries_need_an_ack,
            broker_ping_succeeds,
            shutdown_twice_is_fine,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`OfflineStore`] behaviour.
///
/// `$setup` is an `async fn() -> Option<Arc<dyn OfflineStore>>` returning a store built with
/// [`OFFLINE_LIMITS`]; `None` skips the test.
#[macro_export]
macro_rules! offline_conformance {
    ($setup:path) => {
        $crate::__conformance_cases!($setup;
            offline_returns_oldest_first,
            offline_bounds_drop_the_oldest,
            offline_remove_and_clear,
            offline_messages_expire,
            offline_ping_succeeds,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`PresenceStore`] behaviour.
///
/// `$setup` is an `async fn() -> Option<Arc<dyn PresenceStore>>`, called once per test; `None`
/// skips the test. The cases only touch ids inside their namespace, so they may share a store
/// (one Redis database) with each other and with leftovers of earlier runs.
#[macro_export]
macro_rules! presence_conformance {
    ($setup:path) => {
        $crate::__conformance_cases!($setup;
            presence_counts_connections_across_nodes,
            presence_online_lists_are_sorted,
            presence_disconnect_clears_channels_on_last_connection,
            presence_disconnect_without_clear_keeps_channels,
            presence_clear_node_removes_only_that_node,
            presence_clear_node_clears_channels,
            presence_join_and_leave_are_idempotent,
            presence_channel_listings_are_sorted_with_counts,
            presence_empty_channel_disappears,
            presence_offline_client_can_join,
            presence_channel_online_counts_online_members,
            presence_disconnect_unknown_is_harmless,
            presence_ping_succeeds,
            presence_sync_node_makes_the_store_match,
            presence_expired_lease_is_known_until_reaped,
            presence_leases_expire_and_reap_drops_connections,
        );
    };
}
