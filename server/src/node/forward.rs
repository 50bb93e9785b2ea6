//! A direct message that reached a node holding no socket of a receiver the node does not own
//! either: the helper or node that routed it had another view of the cluster (it had not yet
//! seen a node come back after an outage, or die). Without an offline inbox the message would
//! end here although its receiver is connected at its owner, so it is sent on, once, to the
//! owner this node sees (`docs/design.md` section 16, "A message routed by another view").
//! With an inbox it is kept instead (`pending`): a shared store has the nodes the client may
//! be on push it, a per-node store hands it over to the owner (`handover`).

use std::sync::Arc;

use impush_core::{envelope::NodeCommand, ClientId, NodeId, NodeStatus};

use super::Node;
use crate::settle::{FrameToken, Settlement};

impl Node {
    /// The live node, other than this one, that owns `client` in this node's view; `None`
    /// when this node owns it (the message ends here, as for any client not connected).
    pub(super) fn owner_elsewhere(&self, client: &ClientId) -> Option<NodeId> {
        let owner = &self.cluster.owner(client).id;
        (*owner != self.id && self.cluster.status(owner) == NodeStatus::Live).then(|| owner.clone())
    }

    /// Sends the message on to each receiver's owner, one command per owner, marked so it
    /// goes no further. A receiver's token settles once the broker took its command (the
    /// owner then reports it: receipts, inbox), or unwritten if it did not (the sender hears
    /// `offline`, as when the receiver is not connected).
    pub(super) fn forward(
        self: &Arc<Self>,
        settlement: &Arc<Settlement>,
        to: Vec<(NodeId, ClientId, FrameToken)>,
    ) {
        let by_owner = super::batch::by_node(
            to.into_iter()
                .map(|(owner, client, token)| (owner, (client, token))),
        );
        let node = self.clone();
        let settlement = settlement.clone();
        tokio::spawn(async move {
            for (owner, part) in by_owner {
                let (clients, tokens): (Vec<ClientId>, Vec<FrameToken>) = part.into_iter().unzip();
                let n = clients.len() as u64;
                let cmd = NodeCommand::Deliver(settlement.forwarded_to(clients));
                if node.publish_command(&owner, &cmd).await {
                    node.metrics
                        .forwarded
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    tokens.into_iter().for_each(FrameToken::forwarded);
                }
            }
        });
    }
}
