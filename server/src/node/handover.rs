//! Inboxes follow their client (`docs/design.md` section 16). With a store each node keeps for
//! itself (`disk`, `memory`), a message for a client whose owner was down waits on the node
//! that owned it meanwhile; once the client belongs to another live node again (its home came
//! back), that node hands the inbox over: each message is sent to the owner as it was first
//! sent (same id and `ts`), and removed here once the owner has it. A shared store (Redis)
//! needs none of this. Clients connected here are left alone until they move: what is
//! pending for them stays with their socket.

use std::sync::{atomic::Ordering, Arc};

use impush_core::{
    envelope::{self, Deliver, NodeCommand},
    ClientId, MessageId, NodeStatus,
};

use super::Node;
use crate::metrics::Metrics;

/// Clients looked at per round.
const PER_ROUND: usize = 10_000;

impl Node {
    /// Starts a handover round unless one is running or the store is shared.
    pub(super) fn hand_over_inboxes(self: &Arc<Self>) {
        let Some(inbox) = &self.offline else { return };
        // Not while the view is settling: a node just back may still have its inbox read by
        // the node that took it over while it was away, which sends what it reads to the owner
        // *it* sees, possibly this node again, whose duplicate check then drops a message it
        // has already handed over (lost, seen over NATS in the API node partition case).
        if inbox.store.is_shared()
            || self.view_changed_lately()
            || self.handing_over.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            node.hand_over_round().await;
            node.handing_over.store(false, Ordering::Release);
        });
    }

    async fn hand_over_round(&self) {
        let Some(inbox) = &self.offline else { return };
        let clients = match inbox.store.clients(PER_ROUND).await {
            Ok(c) => c,
            Err(e) => {
                Metrics::bump(&self.metrics.offline_errors);
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot list the offline inboxes"
                );
                return;
            }
        };
        for client in clients {
            let owner = self.cluster.owner(&client).id.clone();
            if owner == self.id
                || self.cluster.status(&owner) != NodeStatus::Live
                || self.registry.is_local(&client)
            {
                continue;
            }
            self.hand_over(&client, &owner).await;
        }
    }

    /// Sends `client`'s stored messages to `owner` and removes those it took: in as few
    /// payloads as a batch send would use (one publish per payload, not per message: a node
    /// handing over hundreds of inboxes after a failover, one publish per message, took longer
    /// than a minute on a busy broker while those clients waited), in order.
    async fn hand_over(&self, client: &ClientId, owner: &impush_core::NodeId) {
        let Some(inbox) = &self.offline else { return };
        let messages = match inbox.store.fetch(client, inbox.max_per_client).await {
            Ok(m) => m,
            Err(_) => return,
        };
        let list: Vec<Deliver> = messages
            .into_iter()
            .map(|m| Deliver {
                id: m.id,
                from: m.from,
                to: vec![client.clone()],
                data: m.data,
                ts: m.ts,
                receipt: m.receipt,
                forwarded: false,
            })
            .collect();
        let mut moved: Vec<MessageId> = Vec::with_capacity(list.len());
        for cmd in impush_helper::node_payloads(list) {
            let ids: Vec<MessageId> = match &cmd {
                NodeCommand::Deliver(d) => vec![d.id.clone()],
                NodeCommand::DeliverMany(l) => l.iter().map(|d| d.id.clone()).collect(),
                _ => Vec::new(),
            };
            let Ok(payload) = envelope::encode("node command", &cmd) else {
                continue;
            };
            if self
                .broker
                .publish(&self.topics.inbox(owner), payload)
                .await
                .is_err()
            {
                Metrics::bump(&self.metrics.broker_publish_errors);
                break; // the rest waits for the next round
            }
            moved.extend(ids);
        }
        if !moved.is_empty() {
            tracing::info!(%client, %owner, messages = moved.len(), "handed an offline inbox over to its owner");
            self.metrics
                .inboxes_handed_over
                .fetch_add(moved.len() as u64, Ordering::Relaxed);
            self.remove_from_inbox(client, &moved).await;
        }
    }
}
