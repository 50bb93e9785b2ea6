//! Taking over a dead node's inbox (`docs/design.md` section 16): what was published to it
//! (by helpers whose view had not caught up yet, or before it died) is read as its own queue
//! group would, and re-published to the receivers' owners now. Each command is acked only
//! once every re-publish succeeded, so a crash here leaves it for the next heir or for the
//! node itself when it returns. Message ids are kept, so a receiver's node drops a copy it
//! already had.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use impush_core::{
    envelope::{self, Deliver, NodeCommand},
    Delivery, Error, NodeId, SubscribeMode,
};
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::metrics::Metrics;

impl Node {
    /// Consumes `dead`'s inbox until `stop`, re-routing every command.
    pub(super) async fn take_over(self: Arc<Self>, dead: NodeId, stop: CancellationToken) {
        let topic = self.topics.inbox(&dead);
        let mode = SubscribeMode::Queue {
            group: dead.to_string(),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let sub = tokio::select! {
                () = stop.cancelled() => return,
                s = self.broker.subscribe(&topic, mode.clone()) => s,
            };
            match sub {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    loop {
                        let item = tokio::select! {
                            () = stop.cancelled() => return,
                            item = stream.next() => item,
                        };
                        match item {
                            Some(Ok(d)) => self.reroute(d).await,
                            Some(Err(Error::Lagged { .. })) => {}
                            Some(Err(e)) => {
                                tracing::warn!(node = %dead, error = &e as &dyn std::error::Error, "taken-over inbox error")
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %dead, error = &e as &dyn std::error::Error, "cannot subscribe to a dead node's inbox");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Re-publishes one command of a dead node's inbox to where it belongs now.
    async fn reroute(&self, delivery: Delivery) {
        let (payload, acker) = delivery.into_parts();
        let cmd = match envelope::decode::<NodeCommand>("node command", &payload) {
            Ok(c) => c,
            Err(_) => {
                Metrics::bump(&self.metrics.undecodable);
                acker.ack();
                return;
            }
        };
        let routed = match cmd {
            NodeCommand::Deliver(d) => self.reroute_deliver(d).await,
            NodeCommand::DeliverMany(batch) => {
                let mut ok = true;
                for (owner, part) in super::batch::regroup(&self.cluster, batch) {
                    ok &= self.publish_command(&owner, &part).await;
                }
                ok
            }
            NodeCommand::Receipt { ref sender, .. } => {
                let owner = self.cluster.owner(sender).id.clone();
                self.publish_command(&owner, &cmd).await
            }
            NodeCommand::Kick { ref client } | NodeCommand::Drain { ref client } => {
                let owner = self.cluster.owner(client).id.clone();
                self.publish_command(&owner, &cmd).await
            }
            NodeCommand::Publish(ref p) => {
                let key = p.channel.as_ref().map_or(" broadcast", |c| c.as_str());
                let owner = self.cluster.stream_owner(key).id.clone();
                self.publish_command(&owner, &cmd).await
            }
        };
        if routed {
            Metrics::bump(&self.metrics.taken_over);
            acker.ack();
        }
        // Not routed: left unacked, for a later try (here after a resubscribe, or the node).
    }

    async fn reroute_deliver(&self, d: Deliver) -> bool {
        let by_owner = super::batch::by_node(
            d.to.iter()
                .map(|c| (self.cluster.owner(c).id.clone(), c.clone())),
        );
        let mut ok = true;
        for (owner, to) in by_owner {
            let part = NodeCommand::Deliver(Deliver { to, ..d.clone() });
            ok &= self.publish_command(&owner, &part).await;
        }
        ok
    }

    /// Publishes `cmd` to `node`'s inbox; whether the broker took it.
    pub(super) async fn publish_command(&self, node: &NodeId, cmd: &NodeCommand) -> bool {
        let Ok(payload) = envelope::encode("node command", cmd) else {
            return false;
        };
        match self.broker.publish(&self.topics.inbox(node), payload).await {
            Ok(()) => true,
            Err(e) => {
                Metrics::bump(&self.metrics.broker_publish_errors);
                tracing::warn!(%node, error = &e as &dyn std::error::Error, "publishing a command to a node's inbox failed");
                false
            }
        }
    }
}
