//! The PresenceStore conformance suite against `[presence] kind = "cluster"`.
//!
//! The suite talks to one store and names arbitrary node ids; cluster presence is one instance
//! per process and records only its own node's connections. So the suite gets an adapter that
//! plays a cluster of instances over one broker, and says where it bends:
//! - node-side calls (connect, disconnect, clear_node, sync_node, heartbeat) go to the instance
//!   of the node they name, started on first use;
//! - queries and channel joins go to a helper instance (no node), as the business's would;
//! - writes become visible to other instances asynchronously, so after each node-side write the
//!   adapter waits until every instance has seen it (`ClusterPresence::barrier`): the suite
//!   expects read-your-writes;
//! - channel memberships are owned by one node (`owner`): the suite's client ids are unknown
//!   when the cluster is configured, so the partitioner maps every client to it. Memberships
//!   spread over several owners (scatter/gather across nodes) are covered by the multi-process
//!   cluster suite (`server/tests/cluster_cluster_presence.rs`);
//! - `reap_expired` asks every instance; only the lowest live node reaps (the owner, which
//!   heartbeats in the background as a live node does), so one answers.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use impush_core::{
    Answer, Broker, ChannelInfo, ChannelName, ClientId, Cluster, ConnectionId, DroppedConnection,
    MemoryBroker, NodeEntry, NodeId, NodeLease, NodeState, NodeSync, PartitionerKind,
    PresenceStore, Result,
};
use impush_presence_cluster::{ClusterPresence, ClusterPresenceConfig};
use tokio::sync::Mutex;

const LEASE: Duration = Duration::from_secs(30);
/// The owner's lease: short, so it may reap within the suite's lease case.
const OWNER_LEASE: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Adapter {
    broker: Arc<dyn Broker>,
    cluster: Cluster,
    reader: ClusterPresence,
    owner: Arc<ClusterPresence>,
    owner_id: NodeId,
    nodes: Mutex<HashMap<NodeId, Arc<ClusterPresence>>>,
}

fn cfg() -> ClusterPresenceConfig {
    ClusterPresenceConfig {
        query_timeout: Duration::from_secs(5),
    }
}

const PREFIX: &str = "cp";

/// A cluster of these node ids (their URLs are never dialled).
fn cluster_of(ids: &[&str]) -> Cluster {
    let nodes = ids
        .iter()
        .map(|n| NodeEntry {
            id: n.parse().unwrap(),
            url: "ws://127.0.0.1:1".into(),
        })
        .collect();
    Cluster::new(nodes, PartitionerKind::default()).unwrap()
}

/// The instance of `node` over `broker`, with the suite's lease and timeout.
async fn node_over(
    broker: Arc<dyn Broker>,
    prefix: &str,
    node: &NodeId,
    cluster: &Cluster,
) -> ClusterPresence {
    ClusterPresence::start(
        broker,
        prefix,
        Some(node.clone()),
        cluster.clone(),
        LEASE,
        &cfg(),
    )
    .await
    .unwrap()
}

impl Adapter {
    async fn new() -> Self {
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
        let owner_id: NodeId = "owner".parse().unwrap();
        let cluster = cluster_of(&[owner_id.as_str()]);
        let owner = Arc::new(node_over(broker.clone(), PREFIX, &owner_id, &cluster).await);
        owner
            .heartbeat(&owner_id, OWNER_LEASE, NodeState::Live)
            .await
            .unwrap();
        // A live node heartbeats all along; a reaper must have for a whole lease.
        let beating = owner.clone();
        let beat_id = owner_id.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(OWNER_LEASE / 5).await;
                if beating
                    .heartbeat(&beat_id, OWNER_LEASE, NodeState::Live)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let reader =
            ClusterPresence::start(broker.clone(), PREFIX, None, cluster.clone(), LEASE, &cfg())
                .await
                .unwrap();
        let mut nodes = HashMap::new();
        nodes.insert(owner_id.clone(), owner.clone());
        Self {
            broker,
            cluster,
            reader,
            owner,
            owner_id,
            nodes: Mutex::new(nodes),
        }
    }

    /// The instance of `node`, started on first use (and introduced to the owner, so it knows
    /// the owner is the lowest live node).
    async fn node(&self, node: &NodeId) -> Arc<ClusterPresence> {
        let mut nodes = self.nodes.lock().await;
        if let Some(n) = nodes.get(node) {
            return n.clone();
        }
        let inst = Arc::new(
            ClusterPresence::start(
                self.broker.clone(),
                PREFIX,
                Some(node.clone()),
                self.cluster.clone(),
                LEASE,
                &cfg(),
            )
            .await
            .unwrap(),
        );
        self.owner
            .heartbeat(&self.owner_id, OWNER_LEASE, NodeState::Live)
            .await
            .unwrap();
        // What the others hold now reaches the newcomer before its first write.
        for other in nodes.values() {
            other.publish_state().await.unwrap();
            other.barrier(&inst).await.unwrap();
        }
        nodes.insert(node.clone(), inst.clone());
        inst
    }

