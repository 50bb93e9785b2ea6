//! [`Cluster`]: the node list, the partitioner and the live view, i.e. "which node owns this
//! client now and what URL do its clients use" (`docs/design.md` sections 1 and 16).
//!
//! A client's **home** is where the partitioner puts it among all configured nodes. Its
//! **owner** is the first node in its order that is live: holding its lease and not draining.
//! While every node is live the two agree; when a node dies or drains, only its clients get
//! another owner, and they go home again when it is back. The live view is shared by every
//! clone of a `Cluster` and kept current by [`follow_live_nodes`] (a helper) or the node's own
//! upkeep, from the presence store's leases, so nodes, helpers and the HTTP API decide alike.
//! Before the first update, and whenever no node at all looks live (a store that lost its data
//! or stalled past every lease), every node counts as live: ownership falls back to home
//! instead of to nowhere.

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    ClientId, Error, NodeId, NodeLease, NodeState, Partitioner, PartitionerKind, PresenceStore,
    Result,
};

/// One server node as clients see it (config `cluster.nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node id.
    pub id: NodeId,
    /// The base URL clients are told to connect to, `ws://host:port` or `wss://host:port`.
    pub url: String,
}

/// A node as the live view sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Holds its lease and serves: clients are handed to it.
    Live,
    /// Holds its lease but is moving its clients away: none is handed to it.
    Draining,
    /// No lease: crashed, stopped, or not started yet.
    Dead,
}

impl NodeStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => NodeStatus::Live,
            1 => NodeStatus::Draining,
            _ => NodeStatus::Dead,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            NodeStatus::Live => 0,
            NodeStatus::Draining => 1,
            NodeStatus::Dead => 2,
        }
    }

    /// The status a lease in `state` gives.
    pub fn of(state: NodeState) -> Self {
        match state {
            NodeState::Live => NodeStatus::Live,
            NodeState::Draining => NodeStatus::Draining,
        }
    }
}

/// The cluster's nodes and how clients are spread over them.
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<NodeEntry>,
    ids: Vec<NodeId>,
    partitioner: Arc<dyn Partitioner>,
    /// One status per node, in list order; shared by clones.
    view: Arc<[AtomicU8]>,
}

impl Cluster {
    /// Builds a cluster from its node list.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty list, a duplicate node id or a URL that is not `ws(s)://`.
    pub fn new(nodes: Vec<NodeEntry>, partitioner: PartitionerKind) -> Result<Self> {
        Self::with_partitioner(nodes, partitioner.build())
    }

