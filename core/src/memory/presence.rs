//! [`MemoryPresenceStore`]: presence and channel membership in process memory.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;

use crate::{
    envelope::now_ms, AddedConnection, Answer, ChannelInfo, ChannelName, ClientId, ConnectionId,
    DroppedConnection, Error, NodeId, NodeLease, NodeState, NodeSync, PresenceStore, Result,
};

/// Presence for one process (the embedded default). All methods are O(size of the answer), under
/// one short `std::sync::Mutex` section that is never held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryPresenceStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Clients that are online or belong to a channel.
    clients: HashMap<ClientId, ClientState>,
    /// Channel -> members. Ordered so listings come out sorted without a sort.
    channels: BTreeMap<ChannelName, BTreeSet<ClientId>>,
    /// Node -> lease expiry (unix ms) and the state of its last heartbeat.
    leases: HashMap<NodeId, (u64, NodeState)>,
}

#[derive(Debug, Default)]
struct ClientState {
    connections: HashMap<ConnectionId, NodeId>,
    channels: BTreeSet<ChannelName>,
}

impl State {
    /// Removes every connection held by `node`, sorted by client and connection.
    fn drop_node(&mut self, node: &NodeId, clear_channels: bool) -> Vec<DroppedConnection> {
        self.leases.remove(node);
        let held = self.held_by(node);
        self.remove(node, held, clear_channels)
    }

    /// The connections `node` holds, sorted.
    fn held_by(&self, node: &NodeId) -> Vec<(ClientId, ConnectionId)> {
        let mut held: Vec<(ClientId, ConnectionId)> = self
            .clients
            .iter()
            .flat_map(|(client, state)| {
                state
                    .connections
                    .iter()
                    .filter(|(_, n)| *n == node)
                    .map(|(c, _)| (client.clone(), c.clone()))
            })
            .collect();
        held.sort();
        held
    }

    /// Removes `conns` (sorted) of `node`; the last removed connection of each client left
    /// with none is marked `last`.
    fn remove(
        &mut self,
        node: &NodeId,
        conns: Vec<(ClientId, ConnectionId)>,
        clear_channels: bool,
    ) -> Vec<DroppedConnection> {
        for (client, connection) in &conns {
            if let Some(state) = self.clients.get_mut(client) {
                state.connections.remove(connection);
            }
        }
        let n = conns.len();
        let mut dropped = Vec::with_capacity(n);
        for (i, (client, connection)) in conns.iter().enumerate() {
            let last_of_client = i + 1 == n || conns[i + 1].0 != *client;
            dropped.push(DroppedConnection {
                node: node.clone(),
                client: client.clone(),
                connection: connection.clone(),
                last: last_of_client && !self.is_online(client),
            });
        }
        for d in dropped.iter().filter(|d| d.last) {
            self.after_offline(&d.client, clear_channels);
        }
        dropped
    }

    fn is_online(&self, c: &ClientId) -> bool {
        self.clients
            .get(c)
            .is_some_and(|s| !s.connections.is_empty())
    }

    /// Drops the client's channels (when asked) and forgets a client that is neither online nor
    /// in a channel, so the map does not grow with every id ever seen.
    fn after_offline(&mut self, client: &ClientId, clear_channels: bool) {
        let Some(state) = self.clients.get_mut(client) else {
            return;
        };
        if !state.connections.is_empty() {
            return;
        }
        if clear_channels {
            for ch in std::mem::take(&mut state.channels) {
                remove_member(&mut self.channels, &ch, client);
            }
        }
        if state.channels.is_empty() {
            self.clients.remove(client);
        }
    }
}

fn remove_member(
    channels: &mut BTreeMap<ChannelName, BTreeSet<ClientId>>,
    ch: &ChannelName,
    client: &ClientId,
) {
    if let Some(members) = channels.get_mut(ch) {
        members.remove(client);
        if members.is_empty() {
            channels.remove(ch);
        }
    }
}

