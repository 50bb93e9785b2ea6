//! The state machine of cluster presence: what one instance knows and the rules that change it.
//!
//! An instance knows its [`View`] of every node's connections; a node also knows its own
//! connections (the truth the view mirrors), the [`Memberships`] of the clients it keeps, and
//! where it stands with the cluster (`known`, `ready`, whether its own heartbeats come back).
//! Here: that state, who keeps a client's memberships ([`Machine::keepers`]) and what
//! the view answers. `feed` is what a message read from `{prefix}.presence` does and what a
//! request gets; `own` is what the node's own presence operations do.
//!
//! Nothing here does I/O or reads the clock: every method takes the time it runs at and
//! returns what must be published, so the exchange (`exchange`) and the store (`store`) do the
//! talking and these rules are tested on their own (`machine/tests.rs`).

mod feed;
mod own;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use impush_core::{
    ChannelName, ClientId, Cluster, ConnectionId, DroppedConnection, NodeId, NodeStatus,
};
use tokio::time::Instant;

use crate::{
    state::{Memberships, View},
    wire::Wire,
};

/// A node's lease as its own view has it, before its first heartbeat set one.
const FALLBACK_LEASE: Duration = Duration::from_secs(10);
/// Least time between two requests for one node's full state, whatever its lease.
const MIN_ASK_GAP: Duration = Duration::from_millis(200);

/// What one instance (a node, or a helper when `me` is `None`) knows.
#[derive(Debug)]
pub(crate) struct Machine {
    me: Option<NodeId>,
    cluster: Cluster,
    /// The configured nodes, in the cluster's order.
    nodes: Vec<NodeId>,
    /// The configured lease: how long a node not heard from yet may still be starting.
    lease: Duration,
    started: Instant,
    view: View,
    /// This node's own connections (a node instance only): the truth the view mirrors.
    local: HashMap<ConnectionId, ClientId>,
    /// Memberships of the clients this node keeps (`Machine::keepers`).
    memberships: Memberships,
    /// Whether the cluster still counts this node as alive (false before the first heartbeat,
    /// after a clear, and after another node reaped it).
    known: bool,
    /// Whether this node has settled what its previous run left (cleared, synced or
    /// heartbeated): until then it does not publish its (empty) state, which would make the
    /// others forget connections it must first announce as gone.
    ready: bool,
    /// This node is draining: its heartbeats say so (`docs/design.md` section 16).
    pub(crate) draining: bool,
    /// When this node's own heartbeat last came back through the feed, and since when it has
    /// come back without a gap longer than a lease: a node judges others only from a feed it
    /// has been reading all along, never from a view that went stale while it was frozen or
    /// cut off.
    last_echo: Option<Instant>,
    echoing_since: Option<Instant>,
    /// This node's change counter: each connection opened or closed, and each sync, counts one
    /// (`wire`: a reader drops a full state older than a change it applied).
    seq: u64,
}

impl Machine {
    /// A fresh instance started at `now`: `me` is this node (`None` in a helper).
    pub(crate) fn new(me: Option<NodeId>, cluster: Cluster, lease: Duration, now: Instant) -> Self {
        Self {
            me,
            nodes: cluster.nodes().iter().map(|n| n.id.clone()).collect(),
            cluster,
            lease,
            started: now,
            view: View::new(lease),
            local: HashMap::new(),
            memberships: Memberships::default(),
            known: false,
            ready: false,
            draining: false,
            last_echo: None,
            echoing_since: None,
            seq: 0,
        }
    }

