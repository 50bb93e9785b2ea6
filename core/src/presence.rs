//! The [`PresenceStore`] trait: who is online, and who belongs to which channel.
//!
//! Nodes write to it (connections opening and closing, node start-up clean-up, reconciliation
//! after an outage); helpers read it to answer queries and write channel membership. Delivery
//! never reads it: nodes keep their own in-memory index of local channel members.
//!
//! Queries return an [`Answer`]: a store that asks other nodes (`cluster`) says which nodes
//! did not answer in time instead of hanging; a central store (memory, Redis) always answers
//! completely.

use std::{fmt::Debug, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{ChannelName, ClientId, ConnectionId, NodeId, Result};

/// One channel as listed by [`PresenceStore::channels`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The channel name.
    pub name: ChannelName,
    /// How many clients are members.
    pub members: usize,
    /// How many members are online.
    pub online: usize,
}

/// The answer to a presence query, and the nodes whose part of it is missing because they did
/// not answer within the query timeout (always empty for a central store).
///
/// Derefs to the value, and compares equal to a bare value, so complete answers read like the
/// value itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer<T> {
    /// What the nodes that answered know.
    pub value: T,
    /// Nodes that did not answer in time, sorted; empty for a complete answer.
    pub missing: Vec<NodeId>,
}

impl<T> Answer<T> {
    /// A complete answer.
    pub fn complete(value: T) -> Self {
        Self {
            value,
            missing: Vec::new(),
        }
    }

    /// Whether every node answered.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The value, whether complete or not.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The same missing nodes around another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        Answer {
            value: f(self.value),
            missing: self.missing,
        }
    }
}

impl<T> std::ops::Deref for Answer<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: PartialEq> PartialEq<T> for Answer<T> {
    fn eq(&self, other: &T) -> bool {
        self.value == *other
    }
}

impl<T: PartialOrd> PartialOrd<T> for Answer<T> {
    fn partial_cmp(&self, other: &T) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(other)
    }
}

/// A connection (re-)registered by [`PresenceStore::sync_node`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedConnection {
    /// The client.
    pub client: ClientId,
    /// The connection.
    pub connection: ConnectionId,
    /// The client had no connection before this one.
    pub first: bool,
}

/// What [`PresenceStore::sync_node`] changed to make the store match the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSync {
    /// Connections the store had and the node does not (ghosts left by failed writes), sorted
    /// by client and connection.
    pub removed: Vec<DroppedConnection>,
    /// Connections the node has and the store lacked, sorted by client and connection.
    pub added: Vec<AddedConnection>,
}

/// What a node says of itself with each [`PresenceStore::heartbeat`] (`docs/design.md`
/// section 16).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving: new clients may be handed to it.
    #[default]
    Live,
    /// Shutting down gently: it still holds its clients, moving them to their next node, and
    /// no new client is handed to it.
    Draining,
}

/// A node that holds its lease, as listed by [`PresenceStore::live_nodes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    /// The node.
    pub node: NodeId,
    /// What it said of itself in its last heartbeat.
    pub state: NodeState,
}

/// A connection removed because its node's lease ran out (see [`PresenceStore::reap_expired`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedConnection {
    /// The node that held it and stopped renewing its lease.
    pub node: NodeId,
    /// The client.
    pub client: ClientId,
    /// The connection.
    pub connection: ConnectionId,
    /// The client has no connection left.
    pub last: bool,
}

