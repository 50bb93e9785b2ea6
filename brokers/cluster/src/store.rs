//! [`ClusterPresence`]: the [`PresenceStore`] with no store.
//!
//! Every instance (one per node, one per helper) reads `{prefix}.presence` and keeps a view of
//! every node's connections; a node instance also answers requests. See the crate docs for
//! who knows what and how stale each answer can be.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;
use impush_core::{
    envelope, AddedConnection, Answer, Broker, ChannelInfo, ChannelName, ClientId, Cluster,
    ConnectionId, DroppedConnection, Error, NodeId, NodeSync, PresenceStore, Result, SubscribeMode,
};
use tokio::{
    sync::{Notify, Semaphore},
    time::Instant,
};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    rpc::{Gathered, Pending},
    state::{digest, Memberships, View},
    wire::{Query, Reply, Wire},
    ClusterPresenceConfig,
};

const BACKEND: &str = "cluster presence";
/// Barriers remembered (a reader waits for one it expects; older ones are forgotten).
const BARRIERS: usize = 1024;
/// Replies being published at once. The reader hands replies off instead of awaiting each
/// publish: one round trip to the broker per request would cap a node at a few hundred
/// answers a second (every new connection asks its owner for its channels). Past this many
/// the reader waits, so a flood of requests cannot grow memory.
const REPLIES_IN_FLIGHT: usize = 256;

/// Presence kept by the nodes themselves and exchanged over the broker.
///
/// Created once per process by the `cluster` presence factory, with the node id on a node and
/// without one in a helper.
#[derive(Debug)]
pub struct ClusterPresence {
    inner: Arc<Inner>,
    _stop: DropGuard,
}

#[derive(Debug)]
struct Inner {
    broker: Arc<dyn Broker>,
    topic: String,
    me: Option<NodeId>,
    instance: String,
    cluster: Option<Cluster>,
    nodes: Vec<NodeId>,
    timeout: Duration,
    lease: Duration,
    started: Instant,
    state: Mutex<State>,
    pending: Pending,
    barriers: Mutex<VecDeque<(String, u64)>>,
    barrier_seen: Notify,
    replies: Arc<Semaphore>,
}

#[derive(Debug)]
struct State {
    view: View,
    /// This node's own connections (a node instance only): the truth the view mirrors.
    local: HashMap<ConnectionId, ClientId>,
    /// Memberships of the clients this node owns.
    memberships: Memberships,
    /// Whether the cluster still counts this node as alive (false before the first heartbeat,
    /// after a clear, and after another node reaped it).
    known: bool,
    /// Whether this node has settled what its previous run left (cleared, synced or
    /// heartbeated): until then it does not publish its (empty) state, which would make the
    /// others forget connections it must first announce as gone.
    ready: bool,
    /// When this node's own heartbeat last came back through the feed, and since when it has
    /// come back without a gap longer than a lease: a node judges others only from a feed it
    /// has been reading all along, never from a view that went stale while it was frozen or
    /// cut off.
    last_echo: Option<Instant>,
    echoing_since: Option<Instant>,
}

fn unavailable(why: String) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        source: Some(why.into()),
    }
}

impl ClusterPresence {
    /// Joins the cluster's presence exchange on `{prefix}.presence`. `me` is this node (`None`
    /// in a helper); `cluster` says which node owns which client.
    ///
    /// # Errors
    /// Broker errors while subscribing.
    pub async fn start(
        broker: Arc<dyn Broker>,
        prefix: &str,
        me: Option<NodeId>,
        cluster: Cluster,
        lease: Duration,
        cfg: &ClusterPresenceConfig,
    ) -> Result<Self> {
        let topic = format!("{prefix}.presence");
        let sub = broker.subscribe(&topic, SubscribeMode::Fanout).await?;
        let inner = Arc::new(Inner {
            broker,
            topic,
            me,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            nodes: cluster.nodes().iter().map(|n| n.id.clone()).collect(),
            cluster: Some(cluster),
            timeout: cfg.query_timeout,
            lease,
            started: Instant::now(),
            state: Mutex::new(State {
                view: View::new(lease),
                local: HashMap::new(),
                memberships: Memberships::default(),
                known: false,
                ready: false,
                last_echo: None,
                echoing_since: None,
            }),
            pending: Pending::default(),
            barriers: Mutex::new(VecDeque::new()),
            barrier_seen: Notify::new(),
            replies: Arc::new(Semaphore::new(REPLIES_IN_FLIGHT)),
        });
        let stop = CancellationToken::new();
        tokio::spawn(inner.clone().run(sub, stop.clone()));
        // Every node publishes its state for the newcomer; a helper waits for it (bounded),
        // so its first answers are complete.
        inner.ask_all_state().await;
        if inner.me.is_none() {
            let deadline = Instant::now() + inner.timeout;
            while !inner.unsynced().is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Self {
            inner,
            _stop: stop.drop_guard(),
        })
    }

