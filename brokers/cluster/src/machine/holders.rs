//! Who holds a client's memberships, by the live view this instance keeps (`docs/design.md`
//! sections 3 and 16).
//!
//! The cluster's live view (`Cluster::owner`: the first live node in a client's order) is fed
//! here from this instance's own view of heartbeats, by the rule reaping follows: a node
//! declares others dead only once its own heartbeats have come back for a whole lease (a
//! helper, which sends none, once it has read the feed for a lease); before that it learns who
//! came back but declares nobody dead. A client's memberships are held by its live owner and by
//! the next live node in its order (the backup): joins and leaves go to both, so when the owner
//! dies the node that owns the client next already has them.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use impush_core::{ClientId, NodeId, NodeLease, NodeState, NodeStatus};
use tokio::time::Instant;

use super::{Machine, FALLBACK_LEASE};
use crate::wire::Stamp;

/// The nodes holding one client's memberships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holders {
    /// The client's live owner: it answers for the client.
    pub(crate) owner: NodeId,
    /// The next live node in the client's order, if there is one.
    pub(crate) backup: Option<NodeId>,
}

impl Holders {
    pub(crate) fn contains(&self, node: &NodeId) -> bool {
        self.owner == *node || self.backup.as_ref() == Some(node)
    }

    /// The holders other than `me`.
    pub(crate) fn others(&self, me: Option<&NodeId>) -> Vec<NodeId> {
        std::iter::once(&self.owner)
            .chain(self.backup.as_ref())
            .filter(|n| Some(*n) != me)
            .cloned()
            .collect()
    }

    /// A digest of the set of holders (never 0, which means "placed nowhere").
    pub(crate) fn digest(&self) -> u64 {
        let h = BuildHasherDefault::<DefaultHasher>::default();
        let one = |n: &NodeId| h.hash_one(n.as_str());
        let d = one(&self.owner) ^ self.backup.as_ref().map_or(0, |b| one(b).rotate_left(1));
        d.max(1)
    }
}

/// Where one membership change goes: to `node`, for `clients`; `owner`: `node` owns at least
/// one of them (its silence is an error; a backup's is only logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) node: NodeId,
    pub(crate) clients: Vec<ClientId>,
    pub(crate) owner: bool,
}

/// A digest of a live view (order matters: it is in configuration order).
pub(super) fn digest_of(statuses: &[(NodeId, NodeStatus)]) -> u64 {
    let h = BuildHasherDefault::<DefaultHasher>::default();
    h.hash_one(
        statuses
            .iter()
            .map(|(n, s)| (n.as_str(), *s as u8))
            .collect::<Vec<_>>(),
    )
}

impl Machine {
    /// The stamp of a change made at `now`: this instance's wall clock, advanced by `Instant`s.
    pub(crate) fn stamp(&self, now: Instant) -> Stamp {
        let since = now.saturating_duration_since(self.started).as_micros();
        self.wall
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// The stamp a request carried, or `now` for a requester that sent none.
    pub(super) fn stamp_or_now(&self, at: Stamp, now: Instant) -> Stamp {
        if at == 0 {
            self.stamp(now)
        } else {
            at
        }
    }

    /// The digest of the live view this instance routes by.
    pub(crate) fn view_digest(&self) -> u64 {
        self.view_digest
    }

    /// Feeds the cluster's live view from this instance's view at `now`; returns whether it
    /// changed (a node then hands over what it holds, see `handover`).
    pub(crate) fn refresh_live(&mut self, now: Instant) -> bool {
        let leases: Vec<NodeLease> = self
            .view
            .live_nodes(now)
            .into_iter()
            .map(|(node, draining)| NodeLease {
                node,
                state: if draining {
                    NodeState::Draining
                } else {
                    NodeState::Live
                },
            })
            .collect();
        let state = if self.draining {
            NodeState::Draining
        } else {
            NodeState::Live
        };
        // A node knows itself once it settled its previous run; before that it is not live.
        let me = self.me.as_ref().filter(|_| self.ready).map(|m| (m, state));
        if self.judges(now) {
            self.cluster.apply_leases(&leases, me);
        } else {
            self.cluster.apply_leases_without_deaths(&leases, me);
        }
        let statuses = self.cluster.statuses();
        if statuses == self.statuses {
            return false;
        }
        self.view_digest = digest_of(&statuses);
        self.statuses = statuses;
        if self.me.is_some() {
            self.handover.rescan();
        }
        true
    }

    /// Whether this instance may declare other nodes dead at `now` (see the module docs).
    pub(super) fn judges(&self, now: Instant) -> bool {
        let Some(me) = &self.me else {
            return now.duration_since(self.started) >= self.lease;
        };
        let lease = self.view.node(me).map_or(FALLBACK_LEASE, |v| v.lease);
        self.last_echo
            .is_some_and(|t| now.duration_since(t) <= lease)
            && self
                .echoing_since
                .is_some_and(|t| now.duration_since(t) >= lease)
    }

    /// The nodes holding `client`'s memberships by the live view as last refreshed.
    pub(crate) fn holders(&self, client: &ClientId) -> Holders {
        let owner = self.cluster.owner(client).id.clone();
        let backup = self
            .cluster
            .owner_without(client, &owner)
            .map(|n| n.id.clone());
        Holders { owner, backup }
    }

    /// The node that answers for `client`'s memberships: its live owner.
    pub(crate) fn memberships_owner(&self, client: &ClientId) -> NodeId {
        self.holders(client).owner
    }

    /// Where a change of `clients`' memberships goes at `now`: each holder with the clients it
    /// holds, in node order.
    pub(crate) fn route(&mut self, clients: &[ClientId], now: Instant) -> Vec<Route> {
        self.refresh_live(now);
        let mut out: Vec<Route> = Vec::new();
        for c in clients {
            let h = self.holders(c);
            let roles = std::iter::once((h.owner, true)).chain(h.backup.map(|b| (b, false)));
            for (node, owner) in roles {
                match out.iter_mut().find(|r| r.node == node) {
                    Some(r) => {
                        r.clients.push(c.clone());
                        r.owner |= owner;
                    }
                    None => out.push(Route {
                        node,
                        clients: vec![c.clone()],
                        owner,
                    }),
                }
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// Whether this node is one of `client`'s holders.
    pub(super) fn is_holder(&self, client: &ClientId) -> bool {
        self.me
            .as_ref()
            .is_some_and(|me| self.holders(client).contains(me))
    }

    /// Whether this node is `client`'s live owner.
    pub(super) fn owns(&self, client: &ClientId) -> bool {
        self.me
            .as_ref()
            .is_some_and(|me| self.memberships_owner(client) == *me)
    }

    /// `client` left every channel (its last connection went), if this node holds its
    /// memberships or is one of its holders (then the leave is remembered, so a copy still in
    /// flight cannot bring them back).
    pub(super) fn leave_all_held(&mut self, client: &ClientId, now: Instant) {
        if self.memberships.holds(client) || self.is_holder(client) {
            let at = self.stamp(now);
            self.memberships.leave_all(client, at, at);
        }
    }
}
