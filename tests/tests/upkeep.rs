//! A node's upkeep under load (`docs/design.md` section 13): a round that stalls past the
//! node's own lease between renewing it and reaping (a starved process, a slow store) must not
//! reap the node itself, and announcing a big reap (one publish per connection) must not hold
//! the heartbeats back. Both found by the cluster suite's failover case: a node busy with
//! 1,500 connects announced its own live connections offline, and the node that reaped a
//! killed node's 1,500 connections took 6 s to announce them, missed its own lease, and was
//! declared dead in turn.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;
use impush_core::{
    Answer, Broker, ChannelInfo, ChannelName, ClientId, ConnectionId, DroppedConnection, Event,
    MemoryBroker, MemoryPresenceStore, NodeId, NodeLease, NodeState, NodeSync, PresenceStore,
    Result, SubscribeMode, Subscription,
};
use impush_server::ImServer;
use support::{config, eventually, id, start_cluster_over, Client};

/// The node's lease in these tests.
const LEASE: Duration = Duration::from_millis(600);

/// One node's view of a shared memory presence store, with faults: `live_nodes` (read between
/// the node's heartbeat and its reap) stalls for two leases once, right after heartbeat number
/// `stall_after`; and a `frozen` node's heartbeats and reaps do nothing (as if it stopped
/// answering, without closing anything). What its reaps dropped is recorded.
#[derive(Debug, Default)]
struct Faulty {
    inner: Arc<MemoryPresenceStore>,
    stall_after: Option<u64>,
    heartbeats: AtomicU64,
    stalled: AtomicU64,
    frozen: AtomicBool,
    reaped: Mutex<Vec<DroppedConnection>>,
    /// The next `disconnect` fails (the node then repairs with `sync_node`).
    fail_disconnect: AtomicBool,
    /// How long each `sync_node` takes.
    sync_delay: Option<Duration>,
    /// Completed `sync_node` calls, and the heartbeats made while the last one ran.
    syncs: AtomicU64,
    beats_during_sync: AtomicU64,
    /// `catch_up` calls.
    catch_ups: AtomicU64,
    /// The next `client_channels` answers partially: nothing, with a node missing (cluster
    /// presence when no keeper of the client's memberships answered).
    partial_channels: AtomicBool,
    /// Heartbeats fail (the store cannot be reached), counted in `failed_beats`.
    unreachable: AtomicBool,
    failed_beats: AtomicU64,
}

impl Faulty {
    fn over(inner: &Arc<MemoryPresenceStore>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: inner.clone(),
            ..Faulty::default()
        })
    }
}

/// By then the node has renewed its lease without failure for more than a lease (it reaps).
const STALL_AFTER: u64 = 5;