    /// Like [`Cluster::new`] with a partitioner of your own.
    ///
    /// # Errors
    /// As [`Cluster::new`].
    pub fn with_partitioner(
        nodes: Vec<NodeEntry>,
        partitioner: Arc<dyn Partitioner>,
    ) -> Result<Self> {
        if nodes.is_empty() {
            return Err(Error::Config(
                "cluster.nodes: at least one node is required".into(),
            ));
        }
        for (i, n) in nodes.iter().enumerate() {
            if nodes[..i].iter().any(|m| m.id == n.id) {
                return Err(Error::Config(format!(
                    "cluster.nodes: node id `{}` is listed twice",
                    n.id
                )));
            }
            let rest = n
                .url
                .strip_prefix("ws://")
                .or_else(|| n.url.strip_prefix("wss://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(Error::Config(format!(
                    "cluster.nodes: url `{}` of node `{}` must look like ws://host:port or wss://host:port",
                    n.url, n.id
                )));
            }
        }
        let ids = nodes.iter().map(|n| n.id.clone()).collect();
        let view = nodes.iter().map(|_| AtomicU8::new(0)).collect();
        Ok(Self {
            nodes,
            ids,
            partitioner,
            view,
        })
    }

    fn status_at(&self, i: usize) -> NodeStatus {
        NodeStatus::from_u8(self.view[i].load(Ordering::Relaxed))
    }

    fn pick(&self, client: &ClientId, usable: &dyn Fn(NodeStatus) -> bool) -> &NodeEntry {
        let found = self
            .partitioner
            .node_for_among(client, &self.ids, &|i| usable(self.status_at(i)));
        match found {
            Some(i) => &self.nodes[i.min(self.nodes.len() - 1)],
            None => self.home(client),
        }
    }

    /// The node that owns `client` now: the first live node in its order (its home when no
    /// node is live). Connect URLs and point-to-point messages go there.
    pub fn owner(&self, client: &ClientId) -> &NodeEntry {
        self.pick(client, &|s| s == NodeStatus::Live)
    }

    /// The live node that numbers the publications of stream `key` (a channel name, or the
    /// broadcast stream's key): its owner as if it were a client (`docs/design.md` section 15).
    pub fn stream_owner(&self, key: &str) -> &NodeEntry {
        // Channel names need not be valid client ids: place a fixed-size digest of the name.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        match ClientId::new(format!("#stream-{h:016x}")) {
            Ok(c) => self.owner(&c),
            Err(_) => &self.nodes[0],
        }
    }

    /// Where `client` belongs when every node is live (the partitioner over the whole list).
    pub fn home(&self, client: &ClientId) -> &NodeEntry {
        let i = self.partitioner.node_for(client, &self.ids);
        &self.nodes[i.min(self.nodes.len() - 1)]
    }

    /// The nodes that keep `client`'s channel memberships where a store keeps them per node
    /// (cluster presence, `docs/design.md` section 3): its home and the next node in its order,
    /// whatever their state, so that losing one of them (a crash, a restart) loses nothing.
    /// The next node is also where the client sits while its home is away. One node in a
    /// cluster of one.
    pub fn keepers(&self, client: &ClientId) -> Vec<&NodeEntry> {
        let home = self
            .partitioner
            .node_for(client, &self.ids)
            .min(self.nodes.len() - 1);
        let mut keepers = vec![&self.nodes[home]];
        if let Some(next) = self
            .partitioner
            .node_for_among(client, &self.ids, &|i| i != home)
            .and_then(|i| self.nodes.get(i))
        {
            keepers.push(next);
        }
        keepers
    }

    /// The first node after `skip` in `client`'s order that is live: where it sat while
    /// `skip` was away (and where it still is until it moves back).
    pub fn owner_without(&self, client: &ClientId, skip: &NodeId) -> Option<&NodeEntry> {
        let found = self.partitioner.node_for_among(client, &self.ids, &|i| {
            &self.ids[i] != skip && self.status_at(i) == NodeStatus::Live
        })?;
        self.nodes.get(found)
    }

    /// All nodes, in configuration order.
    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    /// The node with id `id`.
    pub fn node(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| &n.id == id)
    }

    /// What the live view says of `node` (`Dead` for a node not in the list).
    pub fn status(&self, node: &NodeId) -> NodeStatus {
        self.ids
            .iter()
            .position(|n| n == node)
            .map_or(NodeStatus::Dead, |i| self.status_at(i))
    }

    /// Every node with its status, in configuration order.
    pub fn statuses(&self) -> Vec<(NodeId, NodeStatus)> {
        self.ids
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), self.status_at(i)))
            .collect()
    }

    /// Sets what the live view says of `node` (a node's own state, known without asking).
    pub fn set_status(&self, node: &NodeId, status: NodeStatus) {
        if let Some(i) = self.ids.iter().position(|n| n == node) {
            self.view[i].store(status.as_u8(), Ordering::Relaxed);
        }
    }

    /// Updates the live view from the leases the presence store lists: a listed node is live
    /// or draining as it said, an unlisted one is dead. `me`, when given, is this process's
    /// own node and state, which it knows better than any store. When nothing at all would be
    /// live, every node counts as live (see the module docs).
    pub fn apply_leases(&self, leases: &[NodeLease], me: Option<(&NodeId, NodeState)>) {
        self.apply(leases, me, true);
    }

    /// Like [`Cluster::apply_leases`], but a node the view has as live or draining stays so
    /// when the store does not list it: for a reader that cannot yet tell a dead node from a
    /// store that was stalled or cut off (every lease looks expired after an outage), so it
    /// learns who came back but declares nobody dead.
    pub fn apply_leases_without_deaths(
        &self,
        leases: &[NodeLease],
        me: Option<(&NodeId, NodeState)>,
    ) {
        self.apply(leases, me, false);
    }

    fn apply(&self, leases: &[NodeLease], me: Option<(&NodeId, NodeState)>, deaths: bool) {
        let mut next: Vec<NodeStatus> = self
            .ids
            .iter()
            .map(|id| {
                leases
                    .iter()
                    .find(|l| &l.node == id)
                    .map_or(NodeStatus::Dead, |l| NodeStatus::of(l.state))
            })
            .collect();
        if let Some((me, state)) = me {
            if let Some(i) = self.ids.iter().position(|n| n == me) {
                next[i] = NodeStatus::of(state);
            }
        }
        if next.iter().all(|s| *s == NodeStatus::Dead) {
            next.iter_mut().for_each(|s| *s = NodeStatus::Live);
        }
        if !deaths {
            for (i, s) in next.iter_mut().enumerate() {
                if *s == NodeStatus::Dead {
                    *s = self.status_at(i);
                }
            }
        }
        for (slot, s) in self.view.iter().zip(next) {
            slot.store(s.as_u8(), Ordering::Relaxed);
        }
    }
}

