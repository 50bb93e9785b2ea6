//! The client protocol of `docs/design.md` section 4: frames a node writes to WebSocket clients and
//! the two frames clients may send.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ChannelName, ClientId, MessageId, ReceiptStatus};

/// A frame from server to client, serialised to one JSON text frame.
///
/// Borrowing keeps serialisation allocation-free apart from the output buffer; `data` is written
/// verbatim.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// A point-to-point message.
    Message {
        /// Message id (what the client acks).
        id: &'a MessageId,
        /// Sender.
        from: &'a ClientId,
        /// Business payload.
        data: &'a RawValue,
        /// Publish time, unix milliseconds.
        ts: u64,
        /// Whether the sender asked for a receipt (the client should ack).
        receipt: bool,
        /// Pushed from the offline inbox (sent while the client was away); omitted when false.
        #[serde(skip_serializing_if = "is_false")]
        stored: bool,
        /// Pushed again: it was written to one of this client's sockets before, which closed
        /// before the client acked it; omitted when false.
        #[serde(skip_serializing_if = "is_false")]
        redelivered: bool,
        /// The client must ack it: it stays pending, and is pushed again after a dropped link,
        /// until acked (offline inbox on with `require_ack`); omitted when false.
        #[serde(skip_serializing_if = "is_false")]
        ack: bool,
    },
    /// A channel message.
    Channel {
        /// Message id.
        id: &'a MessageId,
        /// Channel name.
        channel: &'a ChannelName,
        /// Sender.
        from: &'a ClientId,
        /// Business payload.
        data: &'a RawValue,
        /// Publish time, unix milliseconds.
        ts: u64,
        /// Its number in the channel's stream (with `epoch`), when the node keeps history.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The stream's epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// A broadcast to everyone.
    Broadcast {
        /// Message id.
        id: &'a MessageId,
        /// Business payload.
        data: &'a RawValue,
        /// Publish time, unix milliseconds.
        ts: u64,
        /// Its number in the broadcast stream (with `epoch`), when the node keeps history.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The stream's epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// How a resume request went for one stream (`docs/design.md` section 15): sent after the
    /// stream's replayed frames, or alone when it could not be recovered.
    Resume {
        /// The channel, `None` for the broadcast stream or a request that could not be read.
        channel: Option<&'a ChannelName>,
        /// Set for the broadcast stream.
        #[serde(skip_serializing_if = "is_false")]
        broadcast: bool,
        /// Whether every missed publication was replayed.
        recovered: bool,
        /// How many publications were replayed (when recovered).
        #[serde(skip_serializing_if = "Option::is_none")]
        replayed: Option<usize>,
        /// Why not (when not recovered): `window`, `epoch`, `future`, `not_member`, `too_many`,
        /// `malformed`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// A delivery receipt for a message this client sent: one status for all the receivers a
    /// node settled together.
    Receipt {
        /// The message.
        id: &'a MessageId,
        /// The receivers the status is about.
        to: &'a [ClientId],
        /// What happened.
        status: ReceiptStatus,
    },
    /// Answer to a client `ping`.
    Pong,
}

// serde's skip_serializing_if wants a function of a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these borrowed shapes into a String cannot fail: every field is a string,
        // a number, a bool or already-valid JSON.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A frame a client may send. Anything else is ignored (and counted) by the node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// Application-level ping; answered with `{"type":"pong"}`.
    Ping,
    /// Acknowledges a message; its sender gets a receipt with status `acked`.
    Ack {
        /// The message id.
        id: MessageId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_passes_data_through() {
        let id = MessageId::new("m1").unwrap();
        let from = ClientId::new("bob").unwrap();
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let json = ServerFrame::Message {
            id: &id,
            from: &from,
            data: &data,
            ts: 5,
            receipt: true,
            stored: false,
            redelivered: false,
            ack: false,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"message","id":"m1","from":"bob","data":{"text":"hi"},"ts":5,"receipt":true}"#
        );
        let stored = ServerFrame::Message {
            id: &id,
            from: &from,
            data: &data,
            ts: 5,
            receipt: false,
            stored: true,
            redelivered: false,
            ack: false,
        }
        .to_json();
        assert_eq!(
            stored,
            r#"{"type":"message","id":"m1","from":"bob","data":{"text":"hi"},"ts":5,"receipt":false,"stored":true}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        let to = [ClientId::new("a").unwrap(), ClientId::new("b").unwrap()];
        let receipt = ServerFrame::Receipt {
            id: &id,
            to: &to,
            status: ReceiptStatus::Delivered,
        };
        assert_eq!(
            receipt.to_json(),
            r#"{"type":"receipt","id":"m1","to":["a","b"],"status":"delivered"}"#
        );
    }

    #[test]
    fn client_frames_parse() {
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        let ack: ClientFrame = serde_json::from_str(r#"{"type":"ack","id":"m1"}"#).unwrap();
        assert_eq!(
            ack,
            ClientFrame::Ack {
                id: MessageId::new("m1").unwrap()
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"send"}"#).is_err());
    }
}
