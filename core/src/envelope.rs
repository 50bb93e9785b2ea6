//! What travels over the broker between helpers and nodes, and the topics it travels on.
//!
//! Four topics per cluster (`docs/design.md` section 3, "Topics"):
//! - `{prefix}.inbox.{node}`: [`NodeCommand`]s for one node, read as `Queue{group = node}` so that
//!   messages for a restarting node wait for it;
//! - `{prefix}.all`: [`ClusterCommand`]s every node acts on (channel messages, broadcasts,
//!   membership changes, re-announces of connections), read `Fanout`;
//! - `{prefix}.events`: [`Event`]s (online/offline) for the business, read by helpers;
//! - `{prefix}.presence`: only with `[presence] kind = "cluster"`, what the nodes tell each
//!   other about connections and memberships; its messages are defined by that store
//!   (`impush-presence-cluster`), not here.
//!
//! Payloads are JSON. The business `data` is carried as a [`RawValue`] so that a node copies it
//! into client frames without parsing it (and never double-encodes it).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ChannelName, ClientId, ConnectionId, Error, MessageId, NodeId, Result};

/// Topic names of one cluster, derived from the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    all: String,
    events: String,
}

impl Topics {
    /// Topics under `prefix` (config `broker.prefix`, default `impush`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            all: format!("{prefix}.all"),
            events: format!("{prefix}.events"),
        }
    }

    /// The inbox of `node`.
    pub fn inbox(&self, node: &NodeId) -> String {
        format!("{}{node}", self.inbox_prefix())
    }

    /// What every node's inbox topic starts with.
    pub fn inbox_prefix(&self) -> String {
        format!("{}.inbox.", self.prefix)
    }

    /// The cluster-wide command topic.
    pub fn all(&self) -> &str {
        &self.all
    }

    /// The online/offline event topic.
    pub fn events(&self) -> &str {
        &self.events
    }

    /// The prefix these topics were built from.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Delivery status reported to a message's sender (client protocol `receipt` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// Written to at least one of the receiver's connections.
    Delivered,
    /// The receiver is not connected (and the message was not stored).
    Offline,
    /// The receiver is offline; the message waits in the offline inbox.
    Stored,
    /// The receiver's client acknowledged the message.
    Acked,
}

impl ReceiptStatus {
    /// The status as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Offline => "offline",
            ReceiptStatus::Stored => "stored",
            ReceiptStatus::Acked => "acked",
        }
    }
}

/// A point-to-point message for the receivers one node owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deliver {
    /// Message id.
    pub id: MessageId,
    /// Sender client id (it need not be a connected client: "system" works).
    pub from: ClientId,
    /// The receivers owned by the node this is published to.
    pub to: Vec<ClientId>,
    /// Business payload, passed through verbatim.
    pub data: Box<RawValue>,
    /// Publish time, unix milliseconds.
    pub ts: u64,
    /// Whether the sender wants receipts.
    pub receipt: bool,
    /// Sent on by a node that got it for a receiver it does not hold and does not own (the
    /// sender's view of the cluster differed from that node's): the node it was sent on to
    /// never sends it further (`docs/design.md` section 16). Absent means `false`, so nodes of
    /// any version read each other's messages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forwarded: bool,
}

/// Where a channel or broadcast publication sits in its stream (`docs/design.md` section 15):
/// `offset` grows by one per publication within an `epoch`; the epoch names the sequencer
/// run that numbered it and changes when another one takes over (a new epoch starts at 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The publication's number in its epoch, from 1.
    pub offset: u64,
    /// The epoch, an opaque string.
    pub epoch: String,
}

/// A channel or broadcast publication on its way to its stream's sequencer (the live owner
/// of the stream, see `Cluster::stream_owner`), which numbers it and publishes it on
/// `{prefix}.all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    /// Message id.
    pub id: MessageId,
    /// The channel, or `None` for a broadcast.
    pub channel: Option<ChannelName>,
    /// Sender client id (channel messages only).
    pub from: Option<ClientId>,
    /// Business payload.
    pub data: Box<RawValue>,
    /// Publish time, unix milliseconds.
    pub ts: u64,
}

/// Commands addressed to one node, published on its inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeCommand {
    /// Push a message to local receivers.
    Deliver(Deliver),
    /// Several point-to-point messages for this node's receivers in one broker payload (a
    /// batch send, `ImHelper::send_messages`): each is delivered as if it came as its own
    /// [`NodeCommand::Deliver`], and the payload is acknowledged once every one of them
    /// settled. A node that predates this variant cannot decode it (it drops it as
    /// undecodable), so upgrade nodes before the helpers that send batches.
    DeliverMany(Vec<Deliver>),
    /// Tell the sender (a client of this node) how delivery of its message went to some
    /// receivers: one status for all of them (a receipt frame lists them all).
    Receipt {
        /// The message the receipt is about.
        id: MessageId,
        /// The sender, owned by this node.
        sender: ClientId,
        /// The receivers the status is about.
        to: Vec<ClientId>,
        /// What happened to the message for them.
        status: ReceiptStatus,
    },
    /// Close every connection of `client` with 4001.
    Kick {
        /// The client to disconnect.
        client: ClientId,
    },
    /// Number a channel or broadcast publication and publish it to every node (this node is
    /// its stream's sequencer).
    Publish(Publication),
    /// Another node stored messages for `client` in the shared offline inbox while the client
    /// may be connected here (ownership was moving): push its inbox to its sockets here.
    Drain {
        /// The client.
        client: ClientId,
    },
}