/// Keeps `cluster`'s live view current from `presence`, reading it every third of `lease`,
/// until dropped (a helper's task; a node does this in its own upkeep). Errors keep the last
/// view: a store that cannot be read is no evidence that any node died. Nor is the first
/// lease of reads after such an outage: a store that was stalled or cut off for everyone
/// lists every lease as expired until the nodes have renewed theirs, so until a whole lease
/// of reads has succeeded this reader learns who is back but declares nobody dead, as a node
/// does ([`DeathJudge`]).
pub async fn follow_live_nodes(
    cluster: Cluster,
    presence: Arc<dyn PresenceStore>,
    lease: Duration,
) {
    let mut judge = DeathJudge::new(lease);
    loop {
        match presence.live_nodes().await {
            Ok(leases) => {
                if judge.read_succeeded(std::time::Instant::now()) {
                    cluster.apply_leases(&leases, None);
                } else {
                    cluster.apply_leases_without_deaths(&leases, None);
                }
            }
            Err(e) => {
                judge.read_failed();
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "cannot read live nodes; keeping the last view"
                )
            }
        }
        tokio::time::sleep(lease / 3).await;
    }
}

/// When a reader of the live view (a helper's [`follow_live_nodes`], a node's upkeep) may
/// declare nodes dead: after a whole lease of successful reads since it started or since its
/// last failed one. Until then every lease may look expired (a store that was stalled or cut
/// off, for everyone or for this reader) without any node having died.
#[derive(Debug)]
pub struct DeathJudge {
    lease: Duration,
    healthy_since: Option<std::time::Instant>,
}

