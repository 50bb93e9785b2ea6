//! What one instance knows: its [`View`] of every node's connections (all instances keep one,
//! from the nodes' deltas and heartbeats), and, on a node, the [`Memberships`] of the clients
//! that node keeps (each client's two keepers hold them; others ask one).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    time::Duration,
};

use impush_core::{ChannelName, ClientId, ConnectionId, DroppedConnection, NodeId};
use tokio::time::Instant;

/// One node as an instance sees it.
#[derive(Debug)]
pub(crate) struct NodeView {
    pub(crate) connections: HashMap<ConnectionId, ClientId>,
    /// When its last heartbeat (or, before any, this view) arrived.
    pub(crate) seen: Instant,
    pub(crate) lease: Duration,
    /// Whether a full state of the node arrived (else the view may lack connections made
    /// before this instance started).
    pub(crate) synced: bool,
    /// When this instance last asked the node for its state (rate limit).
    pub(crate) asked: Option<Instant>,
    /// Its last heartbeat said it is draining.
    pub(crate) draining: bool,
    /// The highest change counter of the node's messages applied here (`wire`).
    pub(crate) seq: u64,
}

impl NodeView {
    fn new(lease: Duration, now: Instant) -> Self {
        Self {
            connections: HashMap::new(),
            seen: now,
            lease,
            synced: false,
            asked: None,
            draining: false,
            seq: 0,
        }
    }

    pub(crate) fn alive(&self, now: Instant) -> bool {
        now.duration_since(self.seen) <= self.lease
    }
}

/// A summary of a set of connections: equal sets have equal digests (order-independent).
pub(crate) fn digest<'a>(connections: impl Iterator<Item = &'a ConnectionId>) -> u64 {
    let h = BuildHasherDefault::<DefaultHasher>::default();
    connections.fold(0u64, |acc, c| acc ^ h.hash_one(c.as_str()))
}

/// Every node's connections as this instance knows them, and per-client counts for quick
/// answers.
#[derive(Debug)]
pub(crate) struct View {
    nodes: BTreeMap<NodeId, NodeView>,
    counts: HashMap<ClientId, usize>,
    default_lease: Duration,
}

impl View {
    pub(crate) fn new(default_lease: Duration) -> Self {
        Self {
            nodes: BTreeMap::new(),
            counts: HashMap::new(),
            default_lease,
        }
    }

    /// `node`'s view, created (as first seen at `now`) if this is the first word of it.
    fn node_mut(&mut self, node: &NodeId, now: Instant) -> &mut NodeView {
        let lease = self.default_lease;
        self.nodes
            .entry(node.clone())
            .or_insert_with(|| NodeView::new(lease, now))
    }

    /// A message of `node` with change counter `seq` was applied (nothing when the view does
    /// not know the node: a change cannot make a node known).
    pub(crate) fn changed(&mut self, node: &NodeId, seq: u64) {
        if let Some(v) = self.nodes.get_mut(node) {
            v.seq = v.seq.max(seq);
        }
    }

    pub(crate) fn node(&self, node: &NodeId) -> Option<&NodeView> {
        self.nodes.get(node)
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&NodeId, &NodeView)> {
        self.nodes.iter()
    }

    pub(crate) fn add(
        &mut self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        now: Instant,
    ) {
        let fresh = self
            .node_mut(node, now)
            .connections
            .insert(connection.clone(), client.clone())
            .is_none();
        if fresh {
            *self.counts.entry(client.clone()).or_default() += 1;
        }
    }

