//! The [`PresenceStore`] trait: who is online, and who belongs to which channel.
//!
//! Nodes write to it (connections opening and closing, node start-up clean-up); helpers read it
//! to answer queries and write channel membership. Delivery never reads it: nodes keep their own
//! in-memory index of local channel members.

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
    /// and returns the clients left with no connection, sorted. With `clear_channels` those
    /// clients leave their channels.
    async fn clear_node(&self, node: &NodeId, clear_channels: bool) -> Result<Vec<ClientId>>;

    /// Marks `node` alive for `lease` from now. Returns whether the store already held a live
    /// lease for it: `false` on a node's first heartbeat, and after the store lost its data or
    /// reaped the node, which tells the node to register its connections again.
    async fn heartbeat(&self, node: &NodeId, lease: Duration) -> Result<bool>;

    /// Removes every connection of every node whose lease has run out, and those nodes' leases,
    /// returning the connections (sorted by node, client, connection) so the caller can publish
    /// offline events. With `clear_channels`, clients left with no connection leave their
    /// channels.
    async fn reap_expired(&self, clear_channels: bool) -> Result<Vec<DroppedConnection>>;

    /// How many connections `client` has.
    async fn connections(&self, client: &ClientId) -> Result<usize>;

    /// Whether each of `clients` is online, in the same order.
    async fn online(&self, clients: &[ClientId]) -> Result<Vec<bool>>;

    /// Every online client, sorted.
    async fn online_clients(&self) -> Result<Vec<ClientId>>;

    /// Adds `clients` to `channel` (idempotent).
    async fn join_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()>;

    /// Removes `clients` from `channel` (idempotent). A channel with no member disappears.
    async fn leave_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()>;

    /// The members of `channel`, sorted (empty for an unknown channel).
    async fn channel_members(&self, channel: &ChannelName) -> Result<Vec<ClientId>>;

    /// How many members of `channel` are online.
    async fn channel_online(&self, channel: &ChannelName) -> Result<usize>;

    /// The channels `client` belongs to, sorted.
    async fn client_channels(&self, client: &ClientId) -> Result<Vec<ChannelName>>;

    /// Every channel with its member and online counts, sorted by name.
    async fn channels(&self) -> Result<Vec<ChannelInfo>>;

    /// Checks that the store is reachable (used by `/readyz`).
    async fn ping(&self) -> Result<()>;
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
            async fn clear_node(&self, n: &NodeId, clear: bool) -> Result<Vec<ClientId>> {
                (**self).clear_node(n, clear).await
            }
            async fn heartbeat(&self, n: &NodeId, lease: Duration) -> Result<bool> {
                (**self).heartbeat(n, lease).await
            }
            async fn reap_expired(&self, clear: bool) -> Result<Vec<DroppedConnection>> {
                (**self).reap_expired(clear).await
            }
            async fn connections(&self, c: &ClientId) -> Result<usize> {
                (**self).connections(c).await
            }
            async fn online(&self, c: &[ClientId]) -> Result<Vec<bool>> {
                (**self).online(c).await
            }
            async fn online_clients(&self) -> Result<Vec<ClientId>> {
                (**self).online_clients().await
            }
            async fn join_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
                (**self).join_channel(ch, c).await
            }
            async fn leave_channel(&self, ch: &ChannelName, c: &[ClientId]) -> Result<()> {
                (**self).leave_channel(ch, c).await
            }
            async fn channel_members(&self, ch: &ChannelName) -> Result<Vec<ClientId>> {
                (**self).channel_members(ch).await
            }
            async fn channel_online(&self, ch: &ChannelName) -> Result<usize> {
                (**self).channel_online(ch).await
            }
            async fn client_channels(&self, c: &ClientId) -> Result<Vec<ChannelName>> {
                (**self).client_channels(c).await
            }
            async fn channels(&self) -> Result<Vec<ChannelInfo>> {
                (**self).channels().await
            }
            async fn ping(&self) -> Result<()> {
                (**self).ping().await
            }
        }
    };
}

forward_presence!(Arc<T>);
forward_presence!(Box<T>);
