//! Memberships outlive a dropped link (`docs/design.md` section 15): without
//! `[channels] persist`, a client whose last connection closed (its link dropped, its node
//! crashed) keeps its channels for `[channels] linger`, so reconnecting within it finds its
//! rooms and can resume them; after it, its memberships end unless it came back
//! (`PresenceStore::leave_all_if_offline`, one atomic step in the store).
//!
//! The waits live on the node that saw the client go. A node that stops ends its waits at
//! once (its clients had every chance to reconnect elsewhere during a drain); a node that
//! crashes loses them, and those memberships stay until the client leaves or comes back and
//! goes again: the price of keeping no timers in the store.

use std::sync::Arc;

use impush_core::{ClientId, DroppedConnection};

use super::Node;

impl Node {
    /// Whether a store call that drops a client's last connection should end its memberships
    /// in the same step (no persist and no linger).
    pub(crate) fn clear_channels_now(&self) -> bool {
        !self.persist_channels && self.linger.is_zero()
    }

    /// Ends the memberships of `clients` after the linger unless they reconnected.
    pub(crate) fn linger(self: &Arc<Self>, clients: Vec<ClientId>) {
        if self.persist_channels || self.linger.is_zero() || clients.is_empty() {
            return;
        }
        let node = self.clone();
        let stop = self.linger_stop.clone();
        self.lingering.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(node.linger) => {}
                () = stop.cancelled() => {}
            }
            for client in clients {
                match node.presence.leave_all_if_offline(&client).await {
                    Ok(true) => tracing::debug!(%client, "memberships ended after the linger"),
                    Ok(false) => {}
                    Err(e) => node.presence_error("leave_all_if_offline", &e),
                }
            }
        });
    }

    /// The clients among `dropped` that lost their last connection, for [`Node::linger`].
    pub(crate) fn gone_clients(dropped: &[DroppedConnection]) -> Vec<ClientId> {
        dropped
            .iter()
            .filter(|d| d.last)
            .map(|d| d.client.clone())
            .collect()
    }

    /// Ends every wait now (the node is stopping) and waits for them to finish.
    pub(crate) async fn end_lingering(&self) {
        self.linger_stop.cancel();
        self.lingering.close();
        self.lingering.wait().await;
    }
}