    /// Waits until `reader` has seen every message this instance published so far (writes
    /// become visible to other instances asynchronously; tests and tools that need
    /// read-your-writes across instances use this).
    ///
    /// # Errors
    /// Broker errors; [`Error::Unavailable`] if `reader` did not see it within the query
    /// timeout.
    pub async fn barrier(&self, reader: &ClusterPresence) -> Result<()> {
        let token = rand_token();
        let key = (self.inner.instance.clone(), token);
        self.inner
            .publish(&Wire::Barrier {
                from: key.0.clone(),
                token,
            })
            .await?;
        let r = &reader.inner;
        let deadline = Instant::now() + r.timeout;
        loop {
            let notified = r.barrier_seen.notified();
            if r.barriers.lock().is_ok_and(|b| b.contains(&key)) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(unavailable(
                    "barrier not seen within the query timeout".into(),
                ));
            }
        }
    }

    /// Publishes this node's connections to every instance (nodes do it by themselves when an
    /// instance asks; a tool that just started a reader can use it with [`Self::barrier`]).
    ///
    /// # Errors
    /// Broker errors; [`Error::InvalidArgument`] on a helper instance.
    pub async fn publish_state(&self) -> Result<()> {
        let me = self.me()?.clone();
        let connections = sorted_local(&self.inner.state().local);
        self.inner
            .publish(&Wire::NodeState {
                node: me,
                connections,
            })
            .await
    }

    fn me(&self) -> Result<&NodeId> {
        self.inner.me.as_ref().ok_or_else(|| {
            Error::InvalidArgument("cluster presence: only a node records connections".into())
        })
    }

    fn mine(&self, node: &NodeId) -> Result<&NodeId> {
        let me = self.me()?;
        if node != me {
            return Err(Error::InvalidArgument(format!(
                "cluster presence on node {me} cannot record connections of node {node}"
            )));
        }
        Ok(me)
    }
}

