//! The node's in-memory index of its own connections: client id -> sessions, and channel ->
//! local members.
//!
//! Delivery reads only this (never the presence store). Two `std::sync::RwLock`s, each held for
//! a short, non-async section; when both are needed the channel index is locked first.
//!
//! The iterators that deliver (`for_channel`, `for_all`, `for_client`) let the frames they push
//! go straight to idle sockets at everyday rates (a [`Pacer`] per feed, see `session`). A
//! channel or broadcast delivery that writes directly first copies its sessions out of the
//! index, so its writes, slower than queueing, never hold the locks, and shares a large one
//! out among the runtime's workers (`session::shared_out`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use impush_core::{ChannelName, ClientId, ConnectionId};

use crate::session::{shared_out, Pacer, SessionHandle};

/// A channel or broadcast delivery that begins sooner than this after the previous one ended
/// found a backlog: it queues its frames, so session tasks batch them.
const STREAM_GAP: std::time::Duration = std::time::Duration::from_micros(500);
/// The same for point-to-point deliveries, which are short and frequent.
const DIRECT_GAP: std::time::Duration = std::time::Duration::from_micros(50);
/// A delivery that begins this long after the previous one ended is paced: a large one may
/// share its sockets out among the runtime's workers. Sooner, it is part of a burst (full
/// speed measured 23% fewer frames/s with every delivery sharing out).
const SHARE_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// Local connections and local channel members, as returned by [`Registry::snapshot`].
pub(crate) type Snapshot = (
    Vec<(ClientId, ConnectionId)>,
    Vec<(ChannelName, Vec<ClientId>)>,
);

#[derive(Debug)]
pub(crate) struct Registry {
    clients: RwLock<HashMap<ClientId, Vec<Arc<SessionHandle>>>>,
    channels: RwLock<ChannelIndex>,
    /// Whether channel and broadcast deliveries may write directly.
    streams: Pacer,
    /// Whether point-to-point deliveries may write directly.
    direct: Pacer,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            clients: RwLock::default(),
            channels: RwLock::default(),
            streams: Pacer::new(STREAM_GAP, Some(SHARE_GAP)),
            direct: Pacer::new(DIRECT_GAP, None),
        }
    }
}

#[derive(Debug, Default)]
struct ChannelIndex {
    members: HashMap<ChannelName, HashSet<ClientId>>,
    member_of: HashMap<ClientId, HashSet<ChannelName>>,
}

impl ChannelIndex {
    fn add(&mut self, channel: &ChannelName, client: &ClientId) {
        self.members
            .entry(channel.clone())
            .or_default()
            .insert(client.clone());
        self.member_of
            .entry(client.clone())
            .or_default()
            .insert(channel.clone());
    }

    fn remove(&mut self, channel: &ChannelName, client: &ClientId) {
        if let Some(m) = self.members.get_mut(channel) {
            m.remove(client);
            if m.is_empty() {
                self.members.remove(channel);
            }
        }
        if let Some(c) = self.member_of.get_mut(client) {
            c.remove(channel);
            if c.is_empty() {
                self.member_of.remove(client);
            }
        }
    }
}

