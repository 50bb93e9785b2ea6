//! Live ownership on the node (`docs/design.md` section 16): this node's state (live or
//! draining), the live view it shares with its helper, and what a change of the view asks of
//! it:
//! - clients sitting here whose owner is another node now (their home came back) are sent
//!   home gradually (`cluster.rebalance_period`);
//! - the inbox of a node that died is taken over by one live node (the first live one in the
//!   dead node's own rendezvous order), which re-routes what waits there to the new owners;
//!   it lets go when the node is back.

use std::sync::{atomic::Ordering, Arc};

use impush_core::{ClientId, NodeId, NodeState, NodeStatus};

use super::Node;

impl Node {
    /// This node's state, as its heartbeats say.
    pub(crate) fn state(&self) -> NodeState {
        if self.draining.load(Ordering::Acquire) {
            NodeState::Draining
        } else {
            NodeState::Live
        }
    }

    pub(super) fn set_state(&self, state: NodeState) {
        self.draining
            .store(state == NodeState::Draining, Ordering::Release);
        // Our own entry in the view: no store round trip needed to know ourselves.
        self.cluster.set_status(&self.id, NodeStatus::of(state));
    }

    /// Whether the live view changed within the last two leases: other nodes, helpers and a
    /// dead node's heir may not have caught up yet.
    pub(super) fn view_changed_lately(&self) -> bool {
        let changed = *self.view_changed.lock().unwrap_or_else(|e| e.into_inner());
        changed.elapsed() < self.lease * 2
    }

    /// Whether client ownership may be moving: a node is not live, or the view changed within
    /// the last two leases (other nodes and helpers may not have caught up).
    pub(crate) fn ownership_unsettled(&self) -> bool {
        self.view_changed_lately()
            || self
                .cluster
                .statuses()
                .iter()
                .any(|(_, s)| *s != NodeStatus::Live)
    }

    /// Reads the live nodes from presence into the shared view (declaring nodes dead only
    /// when `judge`) and acts on what changed.
    pub(super) async fn refresh_view(self: &Arc<Self>, judge: bool) {
        match self.presence.live_nodes().await {
            Ok(leases) => {
                let me = Some((&self.id, self.state()));
                let before = self.cluster.statuses();
                if judge {
                    self.cluster.apply_leases(&leases, me);
                } else {
                    self.cluster.apply_leases_without_deaths(&leases, me);
                }
                if self.cluster.statuses() != before {
                    *self.view_changed.lock().unwrap_or_else(|e| e.into_inner()) =
                        tokio::time::Instant::now();
                }
                self.send_guests_home();
                self.manage_takeovers();
                self.hand_over_inboxes();
            }
            Err(e) => self.presence_error("live_nodes", &e),
        }
    }

    /// Moves home, gradually, the clients here whose owner is another live node: not before
    /// helpers and the other nodes, which read the live view every third of a lease, can have
    /// seen that owner live too. Until they have, a client closed now would be handed this
    /// node's URL again, and moved a second time (as a drain waits before its first close).
    fn send_guests_home(self: &Arc<Self>) {
        if self.state() == NodeState::Draining {
            return; // the drain moves everyone anyway
        }
        // Rounds come every third of a lease: the one that saw the change and the next skip,
        // so the first close comes after every reader's next read, with room to spare.
        let changed = *self.view_changed.lock().unwrap_or_else(|e| e.into_inner());
        if changed.elapsed() < self.lease / 3 + std::time::Duration::from_millis(50) {
            return;
        }
        let me = &self.id;
        let guests = self
            .registry
            .sessions_of(|c: &ClientId| &self.cluster.owner(c).id != me);
        if guests.is_empty() {
            return;
        }
        let n = self.move_gradually(guests, self.cluster_timing.rebalance_period);
        if n > 0 {
            tracing::info!(clients = n, "sending clients home");
        }
    }

    /// The node that takes over `dead`'s inbox: the first live node in `dead`'s own
    /// rendezvous order (so different dead nodes land on different survivors).
    fn heir_of(&self, dead: &NodeId) -> Option<NodeId> {
        let as_client = ClientId::new(dead.as_str()).ok()?;
        let heir = self.cluster.owner(&as_client);
        (self.cluster.status(&heir.id) == NodeStatus::Live).then(|| heir.id.clone())
    }

    /// Starts taking over the inbox of each node dead for a whole lease that this node is
    /// heir of, and lets go of those that are back (or whose heir is another node now). A
    /// node that is only restarting (its lease ends when it clears its previous run) reads its
    /// own inbox again in a moment: another consumer joining its queue group then would only
    /// slow both down (a Kafka group rebalances on every join).
    fn manage_takeovers(self: &Arc<Self>) {
        let now = tokio::time::Instant::now();
        let mut dead_since = self.dead_since.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = self.takeovers.lock().unwrap_or_else(|e| e.into_inner());
        for (node, status) in self.cluster.statuses() {
            if node == self.id {
                continue;
            }
            let dead_for = if status == NodeStatus::Dead {
                now.saturating_duration_since(*dead_since.entry(node.clone()).or_insert(now))
            } else {
                dead_since.remove(&node);
                std::time::Duration::ZERO
            };
            let mine = status == NodeStatus::Dead
                && dead_for >= self.lease
                && self.heir_of(&node).as_ref() == Some(&self.id);
            match (mine, held.contains_key(&node)) {
                (true, false) => {
                    tracing::warn!(%node, "taking over the inbox of a dead node");
                    let stop = tokio_util::sync::CancellationToken::new();
                    held.insert(node.clone(), stop.clone().drop_guard());
                    let me = self.clone();
                    tokio::spawn(async move { me.take_over(node, stop).await });
                }
                (false, true) => {
                    tracing::info!(%node, "letting go of a node's inbox");
                    held.remove(&node);
                }
                _ => {}
            }
        }
    }
}