/// Presence and channel membership for the whole cluster.
///
/// # Contract
/// - Connections are counted per client across all nodes; a client is online while it has one.
/// - `disconnect(.., clear_channels = true)` removes the client from all its channels in the same
///   step as removing the connection, so membership never outlives the last connection by a race.
/// - Channel membership is per client id and may be recorded for offline clients.
/// - Methods that return lists return them sorted, so callers and tests get stable output.
/// - Nodes renew a lease with [`heartbeat`](PresenceStore::heartbeat); the connections of a node
///   whose lease ran out are removed by the next [`reap_expired`](PresenceStore::reap_expired)
///   (any node may call it; each dropped connection is returned to exactly one caller), so a
///   crashed node's clients stop counting as online.
#[async_trait]
pub trait PresenceStore: Send + Sync + Debug + 'static {
    /// Records a connection of `client` held by `node`; returns the client's connection count.
    async fn connect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
    ) -> Result<usize>;

    /// Removes a connection; returns the client's remaining connection count. With
    /// `clear_channels`, and when no connection remains, the client leaves all its channels.
    async fn disconnect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        clear_channels: bool,
    ) -> Result<usize>;

    /// Removes every connection held by `node` (a node starting after a crash, or shutting down)
    /// and returns them, sorted by client and connection, the last one of each client that went
    /// offline marked `last`, so the caller can publish offline events. With `clear_channels`
    /// those clients leave their channels.
    async fn clear_node(
        &self,
        node: &NodeId,
        clear_channels: bool,
    ) -> Result<Vec<DroppedConnection>>;

    /// Makes the connections the store holds for `node` exactly `connections` (what the node
    /// really has), in one step: after a presence write failed during an outage, or after the
    /// store forgot or reaped a live node. Clients left with no connection leave their channels
    /// when `clear_channels` is set.
    async fn sync_node(
        &self,
        node: &NodeId,
        connections: &[(ClientId, ConnectionId)],
        clear_channels: bool,
    ) -> Result<NodeSync>;

    /// Marks `node` alive for `lease` from now, in `state`. Returns whether the store still
    /// knew the node: `false` on a node's first heartbeat, after `clear_node`, and after the
    /// store lost its data or reaped the node, which tells the node to register its
    /// connections again. A lease that ran out but was not reaped (the store stalled) still
    /// counts as known.
    async fn heartbeat(&self, node: &NodeId, lease: Duration, state: NodeState) -> Result<bool>;

    /// The nodes whose lease has not run out, each with the state of its last heartbeat,
    /// sorted by node. `clear_node` ends a node's lease at once. Nodes, helpers and the HTTP
    /// API pick a client's owner among these (`docs/design.md` section 16).
    async fn live_nodes(&self) -> Result<Vec<NodeLease>>;

    /// Removes every connection of every node whose lease has run out, and those nodes' leases,
    /// returning the connections (sorted by node, client, connection) so the caller can publish
    /// offline events. With `clear_channels`, clients left with no connection leave their
    /// channels.
    async fn reap_expired(&self, clear_channels: bool) -> Result<Vec<DroppedConnection>>;

    /// How many connections `client` has.
    async fn connections(&self, client: &ClientId) -> Result<Answer<usize>>;

    /// Whether each of `clients` is online, in the same order.
    async fn online(&self, clients: &[ClientId]) -> Result<Answer<Vec<bool>>>;

    /// Every online client, sorted.
    async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>>;

    /// If `client` has no connection, removes it from all its channels, in one step; returns
    /// whether it did. What ends the memberships of a client that did not come back within
    /// `[channels] linger` (`docs/design.md` section 15: a reconnecting client keeps its rooms).
    async fn leave_all_if_offline(&self, client: &ClientId) -> Result<bool>;

    /// Adds `clients` to `channel` (idempotent).
    async fn join_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()>;

    /// Removes `clients` from `channel` (idempotent). A channel with no member disappears.
    async fn leave_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()>;

    /// The members of `channel`, sorted (empty for an unknown channel).
    async fn channel_members(&self, channel: &ChannelName) -> Result<Answer<Vec<ClientId>>>;

    /// How many members of `channel` are online.
    async fn channel_online(&self, channel: &ChannelName) -> Result<Answer<usize>>;

    /// The channels `client` belongs to, sorted.
    async fn client_channels(&self, client: &ClientId) -> Result<Answer<Vec<ChannelName>>>;

    /// Every channel with its member and online counts, sorted by name.
    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>>;

    /// Checks that the store is reachable (used by `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Waits until this instance's answers include every write any node made before the call.
    /// A store that answers from one place (Redis, memory) already does: the default returns
    /// at once. A store whose instances answer from a view fed by a broker reads its feed up
    /// to that point first. Called before a decision another node's recent write may change
    /// (whether a reaped connection was its client's last one).
    async fn catch_up(&self) -> Result<()> {
        Ok(())
    }
}

macro_rules! forward_presence {
    ($ty:ty) => {
        #[async_trait]
        impl<T: PresenceStore + ?Sized> PresenceStore for $ty {
            async fn connect(&self, n: &NodeId, c: &ClientId, k: &ConnectionId) -> Result<usize> {
                (**self).connect(n, c, k).await
            }
            async fn disconnect(
                &self,
                n: &NodeId,
                c: &ClientId,
                k: &ConnectionId,
                clear: bool,
            ) -> Result<usize> {
                (**self).disconnect(n, c, k, clear).await
            }
            async fn clear_node(&self, n: &NodeId, clear: bool) -> Result<Vec<DroppedConnection>> {
                (**self).clear_node(n, clear).await
            }
            async fn sync_node(
                &self,
                n: &NodeId,
                c: &[(ClientId, ConnectionId)],
                clear: bool,
            ) -> Result<NodeSync> {
                (**self).sync_node(n, c, clear).await
            }
            async fn heartbeat(&self, n: &NodeId, lease: Duration, st: NodeState) -> Result<bool> {
                (**self).heartbeat(n, lease, st).await
            }
            async fn live_nodes(&self) -> Result<Vec<NodeLease>> {
                (**self).live_nodes().await
            }
            async fn reap_expired(&self, clear: bool) -> Result<Vec<DroppedConnection>> {
                (**self).reap_expired(clear).await
            }
            async fn connections(&self, c: &ClientId) -> Result<Answer<usize>> {
                (**self).connections(c).await
            }
            async fn online(&self, c: &[ClientId]) -> Result<Answer<Vec<bool>>> {
                (**self).online(c).await
            }
            async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
                (**self).online_clients().await
            }
            async fn leave_all_if_offline(&self, c: &ClientId) -> Result<bool> {
                (**self).leave_all_if_offline(c).await
            }
            async fn join_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
                (**self).join_channel(ch, c).await
            }
            async fn leave_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
                (**self).leave_channel(ch, c).await
            }
            async fn channel_members(&self, ch: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
                (**self).channel_members(ch).await
            }
            async fn channel_online(&self, ch: &ChannelName) -> Result<Answer<usize>> {
                (**self).channel_online(ch).await
            }
            async fn client_channels(&self, c: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
                (**self).client_channels(c).await
            }
            async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
                (**self).channels().await
            }
            async fn ping(&self) -> Result<()> {
                (**self).ping().await
            }
            async fn catch_up(&self) -> Result<()> {
                (**self).catch_up().await
            }
        }
    };
}

forward_presence!(Arc<T>);
forward_presence!(Box<T>);