#[async_trait]
impl PresenceStore for Faulty {
    async fn connect(&self, n: &NodeId, c: &ClientId, k: &ConnectionId) -> Result<usize> {
        self.inner.connect(n, c, k).await
    }
    async fn disconnect(
        &self,
        n: &NodeId,
        c: &ClientId,
        k: &ConnectionId,
        clear: bool,
    ) -> Result<usize> {
        if self.fail_disconnect.swap(false, Ordering::AcqRel) {
            return Err(impush_core::Error::Unavailable {
                backend: "memory",
                source: None,
            });
        }
        self.inner.disconnect(n, c, k, clear).await
    }
    async fn clear_node(&self, n: &NodeId, clear: bool) -> Result<Vec<DroppedConnection>> {
        self.inner.clear_node(n, clear).await
    }
    async fn sync_node(
        &self,
        n: &NodeId,
        c: &[(ClientId, ConnectionId)],
        clear: bool,
    ) -> Result<NodeSync> {
        let before = self.heartbeats.load(Ordering::Acquire);
        if let Some(delay) = self.sync_delay {
            tokio::time::sleep(delay).await;
        }
        let sync = self.inner.sync_node(n, c, clear).await;
        let beats = self.heartbeats.load(Ordering::Acquire) - before;
        self.beats_during_sync.store(beats, Ordering::Release);
        self.syncs.fetch_add(1, Ordering::AcqRel);
        sync
    }
    async fn heartbeat(&self, n: &NodeId, lease: Duration, st: NodeState) -> Result<bool> {
        if self.frozen.load(Ordering::Acquire) {
            return Ok(true);
        }
        if self.unreachable.load(Ordering::Acquire) {
            self.failed_beats.fetch_add(1, Ordering::AcqRel);
            return Err(impush_core::Error::Unavailable {
                backend: "memory",
                source: None,
            });
        }
        self.heartbeats.fetch_add(1, Ordering::AcqRel);
        self.inner.heartbeat(n, lease, st).await
    }
    async fn live_nodes(&self) -> Result<Vec<NodeLease>> {
        if Some(self.heartbeats.load(Ordering::Acquire)) == self.stall_after
            && self.stalled.fetch_add(1, Ordering::AcqRel) == 0
        {
            tokio::time::sleep(LEASE * 2).await;
        }
        self.inner.live_nodes().await
    }
    async fn reap_expired(&self, clear: bool) -> Result<Vec<DroppedConnection>> {
        if self.frozen.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let dropped = self.inner.reap_expired(clear).await?;
        self.reaped.lock().unwrap().extend(dropped.iter().cloned());
        Ok(dropped)
    }
    async fn connections(&self, c: &ClientId) -> Result<Answer<usize>> {
        self.inner.connections(c).await
    }
    async fn online(&self, c: &[ClientId]) -> Result<Answer<Vec<bool>>> {
        self.inner.online(c).await
    }
    async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
        self.inner.online_clients().await
    }
    async fn leave_all_if_offline(&self, c: &ClientId) -> Result<bool> {
        self.inner.leave_all_if_offline(c).await
    }
    async fn join_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
        self.inner.join_channel(ch, c).await
    }
    async fn leave_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
        self.inner.leave_channel(ch, c).await
    }
    async fn channel_members(&self, ch: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        self.inner.channel_members(ch).await
    }
    async fn channel_online(&self, ch: &ChannelName) -> Result<Answer<usize>> {
        self.inner.channel_online(ch).await
    }
    async fn client_channels(&self, c: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        if self.partial_channels.swap(false, Ordering::AcqRel) {
            return Ok(Answer {
                value: Vec::new(),
                missing: vec!["n9".parse().unwrap()],
            });
        }
        self.inner.client_channels(c).await
    }
    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        self.inner.channels().await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn catch_up(&self) -> Result<()> {
        self.catch_ups.fetch_add(1, Ordering::AcqRel);
        self.inner.catch_up().await
    }
}

/// One node over `presence`, with the tests' lease.
async fn start_over(presence: &Arc<Faulty>) -> ImServer {
    let mut c = config();
    c.cluster.node_lease = LEASE;
    ImServer::start_with(c, Arc::new(MemoryBroker::default()), presence.clone())
        .await
        .unwrap()
}

/// The round after heartbeat `STALL_AFTER` stalls for two leases before it reaps: the node's
/// own lease has run out by then, and a reap would drop its live connection and announce it
/// offline (then, a heartbeat later, online again as "forgotten"). It must skip that reap:
/// no event at all for the connection, and it stays online throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upkeep_round_does_not_reap_its_own_node() {
    let presence = Arc::new(Faulty {
        stall_after: Some(STALL_AFTER),
        ..Faulty::default()
    });
    let server = start_over(&presence).await;
    let h = server.helper();
    let mut events = h.events().await.unwrap();
    let _alice = Client::connect(&h, "alice", 1).await;
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, Event::Online { .. }), "{first:?}");

    // Two rounds after the stalled one: its reap, and the heartbeat that would have found the
    // node forgotten.
    eventually(|| async {
        presence.stalled.load(Ordering::Acquire) > 0
            && presence.heartbeats.load(Ordering::Acquire) >= STALL_AFTER + 2
    })
    .await;
    assert!(h.is_online(&id("alice")).await.unwrap().value);
    let more = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
    assert!(
        more.is_err(),
        "an event for a connection that never closed: {more:?}"
    );
    server.shutdown().await.unwrap();
}