impl DeathJudge {
    /// A judge for nodes renewing leases of `lease`.
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            healthy_since: None,
        }
    }

    /// A read succeeded at `now`: whether deaths it shows may be believed.
    pub fn read_succeeded(&mut self, now: std::time::Instant) -> bool {
        self.healthy_since.get_or_insert(now);
        self.trusted(now)
    }

    /// Whether, at `now`, reads have succeeded without a failure for a whole lease.
    pub fn trusted(&self, now: std::time::Instant) -> bool {
        self.healthy_since
            .is_some_and(|since| now.duration_since(since) >= self.lease)
    }

    /// A read failed: the wait starts again with the next success.
    pub fn read_failed(&mut self) {
        self.healthy_since = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn deaths_are_believed_after_a_whole_lease_of_good_reads() {
        let lease = Duration::from_secs(3);
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut judge = DeathJudge::new(lease);
        // At start-up, as after an outage, every lease may look expired.
        assert!(!judge.read_succeeded(at(0)));
        assert!(!judge.read_succeeded(at(2_999)));
        assert!(judge.read_succeeded(at(3_000)));
        // A failed read starts the wait again.
        judge.read_failed();
        assert!(!judge.read_succeeded(at(4_000)));
        assert!(!judge.read_succeeded(at(6_999)));
        assert!(judge.read_succeeded(at(7_000)));
    }

    fn cluster(n: usize, kind: PartitionerKind) -> Cluster {
        let nodes = (1..=n)
            .map(|i| NodeEntry {
                id: format!("n{i}").parse().unwrap(),
                url: format!("ws://127.0.0.1:{}", 7000 + i),
            })
            .collect();
        Cluster::new(nodes, kind).unwrap()
    }

    fn lease(node: &str, state: NodeState) -> NodeLease {
        NodeLease {
            node: node.parse().unwrap(),
            state,
        }
    }

    #[test]
    fn owners_follow_the_live_view_and_come_home() {
        let c = cluster(3, PartitionerKind::Rendezvous);
        let clients: Vec<ClientId> = (0..300).map(|i| format!("c{i}").parse().unwrap()).collect();
        let n2: NodeId = "n2".parse().unwrap();
        let on_n2: Vec<&ClientId> = clients.iter().filter(|c2| c.home(c2).id == n2).collect();
        assert!(!on_n2.is_empty());
        for cl in &clients {
            assert_eq!(c.owner(cl), c.home(cl), "all live: owner is home");
        }

        // n2 dies: only its clients move, to n1 or n3.
        let view = c.clone();
        view.apply_leases(
            &[lease("n1", NodeState::Live), lease("n3", NodeState::Live)],
            None,
        );
        assert_eq!(c.status(&n2), NodeStatus::Dead, "clones share the view");
        for cl in &clients {
            let owner = &c.owner(cl).id;
            if c.home(cl).id == n2 {
                assert_ne!(owner, &n2);
                assert_eq!(Some(owner), c.owner_without(cl, &n2).map(|e| &e.id));
            } else {
                assert_eq!(owner, &c.home(cl).id);
            }
        }

        // n2 drains instead: the same moves; it is not handed out.
        c.apply_leases(
            &[
                lease("n1", NodeState::Live),
                lease("n2", NodeState::Draining),
                lease("n3", NodeState::Live),
            ],
            None,
        );
        assert_eq!(c.status(&n2), NodeStatus::Draining);
        assert!(on_n2.iter().all(|cl| c.owner(cl).id != n2));

        // Back: everyone is home again.
        c.apply_leases(
            &[
                lease("n1", NodeState::Live),
                lease("n2", NodeState::Live),
                lease("n3", NodeState::Live),
            ],
            None,
        );
        assert!(clients.iter().all(|cl| c.owner(cl) == c.home(cl)));
    }

    /// A client's keepers are its home and the node it moves to when its home dies, whatever
    /// the view says; one node alone keeps everything.
    #[test]
    fn keepers_are_home_and_where_the_client_goes_without_it() {
        for kind in [PartitionerKind::Rendezvous, PartitionerKind::Modulo] {
            let c = cluster(3, kind);
            let clients: Vec<ClientId> =
                (0..300).map(|i| format!("{i}").parse().unwrap()).collect();
            let mut seconds = std::collections::HashSet::new();
            for cl in &clients {
                let home = c.home(cl).id.clone();
                let keepers: Vec<NodeId> = c.keepers(cl).iter().map(|e| e.id.clone()).collect();
                assert_eq!(keepers.len(), 2);
                assert_eq!(keepers[0], home);
                assert_ne!(keepers[1], home);
                let alive: Vec<NodeLease> = c
                    .nodes()
                    .iter()
                    .filter(|e| e.id != home)
                    .map(|e| lease(e.id.as_str(), NodeState::Live))
                    .collect();
                c.apply_leases(&alive, None);
                assert_eq!(c.owner(cl).id, keepers[1], "{kind:?}: where {cl} goes");
                let still: Vec<NodeId> = c.keepers(cl).iter().map(|e| e.id.clone()).collect();
                assert_eq!(still, keepers, "keepers do not follow the view");
                seconds.insert(keepers[1].clone());
                c.apply_leases(
                    &c.nodes()
                        .iter()
                        .map(|e| lease(e.id.as_str(), NodeState::Live))
                        .collect::<Vec<_>>(),
                    None,
                );
            }
            assert_eq!(seconds.len(), 3, "{kind:?}: every node keeps for others");
        }
        let one = cluster(1, PartitionerKind::Rendezvous);
        assert_eq!(one.keepers(&"a".parse().unwrap()).len(), 1);
    }

    #[test]
    fn no_live_node_at_all_means_home_and_a_node_knows_itself() {
        let c = cluster(2, PartitionerKind::Modulo);
        let cl: ClientId = "7".parse().unwrap();
        c.apply_leases(&[], None);
        assert_eq!(
            c.owner(&cl),
            c.home(&cl),
            "a store with no lease is no verdict"
        );
        let n1: NodeId = "n1".parse().unwrap();
        c.apply_leases(
            &[lease("n2", NodeState::Live)],
            Some((&n1, NodeState::Draining)),
        );
        assert_eq!(c.status(&n1), NodeStatus::Draining);
        assert_eq!(c.owner(&cl).id.as_str(), "n2");
    }

    #[test]
    fn a_reader_that_cannot_judge_learns_who_came_back_and_declares_nobody_dead() {
        let c = cluster(3, PartitionerKind::Rendezvous);
        let n2: NodeId = "n2".parse().unwrap();
        c.apply_leases(&[lease("n1", NodeState::Live)], None);
        assert_eq!(c.status(&n2), NodeStatus::Dead);
        c.apply_leases_without_deaths(&[lease("n2", NodeState::Draining)], None);
        assert_eq!(
            c.status(&n2),
            NodeStatus::Draining,
            "what came back is learned"
        );
        assert_eq!(
            c.status(&"n1".parse().unwrap()),
            NodeStatus::Live,
            "n1 is not declared dead on a partial answer"
        );
    }
}
