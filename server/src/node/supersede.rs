//! A new connection that names the link it replaces (`replaces=`, `session::Links`) closes that
//! connection of its client on this node first, and waits until what it held (written and not
//! acked, or never written) is on its way back into the inbox. The new connection's attach then
//! reads the inbox before any live message: a client back before the node noticed its old link
//! died gets what was pending there first, in order (`docs/design.md` section 15, "Order per
//! sender"). A link on another node, or one already gone, is left alone.
//!
//! A link may be named while it is still connecting: its attach waits for the client's lock,
//! and a client that gave up on it at once (a reset right after the handshake) is back with the
//! next link before it is in the registry. Named links are therefore findable from before the
//! upgrade is answered ([`Arriving`], `Node::arrive`) until attached; one replaced then
//! attaches, ends at once and hands back what it took meanwhile. (Looked up in the registry only, such a link took live messages it never
//! wrote after the new one had read the inbox, and they came back after newer ones.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use impush_core::ClientId;
use tokio::time::Instant;

use super::Node;
use crate::session::{LinkId, SessionHandle};

/// Named sessions accepted and not yet attached, per client.
#[derive(Debug, Default)]
pub(crate) struct Arriving(Mutex<HashMap<ClientId, Vec<Arc<SessionHandle>>>>);

impl Arriving {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Vec<Arc<SessionHandle>>>> {
        // Every change leaves the map consistent: a poisoned lock is used as it is.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, session: &Arc<SessionHandle>) {
        self.lock()
            .entry(session.client.clone())
            .or_default()
            .push(session.clone());
    }

    fn remove(&self, session: &Arc<SessionHandle>) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&session.client) {
            list.retain(|s| !Arc::ptr_eq(s, session));
            if list.is_empty() {
                map.remove(&session.client);
            }
        }
    }

    fn find(&self, me: &Arc<SessionHandle>, link: LinkId) -> Option<Arc<SessionHandle>> {
        self.lock()
            .get(&me.client)?
            .iter()
            .find(|s| s.is_link(link) && !Arc::ptr_eq(s, me))
            .cloned()
    }
}

/// A session listed in its node's [`Arriving`], taken off when dropped.
#[derive(Debug)]
pub(crate) struct Listed {
    node: Arc<Node>,
    session: Arc<SessionHandle>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.node.arriving.remove(&self.session);
    }
}

/// How long a new connection waits for the one it replaces to end. A session closed on request
/// ends at once, but it leaves presence before handing back what it held, and a presence store
/// that is slow to answer holds that up; past this the new connection goes on, and the old
/// link's messages come back after newer ones (never lost).
const WAIT: Duration = Duration::from_secs(5);

impl Node {
    /// Lists `session` as arriving until the returned guard is dropped (once it is attached);
    /// an unnamed session cannot be replaced by name and is not listed.
    pub(crate) fn list_arriving(self: &Arc<Self>, session: &Arc<SessionHandle>) -> Option<Listed> {
        if !session.has_link() {
            return None;
        }
        self.arriving.add(session);
        Some(Listed {
            node: self.clone(),
            session: session.clone(),
        })
    }

    /// Closes the connection of `me`'s client named `link` on this node (never `me`, which is
    /// not attached yet), attached or still connecting, if there is one, and waits (up to
    /// [`WAIT`]) until it has ended.
    pub(crate) async fn supersede(&self, me: &Arc<SessionHandle>, link: LinkId) {
        let client = &me.client;
        let old = self
            .registry
            .find(client, |s| s.is_link(link))
            .or_else(|| self.arriving.find(me, link));
        let Some(old) = old else {
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