/// A repair that takes four leases (a slow store; re-registering thousands of connections after
/// the node was reaped while alive) runs beside the heartbeats: they go on while it runs, so
/// the node's lease does not run out and the others do not reap it again. A heartbeat that
/// waited for the repair made none meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_repair_does_not_hold_the_heartbeats_back() {
    let presence = Arc::new(Faulty {
        sync_delay: Some(LEASE * 4),
        ..Faulty::default()
    });
    let server = start_over(&presence).await;
    let h = server.helper();
    let alice = Client::connect(&h, "alice", 1).await;
    let _bob = Client::connect(&h, "bob", 1).await;
    eventually(|| async { h.is_online(&id("alice")).await.unwrap().value }).await;
    // Alice's disconnect fails to reach the store: the node repairs with a (slow) sync.
    presence.fail_disconnect.store(true, Ordering::Release);
    drop(alice);
    eventually(|| async { presence.syncs.load(Ordering::Acquire) > 0 }).await;
    let beats = presence.beats_during_sync.load(Ordering::Acquire);
    assert!(
        beats >= 2,
        "{beats} heartbeats while a repair of {:?} ran (one every {:?} is due)",
        LEASE * 4,
        LEASE / 3
    );
    assert!(
        !h.is_online(&id("alice")).await.unwrap().value,
        "the repair removed alice's connection"
    );
    server.shutdown().await.unwrap();
}

/// The node cannot reach the store for longer than its lease; meanwhile another node reaps it
/// (its connection dropped from the store, announced offline), and then a heartbeat it sent
/// during the outage lands late and registers it again (a link that stalled and delivered
/// what it held when it healed), so the store "knows" it when its heartbeats get through
/// again. The node must still take itself for reaped: register its connection again and
/// announce it online, so queries and events say online, as the socket is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaped_while_cut_off_registers_again_though_a_late_heartbeat_hid_the_reap() {
    let presence = Arc::new(Faulty::default());
    let server = start_over(&presence).await;
    let h = server.helper();
    let mut events = h.events().await.unwrap();
    let _alice = Client::connect(&h, "alice", 1).await;
    eventually(|| async { h.is_online(&id("alice")).await.unwrap().value }).await;

    presence.unreachable.store(true, Ordering::Release);
    // Another node's reap, once the lease has run out: alice's connection leaves the store.
    let reaped = async {
        loop {
            let dropped = presence.inner.reap_expired(false).await.unwrap();
            if dropped.iter().any(|d| d.client == id("alice")) {
                return;
            }
            tokio::time::sleep(LEASE / 10).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reaped)
        .await
        .expect("the node's lease runs out while it cannot heartbeat");
    assert!(!h.is_online(&id("alice")).await.unwrap().value);
    // The late heartbeat: the store knows the node again, without its connection.
    let node: NodeId = "n1".parse().unwrap();
    presence
        .inner
        .heartbeat(&node, LEASE, NodeState::Live)
        .await
        .unwrap();
    assert!(presence.failed_beats.load(Ordering::Acquire) > 0);
    presence.unreachable.store(false, Ordering::Release);

    eventually(|| async { h.is_online(&id("alice")).await.unwrap().value }).await;
    // The first online event was alice's connect; the one after it, the re-announcement.
    online_event(&mut events, "alice").await;
    online_event(&mut events, "alice").await;
    server.shutdown().await.unwrap();
}

/// The next online event of `client` (up to 5 s).
async fn online_event<S>(events: &mut S, client: &str) -> Event
where
    S: futures_util::Stream<Item = Result<Event>> + Unpin,
{
    let next = async {
        loop {
            let ev = events.next().await.unwrap().unwrap();
            if matches!(&ev, Event::Online { client: c, .. } if *c == id(client)) {
                return ev;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("an online event")
}

/// A connection whose channel memberships came back partially (no keeper answered) is not
/// left without them: the node asks again until it gets the whole answer, and the channel's
/// messages reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_answered_partially_are_asked_again() {
    let presence = Arc::new(Faulty::default());
    let server = start_over(&presence).await;
    let h = server.helper();
    let room: ChannelName = "room".parse().unwrap();
    h.join_channel(&room, &[id("p")]).await.unwrap();
    presence.partial_channels.store(true, Ordering::Release);
    let mut p = Client::connect(&h, "p", 1).await;
    eventually(|| async { !presence.partial_channels.load(Ordering::Acquire) }).await;
    let received = async {
        loop {
            h.send_channel_message(&id("system"), &room, &"hello")
                .await
                .unwrap();
            if let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), p.next_json()).await
            {
                return frame;
            }
        }
    };
    let frame = tokio::time::timeout(Duration::from_secs(5), received)
        .await
        .expect("the room's message reaches p once its channels are asked again");
    assert_eq!(frame["data"], "hello");
    drop(p);
    server.shutdown().await.unwrap();
}

/// A broker whose offline events take `EVENT_PUBLISH` each to publish (a busy broker, a busy
/// node): announcing many takes a while, even several at once.
#[derive(Debug)]
struct SlowEvents(Arc<dyn Broker>);