    /// Waits until every instance has seen what `writer` published.
    async fn settle(&self, writer: &ClusterPresence) {
        let nodes: Vec<Arc<ClusterPresence>> = self.nodes.lock().await.values().cloned().collect();
        writer.barrier(&self.reader).await.unwrap();
        for n in nodes {
            writer.barrier(&n).await.unwrap();
        }
    }
}

#[async_trait]
impl PresenceStore for Adapter {
    async fn connect(&self, n: &NodeId, c: &ClientId, k: &ConnectionId) -> Result<usize> {
        let inst = self.node(n).await;
        let r = inst.connect(n, c, k).await;
        self.settle(&inst).await;
        r
    }
    async fn disconnect(
        &self,
        n: &NodeId,
        c: &ClientId,
        k: &ConnectionId,
        clear: bool,
    ) -> Result<usize> {
        let inst = self.node(n).await;
        let r = inst.disconnect(n, c, k, clear).await;
        self.settle(&inst).await;
        r
    }
    async fn clear_node(&self, n: &NodeId, clear: bool) -> Result<Vec<DroppedConnection>> {
        let inst = self.node(n).await;
        let r = inst.clear_node(n, clear).await;
        self.settle(&inst).await;
        r
    }
    async fn sync_node(
        &self,
        n: &NodeId,
        c: &[(ClientId, ConnectionId)],
        clear: bool,
    ) -> Result<NodeSync> {
        let inst = self.node(n).await;
        let r = inst.sync_node(n, c, clear).await;
        self.settle(&inst).await;
        r
    }
    async fn heartbeat(&self, n: &NodeId, lease: Duration, state: NodeState) -> Result<bool> {
        let inst = self.node(n).await;
        let r = inst.heartbeat(n, lease, state).await;
        self.settle(&inst).await;
        r
    }
    async fn live_nodes(&self) -> Result<Vec<NodeLease>> {
        self.reader.live_nodes().await
    }
    async fn reap_expired(&self, clear: bool) -> Result<Vec<DroppedConnection>> {
        let nodes: Vec<Arc<ClusterPresence>> = self.nodes.lock().await.values().cloned().collect();
        let mut all = Vec::new();
        for inst in nodes {
            all.extend(inst.reap_expired(clear).await?);
            self.settle(&inst).await;
        }
        all.sort_by(|a, b| {
            (&a.node, &a.client, &a.connection).cmp(&(&b.node, &b.client, &b.connection))
        });
        Ok(all)
    }
    async fn connections(&self, c: &ClientId) -> Result<Answer<usize>> {
        self.reader.connections(c).await
    }
    async fn online(&self, c: &[ClientId]) -> Result<Answer<Vec<bool>>> {
        self.reader.online(c).await
    }
    async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
        self.reader.online_clients().await
    }
    async fn leave_all_if_offline(&self, c: &ClientId) -> Result<bool> {
        self.reader.leave_all_if_offline(c).await
    }
    async fn join_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
        self.reader.join_channel(ch, c).await
    }
    async fn leave_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
        self.reader.leave_channel(ch, c).await
    }
    async fn channel_members(&self, ch: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        self.reader.channel_members(ch).await
    }
    async fn channel_online(&self, ch: &ChannelName) -> Result<Answer<usize>> {
        self.reader.channel_online(ch).await
    }
    async fn client_channels(&self, c: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        self.reader.client_channels(c).await
    }
    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        self.reader.channels().await
    }
    async fn ping(&self) -> Result<()> {
        self.reader.ping().await
    }
}

async fn presence() -> Option<Arc<dyn PresenceStore>> {
    Some(Arc::new(Adapter::new().await))
}

impush_tests::presence_conformance!(presence);

