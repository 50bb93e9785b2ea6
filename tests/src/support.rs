//! What every suite uses: skipping without a broker ([`env_or_skip`]), namespaces
//! ([`unique_ns`]), free ports, waiting on conditions, and calls and receives that fail
//! instead of hanging.

use std::{
    future::Future,
    io::Write,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{
    ChannelName, ClientId, ConnectionId, Delivery, Event, NodeId, Result, Subscription,
};

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

/// Free loopback addresses: each bound to port 0, then released, for configs that need every
/// node's URL before any node listens (another process may take one meanwhile, rarely).
///
/// # Panics
/// When the loopback interface cannot be bound at all.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound listener has an address"))
        .collect()
}

/// Polls `cond` every 10 ms (a condition is usually one local call or query) until it holds.
///
/// # Panics
/// When it does not hold within `within`, naming `what`.
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Ids inside a case's namespace, shared by the presence and offline cases.

pub(crate) fn client(ns: &str, name: &str) -> ClientId {
    ClientId::new(format!("{ns}-{name}")).expect("test client id is valid")
}

pub(crate) fn clients(ns: &str, names: &[&str]) -> Vec<ClientId> {
    names.iter().map(|n| client(ns, n)).collect()
}

pub(crate) fn channel(ns: &str, name: &str) -> ChannelName {
    ChannelName::new(format!("{ns}-{name}")).expect("test channel name is valid")
}

pub(crate) fn node(ns: &str, name: &str) -> NodeId {
    NodeId::new(format!("{ns}-{name}")).expect("test node id is valid")
}

pub(crate) fn conn(ns: &str, name: &str) -> ConnectionId {
    ConnectionId::new(format!("{ns}-{name}")).expect("test connection id is valid")
}

/// Whether `client` is online once `events` are replayed in order as a business does: online
/// at a `first`, offline at a `last`, the rest changes nothing; `online_before` is where the
/// replay starts.
pub fn online_after_replay<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    client: &ClientId,
    online_before: bool,
) -> bool {
    let mut online = online_before;
    for e in events {
        match e {
            Event::Online {
                client: c, first, ..
            } if c == client && *first => online = true,
            Event::Offline {
                client: c, last, ..
            } if c == client && *last => online = false,
            _ => {}
        }
    }
    online
}
