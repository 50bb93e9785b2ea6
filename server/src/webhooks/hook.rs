//! One hook (what happened, when, its id) and the JSON a POST carries: `{"node", "events":
//! [...]}`, each event flat with `id`, `type`, `ts` and `client_id` (`docs/design.md`
//! section 17).

use impush_core::{ChannelName, ClientId, ConnectionId, Event, MessageId, NodeId};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::config::EventKind;

/// Something that happened, as queued for the endpoints that want it.
#[derive(Debug)]
pub(crate) struct Hook {
    /// Unique across the cluster and restarts: receivers drop a retried event they took.
    pub(crate) id: String,
    /// When it was queued, unix ms.
    pub(crate) ts: u64,
    /// When it was queued, for the retry window.
    pub(crate) queued: Instant,
    pub(crate) what: What,
}

/// The kind-specific part of a hook.
#[derive(Debug)]
pub(crate) enum What {
    Connection(Event),
    Stored {
        client: ClientId,
        message: MessageId,
        from: ClientId,
        message_ts: u64,
        /// Only when an endpoint asked for it (`include_data`).
        data: Option<Box<RawValue>>,
    },
    Membership {
        kind: EventKind,
        channel: ChannelName,
        client: ClientId,
    },
}

impl What {
    pub(crate) fn kind(&self) -> EventKind {
        match self {
            What::Connection(Event::Online { .. }) => EventKind::Online,
            What::Connection(Event::Offline { .. }) => EventKind::Offline,
            What::Stored { .. } => EventKind::Stored,
            What::Membership { kind, .. } => *kind,
        }
    }

    /// Whether it is a user arriving or leaving (`first`/`last`), not one more socket.
    pub(crate) fn is_first_or_last(&self) -> bool {
        match self {
            What::Connection(Event::Online { first, .. }) => *first,
            What::Connection(Event::Offline { last, .. }) => *last,
            _ => true,
        }
    }
}

/// One event of a POST body. Flat, with every field that does not apply left out.
#[derive(Debug, Serialize)]
struct Wire<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    ts: u64,
    client_id: &'a ClientId,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<&'a ConnectionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    moved: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a ChannelName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a ClientId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

impl<'a> Wire<'a> {
    fn of(h: &'a Hook, include_data: bool) -> Self {
        let mut w = Wire {
            id: &h.id,
            kind: h.what.kind().as_str(),
            ts: h.ts,
            client_id: match &h.what {
                What::Connection(e) => e.client(),
                What::Stored { client, .. } | What::Membership { client, .. } => client,
            },
            node: None,
            connection: None,
            metadata: None,
            first: None,
            last: None,
            moved: None,
            channel: None,
            message_id: None,
            from: None,
            message_ts: None,
            data: None,
        };
        match &h.what {
            What::Connection(Event::Online {
                node,
                connection,
                metadata,
                first,
                ..
            }) => {
                w.node = Some(node);
                w.connection = Some(connection);
                w.metadata = Some(metadata);
                w.first = Some(*first);
            }
            What::Connection(Event::Offline {
                node,
                connection,
                metadata,
                last,
                moved,
                ..
            }) => {
                w.node = Some(node);
                w.connection = Some(connection);
                w.metadata = Some(metadata);
                w.last = Some(*last);
                w.moved = Some(*moved);
            }
            What::Stored {
                message,
                from,
                message_ts,
                data,
                ..
            } => {
                w.message_id = Some(message);
                w.from = Some(from);
                w.message_ts = Some(*message_ts);
                w.data = data.as_deref().filter(|_| include_data);
            }
            What::Membership { channel, .. } => w.channel = Some(channel),
        }
        w
    }
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    /// The node that sent the POST.
    node: &'a NodeId,
    events: Vec<Wire<'a>>,
}

/// The JSON body of one POST.
pub(crate) fn body(node: &NodeId, hooks: &[std::sync::Arc<Hook>], include_data: bool) -> Vec<u8> {
    let body = Body {
        node,
        events: hooks.iter().map(|h| Wire::of(h, include_data)).collect(),
    };
    // Only strings, numbers and JSON already parsed: serialising cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    fn hook(what: What) -> Arc<Hook> {
        Arc::new(Hook {
            id: "n1-1-0".into(),
            ts: 5,
            queued: Instant::now(),
            what,
        })
    }

    #[test]
    fn offline_says_moved_and_stored_holds_data_only_when_asked() {
        let n1: NodeId = "n1".parse().unwrap();
        let offline = hook(What::Connection(Event::Offline {
            client: "alice".parse().unwrap(),
            node: n1.clone(),
            connection: "n1-1-7".parse().unwrap(),
            metadata: serde_json::Value::Null,
            last: true,
            moved: false,
        }));
        let stored = hook(What::Stored {
            client: "bob".parse().unwrap(),
            message: "m1".parse().unwrap(),
            from: "alice".parse().unwrap(),
            message_ts: 3,
            data: Some(RawValue::from_string("{\"t\":\"hi\"}".into()).unwrap()),
        });
        let hooks = [offline, stored];
        let v: serde_json::Value = serde_json::from_slice(&body(&n1, &hooks, false)).unwrap();
        assert_eq!(v["node"], "n1");
        let off = &v["events"][0];
        assert_eq!(off["type"], "offline");
        assert_eq!(off["moved"], false);
        assert_eq!(off["last"], true);
        assert_eq!(off["client_id"], "alice");
        assert!(off.get("first").is_none());
        let st = &v["events"][1];
        assert_eq!(st["type"], "stored");
        assert_eq!(st["client_id"], "bob");
        assert_eq!(st["message_id"], "m1");
        assert!(st.get("data").is_none());
        let v: serde_json::Value = serde_json::from_slice(&body(&n1, &hooks, true)).unwrap();
        assert_eq!(v["events"][1]["data"]["t"], "hi");
    }
}