    /// Starts this node's change counter at `seq`. The store passes the wall clock in
    /// microseconds, so a restarted node's changes count on from above its previous run's
    /// (which would have had to make a change every microsecond of its life to get there),
    /// and readers that remember the old run take the new one's state.
    pub(crate) fn counting_from(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    /// Counts one change of this node's connections; returns its number.
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The configured lease.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    /// The configured nodes.
    pub(crate) fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    // ---- ownership ----

    /// The nodes that keep `client`'s channel memberships: its home and the next node in its
    /// order (`Cluster::keepers`), whatever their state. Both record its joins and leaves and
    /// drop them when the client is gone, so either one alone still has them after the other
    /// crashed or restarted (`docs/design.md` section 3). Every ownership decision of this
    /// crate goes through here.
    pub(crate) fn keepers(&self, client: &ClientId) -> Vec<NodeId> {
        self.cluster
            .keepers(client)
            .into_iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// The node that answers for `client`'s channels: its first keeper the live view does not
    /// count dead (its home when none is alive: asking it then reports it missing).
    pub(crate) fn memberships_owner(&self, client: &ClientId) -> NodeId {
        let keepers = self.keepers(client);
        keepers
            .iter()
            .find(|k| self.cluster.status(k) != NodeStatus::Dead)
            .unwrap_or(&keepers[0])
            .clone()
    }

    /// `clients` grouped by each keeper a write must reach: every keeper the live view does
    /// not count dead (the home, when it counts both dead: the write then fails naming it).
    pub(crate) fn by_keeper(&self, clients: &[ClientId]) -> BTreeMap<NodeId, Vec<ClientId>> {
        let mut out: BTreeMap<NodeId, Vec<ClientId>> = BTreeMap::new();
        for c in clients {
            let keepers = self.keepers(c);
            let mut alive: Vec<&NodeId> = keepers
                .iter()
                .filter(|k| self.cluster.status(k) != NodeStatus::Dead)
                .collect();
            if alive.is_empty() {
                alive.push(&keepers[0]);
            }
            for k in alive {
                out.entry(k.clone()).or_default().push(c.clone());
            }
        }
        out
    }

    /// Whether this instance is a node keeping `client`'s memberships.
    fn keeps(&self, client: &ClientId) -> bool {
        self.me
            .as_ref()
            .is_some_and(|me| self.keepers(client).contains(me))
    }

    /// Whether this node is the one answering for `client`'s channels now (its counts include
    /// the client; the other keeper's do not, so no client is counted twice).
    fn answers_for(&self, client: &ClientId) -> bool {
        self.me
            .as_ref()
            .is_some_and(|me| self.memberships_owner(client) == *me)
    }

    /// `client` left every channel, if this node keeps its memberships.
    fn leave_all_if_kept(&mut self, client: &ClientId) {
        if self.keeps(client) {
            self.memberships.leave_all(client);
        }
    }

    /// The memberships this node keeps with `other` (the clients both keep), for `other` to
    /// take after it restarted or was counted dead.
    pub(crate) fn kept_with(&self, other: &NodeId) -> Vec<(ClientId, Vec<ChannelName>)> {
        let mut kept: Vec<(ClientId, Vec<ChannelName>)> = self
            .memberships
            .clients()
            .filter(|c| self.keepers(c).contains(other))
            .map(|c| (c.clone(), self.memberships.channels_of(c)))
            .collect();
        kept.sort();
        kept
    }

    /// Takes `from`'s copy of the memberships both keep (`kept`, from [`Machine::kept_with`]):
    /// `from` was alive while this node was not (restarting, or counted dead), so its copy has
    /// every write this one missed; a client it no longer lists left its channels meanwhile.
    pub(crate) fn take_kept(&mut self, from: &NodeId, kept: Vec<(ClientId, Vec<ChannelName>)>) {
        let Some(me) = self.me.clone() else {
            return;
        };
        let shared: Vec<ClientId> = self
            .memberships
            .clients()
            .filter(|c| {
                let k = self.keepers(c);
                k.contains(&me) && k.contains(from)
            })
            .cloned()
            .collect();
        for c in &shared {
            self.memberships.leave_all(c);
        }
        for (client, channels) in kept {
            let k = self.keepers(&client);
            if !(k.contains(&me) && k.contains(from)) {
                continue;
            }
            for ch in channels {
                self.memberships.join(&ch, std::slice::from_ref(&client));
            }
        }
    }

    // ---- what the view can answer ----

    /// Configured nodes, other than this one, whose connections this view may lack: alive (or
    /// not heard from yet, within a lease of start) and never synced.
    pub(crate) fn unsynced(&self, now: Instant) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| Some(*n) != self.me.as_ref())
            .filter(|n| match self.view.node(n) {
                Some(v) => !v.synced && v.alive(now),
                None => now.duration_since(self.started) < self.lease,
            })
            .cloned()
            .collect()
    }

    /// Splits the nodes a request goes to into those worth waiting for and those known to be
    /// dead (reported missing at once).
    pub(crate) fn split_dead(
        &self,
        expected: Vec<NodeId>,
        now: Instant,
    ) -> (Vec<NodeId>, Vec<NodeId>) {
        expected.into_iter().partition(|n| {
            Some(n) == self.me.as_ref() || self.view.node(n).is_none_or(|v| v.alive(now))
        })
    }

    /// This node's connections as one message (`None` in a helper).
    pub(crate) fn state_message(&self) -> Option<Wire> {
        Some(Wire::NodeState {
            node: self.me.clone()?,
            connections: sorted(&self.local),
            seq: self.seq,
        })
    }

    /// The clients whose last connection is among `dropped` leave their channels (those this
    /// node keeps).
    fn leave_all_of_last(&mut self, dropped: &[DroppedConnection]) {
        for d in dropped.iter().filter(|d| d.last) {
            self.leave_all_if_kept(&d.client);
        }
    }
}

/// `dropped` (connections of `node`, removed by `by`) as a message, unless there are none.
fn dropped_message(
    node: &NodeId,
    by: &NodeId,
    dropped: &[DroppedConnection],
    clear: bool,
) -> Option<Wire> {
    (!dropped.is_empty()).then(|| Wire::Dropped {
        node: node.clone(),
        by: by.clone(),
        dropped: dropped.to_vec(),
        clear,
    })
}

fn sorted(local: &HashMap<ConnectionId, ClientId>) -> Vec<(ClientId, ConnectionId)> {
    let mut v: Vec<(ClientId, ConnectionId)> = local
        .iter()
        .map(|(conn, client)| (client.clone(), conn.clone()))
        .collect();
    v.sort();
    v
}
