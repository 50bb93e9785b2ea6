//! A `last` that a new connection crossed, found after it went out and repaired
//! (`docs/design.md` section 16, "A `last` crossed by a new connection is repaired").
//!
//! An offline event saying `last: true` is the store's reading at one moment. The client may
//! connect again on another node just then, and that connection's online event may reach the
//! business first (or say `first: false`, having counted the connection that was going):
//! replayed in order, the events would leave a connected client offline. Checking before the
//! publish narrows that window but cannot close it. So the node checks again after the
//! publish, of a store caught up since; if the client is connected, the nodes holding its
//! connections announce them again, and those events come after the `last`: they are
//! published only once the `reannounce` that follows the `last` has been read.

use std::sync::Arc;

use impush_core::{envelope, envelope::ClusterCommand, ClientId, Event};

use super::{catch_up::Since, Node};
use crate::metrics::Metrics;

impl Node {
    /// Publishes an offline event; after a `last: true`, checks in the background whether a
    /// new connection of the client crossed it.
    pub(super) async fn publish_offline(self: &Arc<Self>, event: Event) {
        let crossable = match &event {
            Event::Offline {
                client, last: true, ..
            } => Some(client.clone()),
            _ => None,
        };
        self.publish_event(&event).await;
        if let Some(client) = crossable {
            let node = self.clone();
            tokio::spawn(async move { node.repair_if_crossed(client).await });
        }
    }

    /// After a `last` for `client` went out: if the client is connected now, asks every node
    /// to announce its connections again.
    async fn repair_if_crossed(&self, client: ClientId) {
        if !self.connected_now(&client).await {
            return;
        }
        Metrics::bump(&self.metrics.lasts_crossed);
        tracing::info!(%client, "a `last` went out while the client had a connection: announcing it again");
        let cmd = ClusterCommand::Reannounce {
            clients: vec![client],
        };
        match envelope::encode("cluster command", &cmd) {
            Ok(payload) => self.publish(self.topics.all(), payload).await,
            Err(e) => tracing::error!(
                error = &e as &dyn std::error::Error,
                "cannot encode a reannounce"
            ),
        }
    }

    /// Whether `client` has a connection, by a store that has caught up with every node's
    /// writes made before this call (a catch-up begun after it; one begun earlier may miss
    /// the very connection that matters).
    pub(super) async fn connected_now(&self, client: &ClientId) -> bool {
        self.catch_up_presence(Since::Now).await;
        match self.presence.online(std::slice::from_ref(client)).await {
            Ok(a) => a.value.first().copied().unwrap_or(false),
            Err(e) => {
                self.presence_error("online", &e);
                false
            }
        }
    }

    /// Announces again the local connections of `clients` (a `reannounce` read on
    /// `{prefix}.all`): `first: true` for the first of each client here.
    pub(super) fn reannounce(self: &Arc<Self>, clients: Vec<ClientId>) {
        let clients: Vec<ClientId> = clients
            .into_iter()
            .filter(|c| self.registry.is_local(c))
            .collect();
        if clients.is_empty() {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            for client in clients {
                // Under the client's lock: a connection attaching or closing meanwhile
                // announces itself in order with these.
                let _guard = node.client_lock(&client).lock().await;
                let mut held = Vec::new();
                node.registry.for_client(&client, |s| {
                    held.push((s.connection.clone(), s.metadata.clone()));
                });
                for (k, (connection, metadata)) in held.into_iter().enumerate() {
                    tracing::info!(%client, %connection, "announcing a connection again");
                    node.publish_event(&Event::Online {
                        client: client.clone(),
                        node: node.id.clone(),
                        connection,
                        metadata,
                        first: k == 0,
                    })
                    .await;
                }
            }
        });
    }
}