fn rand_token() -> u64 {
    let u = uuid::Uuid::new_v4();
    let (hi, lo) = u.as_u64_pair();
    hi ^ lo
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it already failed a test or a request; the data (id sets) is
        // still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owns(&self, client: &ClientId) -> bool {
        match (&self.me, &self.cluster) {
            (Some(me), Some(c)) => &c.owner(client).id == me,
            _ => false,
        }
    }

    async fn publish(&self, msg: &Wire) -> Result<()> {
        let payload = envelope::encode("presence message", msg)?;
        self.broker.publish(&self.topic, payload).await
    }

    /// Publishes a reply without waiting for the broker to take it (bounded by
    /// [`REPLIES_IN_FLIGHT`]). Replies need no order: each answers its own request id.
    async fn send_reply(&self, msg: &Wire) {
        let payload = match envelope::encode("presence message", msg) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot encode a presence reply"
                );
                return;
            }
        };
        // The semaphore is never closed, so this only waits for a free slot.
        let Ok(permit) = self.replies.clone().acquire_owned().await else {
            return;
        };
        let broker = self.broker.clone();
        let topic = self.topic.clone();
        tokio::spawn(async move {
            match broker.publish(&topic, payload).await {
                // The node is shutting down: nobody needs the answer.
                Ok(()) | Err(Error::Closed(_)) => {}
                Err(e) => tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot send a presence reply"
                ),
            }
            drop(permit);
        });
    }

    async fn ask_all_state(&self) {
        let rid = u64::MAX; // nobody waits for these answers
        let msg = Wire::Request {
            rid,
            from: self.instance.clone(),
            to: None,
            query: Query::State,
        };
        if let Err(e) = self.publish(&msg).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot ask nodes for their presence state"
            );
        }
    }

    /// Configured nodes, other than this one, whose connections this view may lack: alive (or
    /// not heard from yet, within a lease of start) and never synced.
    fn unsynced(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let st = self.state();
        let mut out = Vec::new();
        for n in &self.nodes {
            if Some(n) == self.me.as_ref() {
                continue;
            }
            let lacking = match st.view.node(n) {
                Some(v) => !v.synced && v.alive(now),
                None => now.duration_since(self.started) < self.lease,
            };
            if lacking {
                out.push(n.clone());
            }
        }
        out
    }

    /// Asks `to` (one node, or every configured node) and gathers the answers; nodes known to
    /// be dead are reported missing at once instead of being waited for.
    async fn ask(&self, to: Option<&NodeId>, query: Query) -> Result<Gathered> {
        let expected: Vec<NodeId> = match to {
            Some(n) => vec![n.clone()],
            None => self.nodes.clone(),
        };
        let now = Instant::now();
        let (waitable, dead): (Vec<NodeId>, Vec<NodeId>) = {
            let st = self.state();
            expected.into_iter().partition(|n| {
                Some(n) == self.me.as_ref() || st.view.node(n).is_none_or(|v| v.alive(now))
            })
        };
        let waiting = self.pending.open();
        self.publish(&Wire::Request {
            rid: waiting.rid,
            from: self.instance.clone(),
            to: to.cloned(),
            query,
        })
        .await?;
        let mut gathered = waiting.gather(&waitable, self.timeout).await;
        gathered.missing.extend(dead);
        gathered.missing.sort();
        Ok(gathered)
    }

    /// The reader loop: applies state messages to the view, answers requests addressed to this
    /// node, routes replies, records barriers; resubscribes when the stream ends.
    async fn run(self: Arc<Self>, first: impush_core::Subscription, stop: CancellationToken) {
        let mut sub = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(mut stream) = sub.take() {
                loop {
                    let item = tokio::select! {
                        () = stop.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(d)) => match envelope::decode::<Wire>("presence message", &d.ack())
                        {
                            Ok(msg) => self.on_message(msg).await,
                            Err(e) => tracing::warn!(
                                error = &e as &dyn std::error::Error,
                                "dropping undecodable presence message"
                            ),
                        },
                        Some(Err(Error::Lagged { dropped })) => {
                            tracing::warn!(
                                dropped,
                                "presence feed lagged; asking every node for its state"
                            );
                            self.ask_all_state().await;
                        }
                        Some(Err(e)) => tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "presence feed error"
                        ),
                        None => break,
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match self
                .broker
                .subscribe(&self.topic, SubscribeMode::Fanout)
                .await
            {
                Ok(s) => {
                    sub = Some(s);
                    backoff = Duration::from_millis(100);
                    // Deltas published while we were away are lost: rebuild the view.
                    self.ask_all_state().await;
                }
                Err(e) => {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "presence resubscribe failed"
                    );
                }
            }
        }
    }

    async fn on_message(&self, msg: Wire) {
        let me = self.me.as_ref();
        match msg {
            Wire::Connected {
                node,
                client,
                connection,
            } if Some(&node) != me => self.state().view.add(&node, &client, &connection),
            Wire::Disconnected {
                node,
                client,
                connection,
                cleared,
            } if Some(&node) != me => {
                let mut st = self.state();
                st.view.remove(&node, &connection);
                if cleared && self.owns(&client) && st.view.connections_of(&client) == 0 {
                    st.memberships.leave_all(&client);
                }
            }
            Wire::NodeState { node, connections } if Some(&node) != me => {
                self.state().view.replace(&node, &connections);
            }
            Wire::Dropped {
                node,
                by,
                dropped,
                clear,
            } => {
                let mut st = self.state();
                if Some(&node) == me && by != node {
                    // Declared dead while alive: the cluster no longer counts these
                    // connections. Forget them here too, so the node's next sync puts them
                    // back (and the node announces them again), told by our next heartbeat.
                    st.known = false;
                    for d in &dropped {
                        st.local.remove(&d.connection);
                    }
                }
                if Some(&node) != me || by != node {
                    for d in &dropped {
                        st.view.remove(&d.node, &d.connection);
                    }
                }
                if clear {
                    for d in dropped.iter().filter(|d| d.last) {
                        if self.owns(&d.client) && st.view.connections_of(&d.client) == 0 {
                            st.memberships.leave_all(&d.client);
                        }
                    }
                }
            }
            Wire::Heartbeat {
                node,
                lease_ms,
                count,
                digest: theirs,
            } if Some(&node) != me => {
                let ask = {
                    let mut st = self.state();
                    st.view.heard(&node, Duration::from_millis(lease_ms));
                    let drifted = st.view.node(&node).is_some_and(|v| {
                        !v.synced
                            || v.connections.len() as u64 != count
                            || digest(v.connections.keys()) != theirs
                    });
                    let recently = st.view.node(&node).and_then(|v| v.asked).is_some_and(|t| {
                        t.elapsed()
                            < Duration::from_millis(lease_ms).max(Duration::from_millis(200))
                    });
                    if drifted && !recently {
                        st.view.mark_asked(&node);
                    }
                    drifted && !recently
                };
                if ask {
                    let msg = Wire::Request {
                        rid: u64::MAX,
                        from: self.instance.clone(),
                        to: Some(node),
                        query: Query::State,
                    };
                    if let Err(e) = self.publish(&msg).await {
                        tracing::debug!(
                            error = &e as &dyn std::error::Error,
                            "cannot ask a node for its state"
                        );
                    }
                }
            }
            Wire::Heartbeat { node, lease_ms, .. } if Some(&node) == me => {
                let now = Instant::now();
                let lease = Duration::from_millis(lease_ms);
                let mut st = self.state();
                if st.last_echo.is_none_or(|t| now.duration_since(t) > lease) {
                    st.echoing_since = Some(now);
                }
                st.last_echo = Some(now);
            }
            Wire::Request {
                rid,
                from,
                to,
                query,
            } => {
                let Some(me) = me else { return };
                if to.as_ref().is_some_and(|t| t != me) {
                    return;
                }
                let reply = self.answer(query).await;
                if rid == u64::MAX {
                    return; // nobody waits
                }
                let msg = Wire::Reply {
                    rid,
                    to: from,
                    node: me.clone(),
                    reply,
                };
                self.send_reply(&msg).await;
            }
            Wire::Reply {
                rid,
                to,
                node,
                reply,
            } if to == self.instance => self.pending.deliver(rid, node, reply),
            Wire::Barrier { from, token } => {
                if let Ok(mut b) = self.barriers.lock() {
                    if b.len() >= BARRIERS {
                        b.pop_front();
                    }
                    b.push_back((from, token));
                }
                self.barrier_seen.notify_waiters();
            }
            // This node's own deltas: the view was updated when they were made.
            _ => {}
        }
    }

    /// This node's answer to a request.
    async fn answer(&self, query: Query) -> Reply {
        match query {
            Query::Join { channel, clients } => {
                self.state().memberships.join(&channel, &clients);
                Reply::Done
            }
            Query::Leave { channel, clients } => {
                self.state().memberships.leave(&channel, &clients);
                Reply::Done
            }
            Query::ChannelMembers { channel } => Reply::Clients {
                clients: self.state().memberships.members(&channel),
            },
            Query::ChannelCounts => {
                let st = self.state();
                Reply::Counts {
                    counts: st.memberships.counts(&st.view),
                }
            }
            Query::ClientChannels { client } => Reply::Channels {
                channels: self.state().memberships.channels_of(&client),
            },
            Query::ConnectionsOf { node } => Reply::Connections {
                connections: self.state().view.connections_on(&node),
            },
            Query::State => {
                let ready = self.state().ready;
                if let (Some(me), true) = (&self.me, ready) {
                    let connections = sorted_local(&self.state().local);
                    let msg = Wire::NodeState {
                        node: me.clone(),
                        connections,
                    };
                    if let Err(e) = self.publish(&msg).await {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "cannot publish this node's presence state"
                        );
                    }
                }
                Reply::Done
            }
        }
    }

    /// Sends `query` for `clients` to each client's owner; fails naming the owners that did
    /// not confirm in time.
    async fn to_owners(
        &self,
        clients: &[ClientId],
        query: impl Fn(Vec<ClientId>) -> Query,
    ) -> Result<()> {
        let Some(cluster) = &self.cluster else {
            return Err(Error::Config(
                "cluster presence needs the cluster's node list".into(),
            ));
        };
        let mut by_owner: BTreeMap<NodeId, Vec<ClientId>> = BTreeMap::new();
        for c in clients {
            by_owner
                .entry(cluster.owner(c).id.clone())
                .or_default()
                .push(c.clone());
        }
        let mut failed = Vec::new();
        for (owner, group) in by_owner {
            let g = self.ask(Some(&owner), query(group)).await?;
            if !g.missing.is_empty() {
                failed.push(owner);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = failed.iter().map(ToString::to_string).collect();
        Err(unavailable(format!(
            "node(s) {} did not confirm within {:?}",
            names.join(", "),
            self.timeout
        )))
    }
}

fn sorted_local(local: &HashMap<ConnectionId, ClientId>) -> Vec<(ClientId, ConnectionId)> {
    let mut v: Vec<(ClientId, ConnectionId)> = local
        .iter()
        .map(|(conn, client)| (client.clone(), conn.clone()))
        .collect();
    v.sort();
    v
}

#[async_trait]
impl PresenceStore for ClusterPresence {
    async fn connect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
    ) -> Result<usize> {
        let me = self.mine(node)?;
        let n = {
            let mut st = self.inner.state();
            st.local.insert(connection.clone(), client.clone());
            st.view.add(me, client, connection);
            st.view.connections_of(client)
        };
        self.inner
            .publish(&Wire::Connected {
                node: me.clone(),
                client: client.clone(),
                connection: connection.clone(),
            })
            .await?;
        Ok(n)
    }

    async fn disconnect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        clear_channels: bool,
    ) -> Result<usize> {
        let me = self.mine(node)?;
        let (left, cleared) = {
            let mut st = self.inner.state();
            st.local.remove(connection);
            st.view.remove(me, connection);
            let left = st.view.connections_of(client);
            let cleared = clear_channels && left == 0;
            if cleared && self.inner.owns(client) {
                st.memberships.leave_all(client);
            }
            (left, cleared)
        };
        self.inner
            .publish(&Wire::Disconnected {
                node: me.clone(),
                client: client.clone(),
                connection: connection.clone(),
                cleared,
            })
            .await?;
        Ok(left)
    }

    async fn clear_node(
        &self,
        node: &NodeId,
        clear_channels: bool,
    ) -> Result<Vec<DroppedConnection>> {
        let me = self.mine(node)?.clone();
        let had_local = !self.inner.state().local.is_empty();
        // A node starting after a crash remembers nothing: the others' views say what it had.
        let mut held: BTreeSet<(ClientId, ConnectionId)> = BTreeSet::new();
        if !had_local {
            let g = self
                .inner
                .ask(None, Query::ConnectionsOf { node: me.clone() })
                .await?;
            for (_, reply) in g.replies {
                if let Reply::Connections { connections } = reply {
                    held.extend(connections);
                }
            }
        }
        let dropped = {
            let mut st = self.inner.state();
            held.extend(st.local.drain().map(|(conn, client)| (client, conn)));
            held.extend(st.view.connections_on(&me));
            st.view.drop_node(&me);
            st.known = false;
            st.ready = true;
            let dropped = st.view.mark_last(&me, held.into_iter().collect());
            if clear_channels {
                for d in dropped.iter().filter(|d| d.last) {
                    if self.inner.owns(&d.client) {
                        st.memberships.leave_all(&d.client);
                    }
                }
            }
            dropped
        };
        if !dropped.is_empty() {
            self.inner
                .publish(&Wire::Dropped {
                    node: me.clone(),
                    by: me.clone(),
                    dropped: dropped.clone(),
                    clear: clear_channels,
                })
                .await?;
        }
        Ok(dropped)
    }

    async fn sync_node(
        &self,
        node: &NodeId,
        connections: &[(ClientId, ConnectionId)],
        clear_channels: bool,
    ) -> Result<NodeSync> {
        let me = self.mine(node)?.clone();
        let (removed, added, state) = {
            let mut st = self.inner.state();
            st.ready = true;
            let want: HashSet<&ConnectionId> = connections.iter().map(|(_, c)| c).collect();
            let mut added = Vec::new();
            for (client, connection) in connections {
                if !st.local.contains_key(connection) {
                    let first = st.view.connections_of(client) == 0;
                    st.local.insert(connection.clone(), client.clone());
                    st.view.add(&me, client, connection);
                    added.push(AddedConnection {
                        client: client.clone(),
                        connection: connection.clone(),
                        first,
                    });
                }
            }
            let mut ghosts: Vec<(ClientId, ConnectionId)> = st
                .local
                .iter()
                .filter(|(conn, _)| !want.contains(conn))
                .map(|(conn, client)| (client.clone(), conn.clone()))
                .collect();
            ghosts.sort();
            for (_, conn) in &ghosts {
                st.local.remove(conn);
                st.view.remove(&me, conn);
            }
            let removed = st.view.mark_last(&me, ghosts);
            if clear_channels {
                for d in removed.iter().filter(|d| d.last) {
                    if self.inner.owns(&d.client) {
                        st.memberships.leave_all(&d.client);
                    }
                }
            }
            added.sort_by(|a, b| (&a.client, &a.connection).cmp(&(&b.client, &b.connection)));
            (removed, added, sorted_local(&st.local))
        };
        if !removed.is_empty() {
            self.inner
                .publish(&Wire::Dropped {
                    node: me.clone(),
                    by: me.clone(),
                    dropped: removed.clone(),
                    clear: clear_channels,
                })
                .await?;
        }
        self.inner
            .publish(&Wire::NodeState {
                node: me,
                connections: state,
            })
            .await?;
        Ok(NodeSync { removed, added })
    }

    async fn heartbeat(&self, node: &NodeId, lease: Duration) -> Result<bool> {
        let me = self.mine(node)?.clone();
        let (count, dig) = {
            let st = self.inner.state();
            (st.local.len() as u64, digest(st.local.keys()))
        };
        self.inner
            .publish(&Wire::Heartbeat {
                node: me.clone(),
                lease_ms: lease.as_millis() as u64,
                count,
                digest: dig,
            })
            .await?;
        let mut st = self.inner.state();
        st.view.heard(&me, lease);
        st.ready = true;
        Ok(std::mem::replace(&mut st.known, true))
    }

    async fn reap_expired(&self, clear_channels: bool) -> Result<Vec<DroppedConnection>> {
        let Some(me) = self.inner.me.clone() else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        let reaped: Vec<(NodeId, Vec<DroppedConnection>)> = {
            let mut st = self.inner.state();
            let lease = st
                .view
                .node(&me)
                .map_or(Duration::from_secs(10), |v| v.lease);
            let feed_fresh = st.last_echo.is_some_and(|t| now.duration_since(t) <= lease)
                && st
                    .echoing_since
                    .is_some_and(|t| now.duration_since(t) >= lease);
            if !feed_fresh {
                return Ok(Vec::new());
            }
            // Exactly one survivor reaps: the lowest id among the nodes still alive.
            let lowest_alive = st
                .view
                .nodes()
                .filter(|(n, v)| **n == me || v.alive(now))
                .map(|(n, _)| n.clone())
                .chain(std::iter::once(me.clone()))
                .min();
            if lowest_alive.as_ref() != Some(&me) {
                return Ok(Vec::new());
            }
            let expired: Vec<NodeId> = st
                .view
                .nodes()
                .filter(|(n, v)| **n != me && !v.alive(now))
                .map(|(n, _)| n.clone())
                .collect();
            let mut out = Vec::new();
            for n in expired {
                let dropped = st.view.drop_node(&n);
                if clear_channels {
                    for d in dropped.iter().filter(|d| d.last) {
                        if self.inner.owns(&d.client) {
                            st.memberships.leave_all(&d.client);
                        }
                    }
                }
                if !dropped.is_empty() {
                    out.push((n, dropped));
                }
            }
            out
        };
        let mut all = Vec::new();
        for (node, dropped) in reaped {
            self.inner
                .publish(&Wire::Dropped {
                    node,
                    by: me.clone(),
                    dropped: dropped.clone(),
                    clear: clear_channels,
                })
                .await?;
            all.extend(dropped);
        }
        Ok(all)
    }

    async fn connections(&self, client: &ClientId) -> Result<Answer<usize>> {
        let missing = self.inner.unsynced();
        let n = self.inner.state().view.connections_of(client);
        Ok(Answer { value: n, missing })
    }

    async fn online(&self, clients: &[ClientId]) -> Result<Answer<Vec<bool>>> {
        let missing = self.inner.unsynced();
        let st = self.inner.state();
        let value = clients
            .iter()
            .map(|c| st.view.connections_of(c) > 0)
            .collect();
        Ok(Answer { value, missing })
    }

    async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
        let missing = self.inner.unsynced();
        let value = self.inner.state().view.online_clients();
        Ok(Answer { value, missing })
    }

    async fn join_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        self.inner
            .to_owners(clients, |group| Query::Join {
                channel: channel.clone(),
                clients: group,
            })
            .await
    }

    async fn leave_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        self.inner
            .to_owners(clients, |group| Query::Leave {
                channel: channel.clone(),
                clients: group,
            })
            .await
    }

    async fn channel_members(&self, channel: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        let g = self
            .inner
            .ask(
                None,
                Query::ChannelMembers {
                    channel: channel.clone(),
                },
            )
            .await?;
        let mut members = BTreeSet::new();
        for (_, reply) in g.replies {
            if let Reply::Clients { clients } = reply {
                members.extend(clients);
            }
        }
        Ok(Answer {
            value: members.into_iter().collect(),
            missing: g.missing,
        })
    }

    async fn channel_online(&self, channel: &ChannelName) -> Result<Answer<usize>> {
        let members = self.channel_members(channel).await?;
        let st = self.inner.state();
        Ok(members.map(|m| m.iter().filter(|c| st.view.connections_of(c) > 0).count()))
    }

    async fn client_channels(&self, client: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        let Some(cluster) = &self.inner.cluster else {
            return Err(Error::Config(
                "cluster presence needs the cluster's node list".into(),
            ));
        };
        let owner = cluster.owner(client).id.clone();
        let g = self
            .inner
            .ask(
                Some(&owner),
                Query::ClientChannels {
                    client: client.clone(),
                },
            )
            .await?;
        let value = g
            .replies
            .into_iter()
            .find_map(|(n, r)| match r {
                Reply::Channels { channels } if n == owner => Some(channels),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Answer {
            value,
            missing: g.missing,
        })
    }

    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        let g = self.inner.ask(None, Query::ChannelCounts).await?;
        let mut merged: BTreeMap<ChannelName, (usize, usize)> = BTreeMap::new();
        for (_, reply) in g.replies {
            if let Reply::Counts { counts } = reply {
                for (name, members, online) in counts {
                    let e = merged.entry(name).or_default();
                    e.0 += members;
                    e.1 += online;
                }
            }
        }
        let value = merged
            .into_iter()
            .map(|(name, (members, online))| ChannelInfo {
                name,
                members,
                online,
            })
            .collect();
        Ok(Answer {
            value,
            missing: g.missing,
        })
    }

    async fn ping(&self) -> Result<()> {
        self.inner.broker.ping().await
    }
}
