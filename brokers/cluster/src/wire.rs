//! What cluster presence instances say to each other on `{prefix}.presence` (one `Fanout`
//! topic: every instance reads everything and keeps what concerns it).
//!
//! State messages are published by the node that owns the state, so per-publisher ordering
//! (the broker contract) keeps each node's deltas in order. Its full state is another matter:
//! taken at one moment and published by another task, it can reach the feed after a change
//! made after it, and applied then it would undo that change (a connection the others never
//! hear of again, so never announce gone). Each change and each full state therefore carries
//! the node's change counter (`seq`), and a reader drops a state older than a change it has
//! applied. Requests and replies carry the requesting instance's id; a node answers requests
//! addressed to it or to every node.

use impush_core::{ChannelName, ClientId, ConnectionId, DroppedConnection, NodeId};
use serde::{Deserialize, Serialize};

/// One message on the presence topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Wire {
    /// A connection opened on `node`.
    Connected {
        node: NodeId,
        client: ClientId,
        connection: ConnectionId,
        /// The node's change counter after this change (0 from nodes that predate it).
        #[serde(default)]
        seq: u64,
    },
    /// A connection closed on `node`; `cleared`: the client was left with none and leaves its
    /// channels (its owner drops the memberships).
    Disconnected {
        node: NodeId,
        client: ClientId,
        connection: ConnectionId,
        cleared: bool,
        /// The node's change counter after this change (0 from nodes that predate it).
        #[serde(default)]
        seq: u64,
    },
    /// Everything `node` holds now (after a sync, or when asked because a view drifted).
    NodeState {
        node: NodeId,
        connections: Vec<(ClientId, ConnectionId)>,
        /// The node's change counter when the state was taken: it holds every change up to
        /// this one (0 from nodes that predate it).
        #[serde(default)]
        seq: u64,
    },
    /// Connections of `node` that are gone without their node saying so: reaped by `by`
    /// after the node's lease ran out, or cleared by the node itself at start-up.
    Dropped {
        node: NodeId,
        by: NodeId,
        dropped: Vec<DroppedConnection>,
        clear: bool,
    },
    /// `node` is alive for `lease_ms` more; `digest` and `count` summarise its connections so
    /// a reader whose view of the node drifted (a lost delta) asks for its state.
    Heartbeat {
        node: NodeId,
        lease_ms: u64,
        count: u64,
        digest: u64,
        /// The node is draining (`docs/design.md` section 16): alive, but no client is handed
        /// to it. Absent (false) from nodes that predate it.
        #[serde(default)]
        draining: bool,
    },
    /// A question for `to` (one node) or every node (`None`).
    Request {
        rid: u64,
        from: String,
        to: Option<NodeId>,
        query: Query,
    },
    /// A node's answer to request `rid` of instance `to`.
    Reply {
        rid: u64,
        to: String,
        node: NodeId,
        reply: Reply,
    },
    /// Published by `from` after its writes; a reader that sees it has seen those writes.
    Barrier { from: String, token: u64 },
}

/// What a request asks a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub(crate) enum Query {
    /// Record that `clients` (kept by the node) joined `channel`.
    Join {
        channel: ChannelName,
        clients: Vec<ClientId>,
    },
    /// Record that `clients` (kept by the node) left `channel`.
    Leave {
        channel: ChannelName,
        clients: Vec<ClientId>,
    },
    /// The node's clients in `channel`.
    ChannelMembers { channel: ChannelName },
    /// Member and online counts per channel of the clients the node answers for.
    ChannelCounts,
    /// The channels of `client` (kept by the node).
    ClientChannels { client: ClientId },
    /// If `client` (kept by the node) has no connection in the node's view, its memberships
    /// end; answered with whether they did.
    LeaveIfOffline { client: ClientId },
    /// What the answering node's view holds for `node` (a restarted node asks what it lost).
    ConnectionsOf { node: NodeId },
    /// The memberships the answering node keeps with `node` (a node that restarted, or was
    /// counted dead, takes the copy of the keeper that was alive meanwhile).
    KeptWith { node: NodeId },
    /// Publish your `NodeState` (a view of you drifted or is being built).
    State,
}

/// A node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub(crate) enum Reply {
    Done,
    Clients {
        clients: Vec<ClientId>,
    },
    Channels {
        channels: Vec<ChannelName>,
    },
    Counts {
        counts: Vec<(ChannelName, usize, usize)>,
    },
    Connections {
        connections: Vec<(ClientId, ConnectionId)>,
    },
    Left {
        left: bool,
    },
    Kept {
        memberships: Vec<(ClientId, Vec<ChannelName>)>,
    },
}