// A poisoned lock means a panic elsewhere already; the data (sets of ids) stays consistent
// enough to keep serving, so recover the guard instead of propagating the panic.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Adds a session; returns whether it is the client's first and the sessions over `limit`
    /// (oldest first) that should be replaced. `limit == 0` means unlimited.
    pub(crate) fn add(
        &self,
        handle: &Arc<SessionHandle>,
        limit: usize,
    ) -> (bool, Vec<Arc<SessionHandle>>) {
        let mut clients = write(&self.clients);
        // Under the lock: a delivery that looks for this client's sockets after this either
        // finds it or has a lower mark (see `settle::next_mark`).
        handle.mark.store(
            crate::settle::next_mark(),
            std::sync::atomic::Ordering::Release,
        );
        let sessions = clients.entry(handle.client.clone()).or_default();
        let first = sessions.is_empty();
        sessions.push(handle.clone());
        let excess = if limit > 0 && sessions.len() > limit {
            sessions[..sessions.len() - limit].to_vec()
        } else {
            Vec::new()
        };
        (first, excess)
    }

    /// Removes a session; returns whether it was the client's last.
    pub(crate) fn remove(&self, handle: &Arc<SessionHandle>) -> bool {
        let mut clients = write(&self.clients);
        let Some(sessions) = clients.get_mut(&handle.client) else {
            return true;
        };
        sessions.retain(|s| !Arc::ptr_eq(s, handle));
        if sessions.is_empty() {
            clients.remove(&handle.client);
            true
        } else {
            false
        }
    }

    /// Calls `f` for every session of `client`; returns how many there were.
    pub(crate) fn for_client(&self, client: &ClientId, mut f: impl FnMut(&SessionHandle)) -> usize {
        let direct = self.direct.begin();
        let n = {
            let clients = read(&self.clients);
            let sessions = clients.get(client).map_or(&[][..], Vec::as_slice);
            sessions.iter().for_each(|s| f(s));
            sessions.len()
        };
        drop(direct);
        self.direct.end();
        n
    }

    /// Calls `f` for every session of every local member of `channel`; returns the count.
    pub(crate) fn for_channel(
        &self,
        channel: &ChannelName,
        mut f: impl FnMut(&SessionHandle),
    ) -> usize {
        let direct = self.streams.begin();
        let n = if direct.is_some() {
            shared_out(self.channel_sessions(channel), f)
        } else {
            let index = read(&self.channels);
            let clients = read(&self.clients);
            let mut n = 0;
            let members = index.members.get(channel).into_iter().flatten();
            for sessions in members.filter_map(|c| clients.get(c)) {
                for s in sessions {
                    f(s);
                    n += 1;
                }
            }
            n
        };
        drop(direct);
        self.streams.end();
        n
    }

    /// The sessions of `channel`'s local members, copied out of the index.
    fn channel_sessions(&self, channel: &ChannelName) -> Vec<Arc<SessionHandle>> {
        let index = read(&self.channels);
        let Some(members) = index.members.get(channel) else {
            return Vec::new();
        };
        let clients = read(&self.clients);
        let mut out = Vec::with_capacity(members.len());
        for sessions in members.iter().filter_map(|c| clients.get(c)) {
            out.extend(sessions.iter().cloned());
        }
        out
    }

    /// Calls `f` for every session on this node; returns the count.
    pub(crate) fn for_all(&self, mut f: impl FnMut(&SessionHandle)) -> usize {
        let direct = self.streams.begin();
        let n = if direct.is_some() {
            let sessions: Vec<Arc<SessionHandle>> =
                read(&self.clients).values().flatten().cloned().collect();
            shared_out(sessions, f)
        } else {
            let clients = read(&self.clients);
            let mut n = 0;
            for s in clients.values().flatten() {
                f(s);
                n += 1;
            }
            n
        };
        drop(direct);
        self.streams.end();
        n
    }

    /// Records that the local ones among `clients` joined `channel`.
    pub(crate) fn join(&self, channel: &ChannelName, clients: &[ClientId]) {
        let mut index = write(&self.channels);
        let local = read(&self.clients);
        for c in clients.iter().filter(|c| local.contains_key(*c)) {
            index.add(channel, c);
        }
    }

    /// Records that `client` (local) belongs to `channels` (loaded when it connects).
    pub(crate) fn join_all(&self, client: &ClientId, channels: &[ChannelName]) {
        let mut index = write(&self.channels);
        if !read(&self.clients).contains_key(client) {
            return;
        }
        for ch in channels {
            index.add(ch, client);
        }
    }

    pub(crate) fn leave(&self, channel: &ChannelName, clients: &[ClientId]) {
        let mut index = write(&self.channels);
        for c in clients {
            index.remove(channel, c);
        }
    }

    /// Forgets every channel of `client` (its last local connection closed).
    pub(crate) fn forget_channels(&self, client: &ClientId) {
        let mut index = write(&self.channels);
        let Some(chans) = index.member_of.remove(client) else {
            return;
        };
        for ch in chans {
            if let Some(m) = index.members.get_mut(&ch) {
                m.remove(client);
                if m.is_empty() {
                    index.members.remove(&ch);
                }
            }
        }
    }

    /// The first session of `client` that `pick` selects.
    pub(crate) fn find(
        &self,
        client: &ClientId,
        mut pick: impl FnMut(&SessionHandle) -> bool,
    ) -> Option<Arc<SessionHandle>> {
        read(&self.clients)
            .get(client)?
            .iter()
            .find(|s| pick(s))
            .cloned()
    }

    /// The sessions of the local clients `pick` selects.
    pub(crate) fn sessions_of(
        &self,
        mut pick: impl FnMut(&ClientId) -> bool,
    ) -> Vec<Arc<SessionHandle>> {
        read(&self.clients)
            .iter()
            .filter(|(c, _)| pick(c))
            .flat_map(|(_, s)| s.iter().cloned())
            .collect()
    }

    /// Whether `client` (local) is a member of `channel` in the local index.
    pub(crate) fn is_member(&self, channel: &ChannelName, client: &ClientId) -> bool {
        read(&self.channels)
            .members
            .get(channel)
            .is_some_and(|m| m.contains(client))
    }

    /// Whether `client` has a connection here.
    pub(crate) fn is_local(&self, client: &ClientId) -> bool {
        read(&self.clients).contains_key(client)
    }

    /// How many clients have a connection here.
    pub(crate) fn client_count(&self) -> usize {
        read(&self.clients).len()
    }

    /// Every client with a connection here.
    pub(crate) fn local_clients(&self) -> Vec<ClientId> {
        read(&self.clients).keys().cloned().collect()
    }

    /// The connect metadata of one local connection.
    pub(crate) fn metadata_of(
        &self,
        client: &ClientId,
        connection: &ConnectionId,
    ) -> Option<serde_json::Value> {
        read(&self.clients)
            .get(client)?
            .iter()
            .find(|s| &s.connection == connection)
            .map(|s| s.metadata.clone())
    }

    /// Every local connection and every channel's local members, for re-registering them.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let index = read(&self.channels);
        let clients = read(&self.clients);
        let connections = clients
            .values()
            .flatten()
            .map(|s| (s.client.clone(), s.connection.clone()))
            .collect();
        let memberships = index
            .members
            .iter()
            .map(|(ch, m)| (ch.clone(), m.iter().cloned().collect()))
            .collect();
        (connections, memberships)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use impush_core::{config::LimitsConfig, ClientId, ConnectionId};

    use super::Registry;
    use crate::{metrics::Metrics, session::SessionHandle};

    /// The order `Node::settle_with_inbox` relies on (`settle::next_mark`): a socket that
    /// joined the registry before a message went out live was offered it then, and is not
    /// drained it again; one that joined after was not, and is.
    #[test]
    fn a_socket_came_after_exactly_the_messages_marked_before_it_joined() {
        let registry = Registry::default();
        let before = crate::settle::next_mark();
        let h = Arc::new(SessionHandle::new(
            ClientId::new("alice").expect("valid id"),
            ConnectionId::new("n1-1").expect("valid id"),
            serde_json::Value::Null,
            &LimitsConfig::default(),
            Arc::new(Metrics::default()),
        ));
        assert!(!h.came_after(before), "not registered yet: offered nothing");
        registry.add(&h, 0);
        let after = crate::settle::next_mark();
        assert!(h.came_after(before));
        assert!(!h.came_after(after));
    }
}
