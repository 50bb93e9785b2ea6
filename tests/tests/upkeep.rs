//! A node's upkeep under a stall (`docs/design.md` section 13): a round that stalls past the
//! node's own lease between renewing it and reaping (a starved process, a slow store) must not
//! reap the node itself. Found by the cluster suite's failover case, where a node busy with
//! 1,500 connects announced its own live connections offline.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;
use impush_core::{
    Answer, ChannelInfo, ChannelName, ClientId, ConnectionId, DroppedConnection, Event,
    MemoryBroker, MemoryPresenceStore, NodeId, NodeLease, NodeState, NodeSync, PresenceStore,
    Result,
};
use impush_server::ImServer;
use support::{config, eventually, id, Client};

/// The node's lease in these tests.
const LEASE: Duration = Duration::from_millis(600);

/// A memory presence store whose `live_nodes` (read between a node's heartbeat and its reap)
/// stalls for longer than a lease once, right after heartbeat number `STALL_AFTER`.
#[derive(Debug, Default)]
struct Stalling {
    inner: MemoryPresenceStore,
    heartbeats: AtomicU64,
    stalled: AtomicU64,
}

/// By then the node has renewed its lease without failure for more than a lease (it reaps).
const STALL_AFTER: u64 = 5;

#[async_trait]
impl PresenceStore for Stalling {
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
        self.inner.sync_node(n, c, clear).await
    }
    async fn heartbeat(&self, n: &NodeId, lease: Duration, st: NodeState) -> Result<bool> {
        self.heartbeats.fetch_add(1, Ordering::AcqRel);
        self.inner.heartbeat(n, lease, st).await
    }
    async fn live_nodes(&self) -> Result<Vec<NodeLease>> {
        if self.heartbeats.load(Ordering::Acquire) == STALL_AFTER
            && self.stalled.fetch_add(1, Ordering::AcqRel) == 0
        {
            tokio::time::sleep(LEASE * 2).await;
        }
        self.inner.live_nodes().await
    }
    async fn reap_expired(&self, clear: bool) -> Result<Vec<DroppedConnection>> {
        self.inner.reap_expired(clear).await
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
        self.inner.client_channels(c).await
    }
    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        self.inner.channels().await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

/// The round after heartbeat `STALL_AFTER` stalls for two leases before it reaps: the node's
/// own lease has run out by then, and a reap would drop its live connection and announce it
/// offline (then, a heartbeat later, online again as "forgotten"). It must skip that reap:
/// no event at all for the connection, and it stays online throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upkeep_round_does_not_reap_its_own_node() {
    let presence = Arc::new(Stalling::default());
    let mut c = config();
    c.cluster.node_lease = LEASE;
    let server = ImServer::start_with(c, Arc::new(MemoryBroker::default()), presence.clone())
        .await
        .unwrap();
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