/// What only cluster presence does: a query that misses a node names it, within the query
/// timeout, instead of hanging; a join for a client whose owner does not answer fails naming
/// the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_named_not_waited_for() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    let cluster = cluster_of(&["n1", "n2"]);
    let quick = ClusterPresenceConfig {
        query_timeout: Duration::from_millis(300),
    };
    let n1: NodeId = "n1".parse().unwrap();
    let _node1 = ClusterPresence::start(
        broker.clone(),
        "q",
        Some(n1),
        cluster.clone(),
        LEASE,
        &quick,
    )
    .await
    .unwrap();
    // n2 never starts.
    let helper = ClusterPresence::start(broker, "q", None, cluster.clone(), LEASE, &quick)
        .await
        .unwrap();
    let room: ChannelName = "room".parse().unwrap();
    let started = std::time::Instant::now();
    let members = helper.channel_members(&room).await.unwrap();
    assert_eq!(members.missing, vec!["n2".parse::<NodeId>().unwrap()]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let channels = helper.channels().await.unwrap();
    assert_eq!(channels.missing, vec!["n2".parse::<NodeId>().unwrap()]);

    let of_n2: ClientId = (0..)
        .map(|i| format!("c{i}").parse::<ClientId>().unwrap())
        .find(|c| cluster.owner(c).id.as_str() == "n2")
        .unwrap();
    let err = helper
        .join_channel(&room, std::slice::from_ref(&of_n2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unavailable"), "{err}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("n2"), "{cause}");
}

/// A broker whose first two publishes after `armed` is set each wait until the other one has
/// started: it proves two publishes are under way at once.
#[derive(Debug)]
struct PairedPublishes {
    inner: Arc<dyn Broker>,
    armed: std::sync::atomic::AtomicBool,
    seen: std::sync::atomic::AtomicUsize,
    pair: tokio::sync::Barrier,
}

#[async_trait]
impl Broker for PairedPublishes {
    async fn publish(&self, topic: &str, payload: bytes::Bytes) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.armed.load(SeqCst) && self.seen.fetch_add(1, SeqCst) < 2 {
            self.pair.wait().await;
        }
        self.inner.publish(topic, payload).await
    }
    async fn subscribe(
        &self,
        topic: &str,
        mode: impush_core::SubscribeMode,
    ) -> Result<impush_core::Subscription> {
        self.inner.subscribe(topic, mode).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}

/// A node does not wait for one reply to reach the broker before it reads the next request:
/// every new connection asks its owner for its channels, and one broker round trip per answer
/// capped a node at a few hundred connections a second over Kafka. Here the node's first
/// reply cannot be published until its second one is under way; answered one at a time, both
/// queries would miss the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_the_next_request_while_a_reply_is_in_flight() {
    let shared: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    let n1: NodeId = "n1".parse().unwrap();
    let cluster = cluster_of(&[n1.as_str()]);
    let paired = Arc::new(PairedPublishes {
        inner: shared.clone(),
        armed: false.into(),
        seen: 0.into(),
        pair: tokio::sync::Barrier::new(2),
    });
    let node = node_over(paired.clone(), "pr", &n1, &cluster).await;
    // A node that heartbeated publishes its state, so the helper starts synced.
    node.heartbeat(&n1, LEASE, NodeState::Live).await.unwrap();
    let helper = ClusterPresence::start(shared, "pr", None, cluster, LEASE, &cfg())
        .await
        .unwrap();
    let room: ChannelName = "room".parse().unwrap();
    let (a, b): (ClientId, ClientId) = ("a".parse().unwrap(), "b".parse().unwrap());
    helper
        .join_channel(&room, std::slice::from_ref(&a))
        .await
        .unwrap();
    paired
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (of_a, of_b) = tokio::join!(helper.client_channels(&a), helper.client_channels(&b));
    let (of_a, of_b) = (of_a.unwrap(), of_b.unwrap());
    assert!(
        of_a.missing.is_empty() && of_b.missing.is_empty(),
        "{of_a:?} {of_b:?}"
    );
    assert_eq!(of_a.value, vec![room]);
    assert!(of_b.value.is_empty());
    drop(node);
}

/// A broker whose subscriptions deliver each message `LAG` after it was published: the feed
/// of a busy node. Messages are read at once (in a task of their own) and held, so the lag
/// does not add up.
#[derive(Debug)]
struct Lagging(Arc<dyn Broker>);

const LAG: Duration = Duration::from_millis(400);

#[async_trait]
impl Broker for Lagging {
    async fn publish(&self, topic: &str, payload: bytes::Bytes) -> Result<()> {
        self.0.publish(topic, payload).await
    }
    async fn subscribe(
        &self,
        topic: &str,
        mode: impush_core::SubscribeMode,
    ) -> Result<impush_core::Subscription> {
        use futures_util::StreamExt;
        let mut feed = self.0.subscribe(topic, mode).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(d) = feed.next().await {
                if tx.send((tokio::time::Instant::now(), d)).is_err() {
                    return;
                }
            }
        });
        let held = futures_util::stream::unfold(rx, |mut rx| async move {
            let (at, d) = rx.recv().await?;
            tokio::time::sleep_until(at + LAG).await;
            Some((d, rx))
        });
        Ok(held.boxed())
    }
    async fn ping(&self) -> Result<()> {
        self.0.ping().await
    }
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

