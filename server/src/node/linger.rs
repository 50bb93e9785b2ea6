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

use impush_core::{ChannelName, ClientId, DroppedConnection};

use super::Node;
use crate::webhooks::EventKind;

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
                node.end_memberships(&client).await;
            }
        });
    }

    /// Ends `client`'s memberships if it is still offline, and posts a `left` hook for each
    /// channel it was in: this node ran the store step, so it is the one that posts them.
    /// The channels are read just before the step; a join or leave between the two is the
    /// window in which a hook can be missed or come twice (`docs/design.md` section 17).
    async fn end_memberships(&self, client: &ClientId) {
        let channels = self.channels_for_left_hooks(client).await;
        match self.presence.leave_all_if_offline(client).await {
            Ok(true) => {
                tracing::debug!(%client, "memberships ended after the linger");
                self.post_left(client, &channels);
            }
            Ok(false) => {}
            Err(e) => self.presence_error("leave_all_if_offline", &e),
        }
    }

    /// `client`'s channels, read only when an endpoint wants `left` hooks.
    pub(super) async fn channels_for_left_hooks(&self, client: &ClientId) -> Vec<ChannelName> {
        if !self.webhooks.wants(EventKind::Left) {
            return Vec::new();
        }
        match self.presence.client_channels(client).await {
            Ok(answer) => answer.value,
            Err(e) => {
                self.presence_error("client_channels", &e);
                Vec::new()
            }
        }
    }

    /// Posts a `left` hook for `client` in each of `channels`, whose memberships this node
    /// just ended in the store.
    pub(super) fn post_left(&self, client: &ClientId, channels: &[ChannelName]) {
        for channel in channels {
            self.webhooks
                .membership(EventKind::Left, channel, std::iter::once(client));
        }
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