    /// Removes a connection; returns whether it was known.
    pub(crate) fn remove(&mut self, node: &NodeId, connection: &ConnectionId) -> bool {
        let Some(client) = self
            .nodes
            .get_mut(node)
            .and_then(|n| n.connections.remove(connection))
        else {
            return false;
        };
        if let Some(n) = self.counts.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&client);
            }
        }
        true
    }

    /// Replaces what the view holds for `node` with its full state.
    pub(crate) fn replace(
        &mut self,
        node: &NodeId,
        connections: &[(ClientId, ConnectionId)],
        now: Instant,
    ) {
        let old: Vec<ConnectionId> = self
            .nodes
            .get(node)
            .map(|n| n.connections.keys().cloned().collect())
            .unwrap_or_default();
        for c in &old {
            self.remove(node, c);
        }
        for (client, connection) in connections {
            self.add(node, client, connection, now);
        }
        self.node_mut(node, now).synced = true;
    }

    /// Forgets `node` entirely (reaped or cleared), returning what it held, sorted by client
    /// and connection, each client's last one marked when it has none left elsewhere.
    pub(crate) fn drop_node(&mut self, node: &NodeId) -> Vec<DroppedConnection> {
        let Some(view) = self.nodes.remove(node) else {
            return Vec::new();
        };
        let mut held: Vec<(ClientId, ConnectionId)> = view
            .connections
            .into_iter()
            .map(|(conn, client)| (client, conn))
            .collect();
        held.sort();
        for (client, _) in &held {
            if let Some(n) = self.counts.get_mut(client) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(client);
                }
            }
        }
        self.mark_last(node, held)
    }

    /// `conns` (sorted) as dropped connections of `node`, the last of each client marked when
    /// the client has no connection left in the view.
    pub(crate) fn mark_last(
        &self,
        node: &NodeId,
        conns: Vec<(ClientId, ConnectionId)>,
    ) -> Vec<DroppedConnection> {
        let n = conns.len();
        let mut out = Vec::with_capacity(n);
        for (i, (client, connection)) in conns.iter().enumerate() {
            let last_of_client = i + 1 == n || conns[i + 1].0 != *client;
            out.push(DroppedConnection {
                node: node.clone(),
                client: client.clone(),
                connection: connection.clone(),
                last: last_of_client && self.connections_of(client) == 0,
            });
        }
        out
    }

    /// Forgets `node`'s lease (it cleared itself); its connections were removed already.
    pub(crate) fn forget_lease(&mut self, node: &NodeId) {
        if self
            .nodes
            .get(node)
            .is_some_and(|v| v.connections.is_empty())
        {
            self.nodes.remove(node);
        }
    }

    /// Whether `node` said it is draining in its last heartbeat.
    pub(crate) fn set_draining(&mut self, node: &NodeId, draining: bool, now: Instant) {
        self.node_mut(node, now).draining = draining;
    }

    /// The nodes whose lease has not run out at `now`, and whether each is draining, sorted.
    pub(crate) fn live_nodes(&self, now: Instant) -> Vec<(NodeId, bool)> {
        self.nodes
            .iter()
            .filter(|(_, v)| v.alive(now))
            .map(|(n, v)| (n.clone(), v.draining))
            .collect()
    }

    /// A heartbeat of `node` arrived at `now`: alive for `lease` more.
    pub(crate) fn heard(&mut self, node: &NodeId, lease: Duration, now: Instant) {
        let v = self.node_mut(node, now);
        v.seen = now;
        v.lease = lease;
    }

    pub(crate) fn mark_asked(&mut self, node: &NodeId, now: Instant) {
        self.node_mut(node, now).asked = Some(now);
    }

    pub(crate) fn connections_of(&self, client: &ClientId) -> usize {
        self.counts.get(client).copied().unwrap_or(0)
    }

    /// `client`'s connections on nodes whose lease has not run out at `now`. A node that died
    /// keeps its connections in the view until it is reaped, but they end with it: a client
    /// connecting again elsewhere meanwhile is counted without them, so its new connection is
    /// its `first` and its reaped ones are not its `last` (`docs/design.md` section 16).
    /// `me`, the node asking, always counts as live.
    pub(crate) fn live_connections_of(
        &self,
        client: &ClientId,
        me: &NodeId,
        now: Instant,
    ) -> usize {
        let all = self.connections_of(client);
        if all == 0 {
            return 0;
        }
        let mut stale = 0;
        for (node, v) in self.nodes.iter().filter(|(n, v)| *n != me && !v.alive(now)) {
            let here = v.connections.values().filter(|c| *c == client).count();
            if here > 0 {
                // Why a count is lower than the view's: seen in a log, this tells a dead node
                // from a live one whose heartbeats are late.
                tracing::debug!(%client, %node, since_heard = ?now.duration_since(v.seen), lease = ?v.lease, connections = here, "not counted: the node's lease ran out");
            }
            stale += here;
        }
        all.saturating_sub(stale)
    }

    pub(crate) fn online_clients(&self) -> Vec<ClientId> {
        let mut v: Vec<ClientId> = self.counts.keys().cloned().collect();
        v.sort();
        v
    }

    /// What the view holds for `node`, sorted.
    pub(crate) fn connections_on(&self, node: &NodeId) -> Vec<(ClientId, ConnectionId)> {
        let mut v: Vec<(ClientId, ConnectionId)> = self
            .nodes
            .get(node)
            .map(|n| {
                n.connections
                    .iter()
                    .map(|(conn, client)| (client.clone(), conn.clone()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The channel memberships of the clients a node keeps.
#[derive(Debug, Default)]
pub(crate) struct Memberships {
    of_client: HashMap<ClientId, BTreeSet<ChannelName>>,
    of_channel: BTreeMap<ChannelName, BTreeSet<ClientId>>,
}

impl Memberships {
    pub(crate) fn join(&mut self, channel: &ChannelName, clients: &[ClientId]) {
        for c in clients {
            self.of_client
                .entry(c.clone())
                .or_default()
                .insert(channel.clone());
            self.of_channel
                .entry(channel.clone())
                .or_default()
                .insert(c.clone());
        }
    }

    pub(crate) fn leave(&mut self, channel: &ChannelName, clients: &[ClientId]) {
        for c in clients {
            if let Some(chans) = self.of_client.get_mut(c) {
                chans.remove(channel);
                if chans.is_empty() {
                    self.of_client.remove(c);
                }
            }
            if let Some(members) = self.of_channel.get_mut(channel) {
                members.remove(c);
                if members.is_empty() {
                    self.of_channel.remove(channel);
                }
            }
        }
    }

    /// `client` leaves every channel.
    pub(crate) fn leave_all(&mut self, client: &ClientId) {
        let Some(chans) = self.of_client.remove(client) else {
            return;
        };
        for ch in chans {
            if let Some(members) = self.of_channel.get_mut(&ch) {
                members.remove(client);
                if members.is_empty() {
                    self.of_channel.remove(&ch);
                }
            }
        }
    }

    /// Every client with at least one membership.
    pub(crate) fn clients(&self) -> impl Iterator<Item = &ClientId> {
        self.of_client.keys()
    }

    pub(crate) fn members(&self, channel: &ChannelName) -> Vec<ClientId> {
        self.of_channel
            .get(channel)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn channels_of(&self, client: &ClientId) -> Vec<ChannelName> {
        self.of_client
            .get(client)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Per channel: the members `counted` selects, and how many of them `view` has online
    /// (channels with none left out).
    pub(crate) fn counts(
        &self,
        view: &View,
        counted: impl Fn(&ClientId) -> bool,
    ) -> Vec<(ChannelName, usize, usize)> {
        self.of_channel
            .iter()
            .filter_map(|(ch, members)| {
                let mine: Vec<&ClientId> = members.iter().filter(|c| counted(c)).collect();
                let online = mine.iter().filter(|c| view.connections_of(c) > 0).count();
                (!mine.is_empty()).then(|| (ch.clone(), mine.len(), online))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }
    fn k(s: &str) -> ConnectionId {
        ConnectionId::new(s).unwrap()
    }
    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn view_counts_follow_adds_removes_and_replacements() {
        let now = Instant::now();
        let mut v = View::new(Duration::from_secs(1));
        v.add(&n("n1"), &c("a"), &k("1"), now);
        v.add(&n("n1"), &c("a"), &k("1"), now); // idempotent
        v.add(&n("n2"), &c("a"), &k("2"), now);
        assert_eq!(v.connections_of(&c("a")), 2);
        v.replace(&n("n1"), &[(c("b"), k("3"))], now);
        assert_eq!(v.connections_of(&c("a")), 1);
        assert_eq!(v.online_clients(), vec![c("a"), c("b")]);
        let dropped = v.drop_node(&n("n2"));
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].last);
        assert_eq!(v.online_clients(), vec![c("b")]);
        assert!(!v.remove(&n("n2"), &k("2")));
    }

    #[test]
    fn digest_ignores_order() {
        let a = [k("1"), k("2"), k("3")];
        let b = [k("3"), k("1"), k("2")];
        assert_eq!(digest(a.iter()), digest(b.iter()));
        assert_ne!(digest(a.iter()), digest(a[..2].iter()));
    }
}
