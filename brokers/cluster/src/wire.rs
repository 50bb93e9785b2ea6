//! What cluster presence instances say to each other on `{prefix}.presence` (one `Fanout`
//! topic: every instance reads everything and keeps what concerns it).
//!
//! State messages are published by the node that owns the state, so per-publisher ordering
//! (the broker contract) keeps each node's deltas in order. Requests and replies carry the
//! requesting instance's id; a node answers requests addressed to it or to every node.
//!
//! Membership changes carry a [`Stamp`] (when the instance that decided them made them) and
//! the requester's view of who is live (a digest): holders copy memberships to each other as
//! [`Record`]s, and a copy merges by the latest stamp whatever order it arrives in.

use impush_core::{ChannelName, ClientId, ConnectionId, DroppedConnection, NodeId};
use serde::{Deserialize, Serialize};

/// When a membership change was made: microseconds since the Unix epoch by the clock of the
/// instance that made it. 0 (from an instance that predates stamps) means "now, by the reader".
pub(crate) type Stamp = u64;

/// One client's memberships as a holder has them: the channels it joined and the leaves it
/// remembers, each with its stamp. What holders copy to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) client: ClientId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) joined: Vec<(ChannelName, Stamp)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) left: Vec<(ChannelName, Stamp)>,
    /// The client left every channel (its last connection went) at this stamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) left_all: Option<Stamp>,
}

impl Record {
    /// How much this record weighs in a batch: one per client plus one per channel named.
    pub(crate) fn weight(&self) -> usize {
        1 + self.joined.len() + self.left.len()
    }
}

/// One message on the presence topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Wire {
    /// A connection opened on `node`.
    Connected {
        node: NodeId,
        client: ClientId,
        connection: ConnectionId,
    },
    /// A connection closed on `node`; `cleared`: the client was left with none and leaves its
    /// channels (its owner drops the memberships).
    Disconnected {
        node: NodeId,
        client: ClientId,
        connection: ConnectionId,
        cleared: bool,
    },
    /// Everything `node` holds now (after a sync, or when asked because a view drifted).
    NodeState {
        node: NodeId,
        connections: Vec<(ClientId, ConnectionId)>,
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
    /// Record that `clients` (held by the node) joined `channel`. `at`: when; `view`: the
    /// digest of the requester's live view (a holder that sees the cluster otherwise passes
    /// the change on to the holders the requester may have missed).
    Join {
        channel: ChannelName,
        clients: Vec<ClientId>,
        #[serde(default)]
        at: Stamp,
        #[serde(default)]
        view: u64,
    },
    /// Record that `clients` (held by the node) left `channel`.
    Leave {
        channel: ChannelName,
        clients: Vec<ClientId>,
        #[serde(default)]
        at: Stamp,
        #[serde(default)]
        view: u64,
    },
    /// The clients in `channel` the node holds memberships of.
    ChannelMembers { channel: ChannelName },
    /// Member and online counts per channel of the clients the node owns now.
    ChannelCounts,
    /// The channels of `client` (held by the node).
    ClientChannels { client: ClientId },
    /// If `client` (held by the node) has no connection in the node's view, its memberships
    /// end; answered with whether they did.
    LeaveIfOffline {
        client: ClientId,
        #[serde(default)]
        at: Stamp,
        #[serde(default)]
        view: u64,
    },
    /// Keep these copies of memberships (another node hands them over); `view` as in `Join`.
    Copies { records: Vec<Record>, view: u64 },
    /// Hand `clients`' memberships to their other holders again (a requester saw one of them
    /// miss a change).
    HandOver { clients: Vec<ClientId> },
    /// The memberships `node` holds, or will when it is live (a node that started empty asks),
    /// of clients after `after`, one page.
    Reclaim {
        node: NodeId,
        after: Option<ClientId>,
    },
    /// What the answering node's view holds for `node` (a restarted node asks what it lost).
    ConnectionsOf { node: NodeId },
    /// Publish your `NodeState` (a view of you drifted or is being built).
    State,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// One page of memberships; `next`: ask again after this client for the rest.
    Records {
        records: Vec<Record>,
        next: Option<ClientId>,
    },
}
