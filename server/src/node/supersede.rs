//! A new connection that names the link it replaces (`replaces=`, `session::Links`) closes that
//! connection of its client on this node first, and waits until what it held (written and not
//! acked, or never written) is on its way back into the inbox. The new connection's attach then
//! reads the inbox before any live message: a client back before the node noticed its old link
//! died gets what was pending there first, in order (`docs/design.md` section 15, "Order per
//! sender"). A link on another node, or one already gone, is left alone.

use std::time::Duration;

use impush_core::ClientId;
use tokio::time::Instant;

use super::Node;
use crate::session::LinkId;

/// How long a new connection waits for the one it replaces to end. A session closed on request
/// ends at once, but it leaves presence before handing back what it held, and a presence store
/// that is slow to answer holds that up; past this the new connection goes on, and the old
/// link's messages come back after newer ones (never lost).
const WAIT: Duration = Duration::from_secs(5);

impl Node {
    /// Closes `client`'s connection named `link` on this node, if there is one, and waits (up
    /// to [`WAIT`]) until it has ended.
    pub(crate) async fn supersede(&self, client: &ClientId, link: LinkId) {
        let Some(old) = self.registry.find(client, |s| s.is_link(link)) else {
            return;
        };
        tracing::info!(%client, connection = %old.connection, "closing the link a reconnecting client replaces");
        old.replace();
        let deadline = Instant::now() + WAIT;
        while !old.has_ended() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