/// Commands every node acts on, published on `{prefix}.all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterCommand {
    /// A channel message: each node delivers it to its local members.
    Channel {
        /// Message id.
        id: MessageId,
        /// The channel.
        channel: ChannelName,
        /// Sender client id.
        from: ClientId,
        /// Business payload.
        data: Box<RawValue>,
        /// Publish time, unix milliseconds.
        ts: u64,
        /// Its place in the channel's stream, when history is kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<Position>,
    },
    /// A message for every connected client.
    Broadcast {
        /// Message id.
        id: MessageId,
        /// Business payload.
        data: Box<RawValue>,
        /// Publish time, unix milliseconds.
        ts: u64,
        /// Its place in the broadcast stream, when history is kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<Position>,
    },
    /// Clients joined a channel (already recorded in the presence store).
    Joined {
        /// The channel.
        channel: ChannelName,
        /// Who joined.
        clients: Vec<ClientId>,
    },
    /// Clients left a channel (already recorded in the presence store).
    Left {
        /// The channel.
        channel: ChannelName,
        /// Who left.
        clients: Vec<ClientId>,
    },
    /// An offline event saying `last` went out for these clients while they had a connection
    /// (a new one crossed it): each node holding a connection of theirs announces it online
    /// again, after that `last` (`docs/design.md` section 16, "Events").
    Reannounce {
        /// The clients.
        clients: Vec<ClientId>,
    },
}

/// An online/offline event, as published on `{prefix}.events` and streamed by `ImHelper::events()`.
///
/// `first`/`last` tell whether the connection is the client's first/last one, so a business can
/// track users rather than sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A connection opened.
    Online {
        /// The client.
        #[serde(rename = "client_id")]
        client: ClientId,
        /// The node holding the connection.
        node: NodeId,
        /// The connection.
        connection: ConnectionId,
        /// Metadata given to `prepare_connect` (JSON `null` when none).
        #[serde(default)]
        metadata: serde_json::Value,
        /// This is the client's only connection now.
        first: bool,
    },
    /// A connection closed.
    Offline {
        /// The client.
        #[serde(rename = "client_id")]
        client: ClientId,
        /// The node that held the connection.
        node: NodeId,
        /// The connection.
        connection: ConnectionId,
        /// Metadata given to `prepare_connect` (JSON `null` when none).
        #[serde(default)]
        metadata: serde_json::Value,
        /// The client has no connection left.
        last: bool,
        /// The node closed the connection to move the client to another node (drain or
        /// return home, `docs/design.md` section 16): the client reconnects at once, so this
        /// event comes after its new connection's online (`first: false`) unless it never came
        /// back within `cluster.move_grace`. Omitted when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        moved: bool,
    },
}

impl Event {
    /// The client the event is about.
    pub fn client(&self) -> &ClientId {
        match self {
            Event::Online { client, .. } | Event::Offline { client, .. } => client,
        }
    }

    /// `"online"` or `"offline"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Online { .. } => "online",
            Event::Offline { .. } => "offline",
        }
    }
}

/// Encodes a broker payload as JSON.
///
/// # Errors
/// [`Error::Codec`] if serialisation fails (it does not for the types in this module).
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<bytes::Bytes> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|e| Error::codec(what, e))
}

/// Decodes a broker payload.
///
/// # Errors
/// [`Error::Codec`] if the payload is not a valid `T`.
pub fn decode<T: serde::de::DeserializeOwned>(what: &'static str, payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| Error::codec(what, e))
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_round_trips_raw_data_verbatim() {
        let cmd = NodeCommand::Deliver(Deliver {
            id: MessageId::generate(),
            from: ClientId::new("bob").unwrap(),
            to: vec![ClientId::new("alice").unwrap()],
            data: RawValue::from_string(r#"{"text":"hi","n":[1,2]}"#.into()).unwrap(),
            ts: 1,
            receipt: true,
            forwarded: false,
        });
        let bytes = encode("cmd", &cmd).unwrap();
        let back: NodeCommand = decode("cmd", &bytes).unwrap();
        let NodeCommand::Deliver(d) = back else {
            panic!("wrong variant")
        };
        assert_eq!(d.data.get(), r#"{"text":"hi","n":[1,2]}"#);
    }

    #[test]
    fn deliver_many_is_a_new_variant_beside_the_old_ones() {
        let one = |to: &str| Deliver {
            id: MessageId::new(format!("m-{to}")).unwrap(),
            from: ClientId::new("shop").unwrap(),
            to: vec![ClientId::new(to).unwrap()],
            data: RawValue::from_string(format!(r#"{{"for":"{to}"}}"#)).unwrap(),
            ts: 7,
            receipt: false,
            forwarded: false,
        };
        let bytes = encode("cmd", &NodeCommand::DeliverMany(vec![one("a"), one("b")])).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(r#"{"deliver_many":[{"id":"m-a","#),
            "{text}"
        );
        let NodeCommand::DeliverMany(back) = decode("cmd", &bytes).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].data.get(), r#"{"for":"b"}"#);
        // The single form is unchanged: what older helpers publish still decodes.
        let old = br#"{"deliver":{"id":"m1","from":"bob","to":["alice"],"data":1,"ts":1,"receipt":true}}"#;
        let NodeCommand::Deliver(d) = decode("cmd", old).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(d.to, vec![ClientId::new("alice").unwrap()]);
    }

    #[test]
    fn event_json_uses_client_id() {
        let ev = Event::Offline {
            client: ClientId::new("a").unwrap(),
            node: NodeId::new("n1").unwrap(),
            connection: ConnectionId::new("n1-1").unwrap(),
            metadata: serde_json::Value::Null,
            last: true,
            moved: false,
        };
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "offline");
        assert_eq!(v["client_id"], "a");
        assert_eq!(v["last"], true);
    }
}