/// `catch_up` reads an instance's feed up to now: a connection another node just made is in
/// its answers afterwards, though its feed lags (a reaper deciding whether a dead node's
/// connection was its client's last relies on this, `docs/design.md` section 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_brings_a_lagging_view_up_to_another_nodes_write() {
    let shared: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    let cluster = cluster_of(&["n1", "n3"]);
    let (n1, n3): (NodeId, NodeId) = ("n1".parse().unwrap(), "n3".parse().unwrap());
    let slow = node_over(Arc::new(Lagging(shared.clone())), "lag", &n1, &cluster).await;
    let other = node_over(shared, "lag", &n3, &cluster).await;
    slow.heartbeat(&n1, LEASE, NodeState::Live).await.unwrap();
    other.heartbeat(&n3, LEASE, NodeState::Live).await.unwrap();
    let x: ClientId = "x".parse().unwrap();
    other
        .connect(&n3, &x, &"n3-1".parse().unwrap())
        .await
        .unwrap();
    let before = slow.online(std::slice::from_ref(&x)).await.unwrap().value;
    assert_eq!(
        before,
        vec![false],
        "the feed lags (else this test shows nothing)"
    );
    slow.catch_up().await.unwrap();
    let after = slow.online(std::slice::from_ref(&x)).await.unwrap().value;
    assert_eq!(after, vec![true], "caught up with n3's connection");
}

/// Memberships survive their owner (`docs/design.md` section 3): a client's home and the next
/// node in its order both keep them. Its home crashes (its instance and memory gone): the
/// other keeper answers for its channels and takes a join meanwhile; the home restarts empty
/// and takes the other keeper's copy, so it answers with both channels. Counted once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_survive_a_crash_and_restart_of_their_owner() {
    use impush_core::NodeStatus;

    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    let cluster = cluster_of(&["n1", "n2", "n3"]);
    let ids: Vec<NodeId> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let mut nodes = Vec::new();
    for id in &ids {
        nodes.push(Some(node_over(broker.clone(), "keep", id, &cluster).await));
    }
    // Each settles its (empty) previous run once all answer, as nodes starting together do.
    for (node, id) in nodes.iter().zip(&ids) {
        node.as_ref().unwrap().clear_node(id, false).await.unwrap();
    }
    let helper =
        ClusterPresence::start(broker.clone(), "keep", None, cluster.clone(), LEASE, &cfg())
            .await
            .unwrap();
    let c: ClientId = (0..)
        .map(|i| format!("c{i}").parse::<ClientId>().unwrap())
        .find(|c| cluster.home(c).id == ids[1])
        .unwrap();
    let (room, hall): (ChannelName, ChannelName) =
        ("room".parse().unwrap(), "hall".parse().unwrap());
    helper
        .join_channel(&room, std::slice::from_ref(&c))
        .await
        .unwrap();

    // n2 crashes; the live view counts it dead.
    nodes[1] = None;
    cluster.set_status(&ids[1], NodeStatus::Dead);
    let channels = helper.client_channels(&c).await.unwrap();
    assert!(channels.missing.is_empty(), "{channels:?}");
    assert_eq!(
        channels.value,
        vec![room.clone()],
        "the other keeper has them"
    );
    helper
        .join_channel(&hall, std::slice::from_ref(&c))
        .await
        .unwrap();

    // n2 restarts with nothing in memory and takes the copy kept with it.
    let back = node_over(broker.clone(), "keep", &ids[1], &cluster).await;
    back.clear_node(&ids[1], false).await.unwrap();
    nodes[1] = Some(back);
    cluster.set_status(&ids[1], NodeStatus::Live);
    let channels = helper.client_channels(&c).await.unwrap();
    assert!(channels.missing.is_empty(), "{channels:?}");
    assert_eq!(channels.value, vec![hall.clone(), room.clone()]);
    let members = helper.channel_members(&room).await.unwrap();
    assert_eq!(members.value, vec![c.clone()]);
    let listed = helper.channels().await.unwrap().value;
    let counted: Vec<(String, usize)> = listed
        .iter()
        .map(|i| (i.name.to_string(), i.members))
        .collect();
    assert_eq!(
        counted,
        vec![("hall".to_string(), 1), ("room".to_string(), 1)],
        "each member counted once"
    );
}