impl MemoryPresenceStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| Error::Unavailable {
            backend: "memory",
            source: Some("a thread panicked while holding the presence state".into()),
        })
    }
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn connect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
    ) -> Result<usize> {
        let mut s = self.lock()?;
        let entry = s.clients.entry(client.clone()).or_default();
        entry.connections.insert(connection.clone(), node.clone());
        Ok(entry.connections.len())
    }

    async fn disconnect(
        &self,
        _node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        clear_channels: bool,
    ) -> Result<usize> {
        let mut s = self.lock()?;
        let Some(entry) = s.clients.get_mut(client) else {
            return Ok(0);
        };
        entry.connections.remove(connection);
        let left = entry.connections.len();
        s.after_offline(client, clear_channels);
        Ok(left)
    }

    async fn clear_node(
        &self,
        node: &NodeId,
        clear_channels: bool,
    ) -> Result<Vec<DroppedConnection>> {
        Ok(self.lock()?.drop_node(node, clear_channels))
    }

    async fn sync_node(
        &self,
        node: &NodeId,
        connections: &[(ClientId, ConnectionId)],
        clear_channels: bool,
    ) -> Result<NodeSync> {
        let mut s = self.lock()?;
        let want: BTreeSet<&(ClientId, ConnectionId)> = connections.iter().collect();
        let held = s.held_by(node);
        let ghosts: Vec<(ClientId, ConnectionId)> =
            held.iter().filter(|c| !want.contains(c)).cloned().collect();
        // Additions first, so a client whose ghost is replaced by a live connection never
        // counts as gone.
        let held: BTreeSet<&(ClientId, ConnectionId)> = held.iter().collect();
        let mut added = Vec::new();
        for (client, connection) in want.into_iter().filter(|c| !held.contains(c)) {
            let entry = s.clients.entry(client.clone()).or_default();
            let first = entry.connections.is_empty();
            entry.connections.insert(connection.clone(), node.clone());
            added.push(AddedConnection {
                client: client.clone(),
                connection: connection.clone(),
                first,
            });
        }
        let removed = s.remove(node, ghosts, clear_channels);
        Ok(NodeSync { removed, added })
    }

    async fn heartbeat(&self, node: &NodeId, lease: Duration, state: NodeState) -> Result<bool> {
        let now = now_ms();
        let expiry = now.saturating_add(lease.as_millis() as u64);
        let previous = self.lock()?.leases.insert(node.clone(), (expiry, state));
        Ok(previous.is_some())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeLease>> {
        let now = now_ms();
        let mut live: Vec<NodeLease> = self
            .lock()?
            .leases
            .iter()
            .filter(|(_, (expiry, _))| *expiry > now)
            .map(|(node, (_, state))| NodeLease {
                node: node.clone(),
                state: *state,
            })
            .collect();
        live.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(live)
    }

    async fn reap_expired(&self, clear_channels: bool) -> Result<Vec<DroppedConnection>> {
        let now = now_ms();
        let mut s = self.lock()?;
        let mut expired: Vec<NodeId> = s
            .leases
            .iter()
            .filter(|(_, (e, _))| *e <= now)
            .map(|(n, _)| n.clone())
            .collect();
        expired.sort();
        let mut dropped = Vec::new();
        for node in expired {
            dropped.extend(s.drop_node(&node, clear_channels));
        }
        Ok(dropped)
    }

    async fn connections(&self, client: &ClientId) -> Result<Answer<usize>> {
        Ok(Answer::complete(
            self.lock()?
                .clients
                .get(client)
                .map_or(0, |s| s.connections.len()),
        ))
    }

    async fn online(&self, clients: &[ClientId]) -> Result<Answer<Vec<bool>>> {
        let s = self.lock()?;
        Ok(Answer::complete(
            clients.iter().map(|c| s.is_online(c)).collect(),
        ))
    }

    async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
        let s = self.lock()?;
        let mut v: Vec<ClientId> = s
            .clients
            .iter()
            .filter(|(_, st)| !st.connections.is_empty())
            .map(|(c, _)| c.clone())
            .collect();
        v.sort();
        Ok(Answer::complete(v))
    }

    async fn leave_all_if_offline(&self, client: &ClientId) -> Result<bool> {
        let mut s = self.lock()?;
        if s.is_online(client) || !s.clients.contains_key(client) {
            return Ok(false);
        }
        s.after_offline(client, true);
        Ok(true)
    }

    async fn join_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        let mut s = self.lock()?;
        for c in clients {
            s.clients
                .entry(c.clone())
                .or_default()
                .channels
                .insert(channel.clone());
            s.channels
                .entry(channel.clone())
                .or_default()
                .insert(c.clone());
        }
        Ok(())
    }

    async fn leave_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        let mut s = self.lock()?;
        for c in clients {
            if let Some(st) = s.clients.get_mut(c) {
                st.channels.remove(channel);
            }
            remove_member(&mut s.channels, channel, c);
            // Forget a client that is now neither online nor in any channel.
            s.after_offline(c, false);
        }
        Ok(())
    }

    async fn channel_members(&self, channel: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        let s = self.lock()?;
        Ok(Answer::complete(
            s.channels
                .get(channel)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default(),
        ))
    }

    async fn channel_online(&self, channel: &ChannelName) -> Result<Answer<usize>> {
        let s = self.lock()?;
        Ok(Answer::complete(s.channels.get(channel).map_or(0, |m| {
            m.iter().filter(|c| s.is_online(c)).count()
        })))
    }

    async fn client_channels(&self, client: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        let s = self.lock()?;
        Ok(Answer::complete(
            s.clients
                .get(client)
                .map(|st| st.channels.iter().cloned().collect())
                .unwrap_or_default(),
        ))
    }

    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        let s = self.lock()?;
        Ok(Answer::complete(
            s.channels
                .iter()
                .map(|(name, members)| ChannelInfo {
                    name: name.clone(),
                    members: members.len(),
                    online: members.iter().filter(|c| s.is_online(c)).count(),
                })
                .collect(),
        ))
    }

    async fn ping(&self) -> Result<()> {
        self.lock().map(drop)
    }
}