const EVENT_PUBLISH: Duration = Duration::from_millis(600);

#[async_trait]
impl Broker for SlowEvents {
    async fn publish(&self, topic: &str, payload: bytes::Bytes) -> Result<()> {
        if support::is_offline_event(topic, &payload) {
            tokio::time::sleep(EVENT_PUBLISH).await;
        }
        self.0.publish(topic, payload).await
    }
    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        self.0.subscribe(topic, mode).await
    }
    async fn ping(&self) -> Result<()> {
        self.0.ping().await
    }
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

/// Three nodes; n2 holds 120 connections and stops heartbeating (frozen, sockets open). The
/// node that reaps it announces 120 offline events at 600 ms each, 32 at once (2.4 s, four
/// leases), while
/// its own heartbeats go on: no node reaps a live node meanwhile (n1 and n3 hold a
/// connection each, which would be dropped), and each of n2's connections is reaped once,
/// its `last` asked again of a store that caught up with the other nodes' writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcing_a_big_reap_does_not_hold_the_heartbeats_back() {
    const HELD: usize = 120;
    let broker: Arc<dyn Broker> = Arc::new(SlowEvents(Arc::new(MemoryBroker::default())));
    let shared = Arc::new(MemoryPresenceStore::new());
    let stores: Vec<Arc<Faulty>> = (0..3).map(|_| Faulty::over(&shared)).collect();
    let presences: Vec<Arc<dyn PresenceStore>> = stores
        .iter()
        .map(|s| s.clone() as Arc<dyn PresenceStore>)
        .collect();
    let nodes = start_cluster_over(broker.clone(), presences, |c| {
        c.cluster.node_lease = LEASE;
    })
    .await;
    let h = nodes[0].helper();
    let n2: NodeId = "n2".parse().unwrap();
    let held: Vec<String> = (0..)
        .map(|k| format!("held{k}"))
        .filter(|c| h.cluster().home(&id(c)).id == n2)
        .take(HELD)
        .collect();
    // One client on each node that stays: a reaped live node would show in their drops.
    let mut sockets = Vec::new();
    for i in [0, 2] {
        let c = support::homed_on(&h, i, "stays");
        sockets.push(Client::connect_with(&h, &c, serde_json::Value::Null).await);
    }
    for c in &held {
        sockets.push(Client::connect_with(&h, c, serde_json::Value::Null).await);
    }
    let ids: Vec<ClientId> = held.iter().map(|c| id(c)).collect();
    eventually(|| async {
        h.is_online_many(&ids)
            .await
            .unwrap()
            .value
            .iter()
            .all(|o| *o)
    })
    .await;

    let mut events = h.events().await.unwrap();
    stores[1].frozen.store(true, Ordering::Release);
    let frozen = std::time::Instant::now();
    let reaped = || {
        stores
            .iter()
            .flat_map(|s| s.reaped.lock().unwrap().clone())
            .collect::<Vec<_>>()
    };
    // Every offline event of n2's connections arrives: the announcements, which take four
    // leases, are over. A reaper whose heartbeats waited for them was reaped meanwhile.
    let mut announced = 0;
    while announced < HELD {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("the offline events of n2's connections")
            .unwrap()
            .unwrap();
        if matches!(&ev, Event::Offline { node, .. } if *node == n2) {
            announced += 1;
        }
    }
    let dropped = reaped();
    let wrong: Vec<&DroppedConnection> = dropped.iter().filter(|d| d.node != n2).collect();
    assert!(wrong.is_empty(), "live nodes reaped: {wrong:?}");
    assert_eq!(dropped.len(), HELD, "each of n2's connections reaped once");
    // Each was its client's last: asked again, of a store caught up just then, before it
    // went out.
    let catch_ups: u64 = stores
        .iter()
        .map(|s| s.catch_ups.load(Ordering::Acquire))
        .sum();
    assert!(
        catch_ups >= HELD as u64,
        "{catch_ups} catch-ups for {HELD} last connections announced"
    );
    // Many at once: one by one they took 72 s here (and a crashed node's 1,500 more than 30 s
    // over Kafka), far past the lease and a heartbeat they are due within; 32 at once take
    // 2.4 s. The bound leaves room for a loaded machine.
    let took = frozen.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "n2's {HELD} offline events took {took:?}: announced one at a time?"
    );
    drop(sockets);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
