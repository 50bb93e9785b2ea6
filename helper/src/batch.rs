//! Batch sends ([`ImHelper::send_messages`]): many point-to-point messages at once, each with
//! its own sender, receivers, data and receipt flag, published as few broker payloads as
//! possible.
//!
//! The receivers of every message are grouped by owner node, as for a lone message, and each
//! node gets its share of the whole batch in one `NodeCommand::DeliverMany` payload (more than
//! one when its share is large: at most [`BATCH_PAYLOAD_MESSAGES`] messages and about
//! [`BATCH_PAYLOAD_BYTES`] bytes per payload, under the 1 MB message limit several brokers
//! default to). A notification to 1,000 users of one node is one publish, not 1,000. The node
//! delivers each message as if it came alone and acknowledges the payload once every one of
//! them settled (`docs/design.md` section 6).

use std::collections::HashSet;

use impush_core::{
    envelope::{self, Deliver, NodeCommand},
    ClientId, Error, MessageId, NodeId, Result,
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{to_raw, ImHelper, SendReport};

/// Most messages in one broker payload of a batch send.
pub const BATCH_PAYLOAD_MESSAGES: usize = 1000;

/// About the most bytes of one broker payload of a batch send; a single message larger than
/// this travels alone.
pub const BATCH_PAYLOAD_BYTES: usize = 512 * 1024;

/// One message of a batch send ([`ImHelper::send_messages`]).
///
/// ```
/// # fn demo() -> impush_helper::Result<()> {
/// use impush_helper::{IdempotencyKey, OutgoingMessage};
/// let alice = "alice".parse()?;
/// let m = OutgoingMessage::new("shop".parse()?, vec![alice], &serde_json::json!({"order": 7}))?
///     .with_receipt(true)
///     .with_id(IdempotencyKey::new("order-7-shipped")?.message_id());
/// assert!(m.receipt);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The message's id: give one (from an [`IdempotencyKey`](crate::IdempotencyKey), or your
    /// own) to make retrying it safe; `None` generates one.
    pub id: Option<MessageId>,
    /// The sender (it need not be a connected client).
    pub from: ClientId,
    /// The receivers; a receiver listed twice gets the message once.
    pub to: Vec<ClientId>,
    /// The business payload, as JSON text.
    pub data: Box<RawValue>,
    /// Whether the sender's connections get receipts.
    pub receipt: bool,
}

impl OutgoingMessage {
    /// A message of `data` (any `Serialize`), without receipts and with a generated id.
    ///
    /// # Errors
    /// [`Error::Codec`] if `data` cannot be serialised.
    pub fn new<T: Serialize + ?Sized>(from: ClientId, to: Vec<ClientId>, data: &T) -> Result<Self> {
        Ok(Self::raw(from, to, to_raw(data)?))
    }

    /// A message of `data` already as JSON text.
    pub fn raw(from: ClientId, to: Vec<ClientId>, data: Box<RawValue>) -> Self {
        Self {
            id: None,
            from,
            to,
            data,
            receipt: false,
        }
    }

    /// Asks for receipts (or not).
    pub fn with_receipt(mut self, receipt: bool) -> Self {
        self.receipt = receipt;
        self
    }

    /// Names the message: sending it again with the same id within
    /// `limits.idempotency_window` does not deliver it twice.
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = Some(id);
        self
    }
}

/// The payloads bound for one node, the last one still filling.
struct NodeShare<'a> {
    node: &'a NodeId,
    payloads: Payloads,
}

/// Payloads filled in order: a new one starts when the last is full.
#[derive(Default)]
struct Payloads(Vec<Payload>);

/// One broker payload: its messages (parts for this node) and which of the batch they are.
#[derive(Default)]
struct Payload {
    list: Vec<Deliver>,
    bytes: usize,
    messages: Vec<usize>,
}

impl Payloads {
    fn add(&mut self, message: usize, d: Deliver) {
        let size = estimate(&d);
        let full = |p: &Payload| {
            p.list.len() >= BATCH_PAYLOAD_MESSAGES
                || (!p.list.is_empty() && p.bytes + size > BATCH_PAYLOAD_BYTES)
        };
        if self.0.last().is_none_or(full) {
            self.0.push(Payload::default());
        }
        if let Some(p) = self.0.last_mut() {
            p.bytes += size;
            p.list.push(d);
            p.messages.push(message);
        }
    }
}

impl Payload {
    /// The command it is published as: `Deliver` for one message, `DeliverMany` for more.
    fn command(mut self) -> NodeCommand {
        match self.list.len() {
            1 => NodeCommand::Deliver(self.list.remove(0)),
            _ => NodeCommand::DeliverMany(self.list),
        }
    }
}

/// Messages bound for one node, in order, as the commands a batch send publishes to it: at
/// most [`BATCH_PAYLOAD_MESSAGES`] messages and about [`BATCH_PAYLOAD_BYTES`] bytes each (a
/// `Deliver` when one message is alone), in order. A node hands a client's stored messages
/// over to its owner this way: one publish per payload, not per message.
pub fn node_payloads(list: Vec<Deliver>) -> Vec<NodeCommand> {
    let mut payloads = Payloads::default();
    for (i, d) in list.into_iter().enumerate() {
        payloads.add(i, d);
    }
    payloads.0.into_iter().map(Payload::command).collect()
}

/// About how many bytes `d` takes in a payload.
fn estimate(d: &Deliver) -> usize {
    let receivers: usize = d.to.iter().map(|c| c.as_str().len() + 3).sum();
    d.data.get().len() + d.id.as_str().len() + d.from.as_str().len() + receivers + 64
}

/// An error for every message of a failed payload (the error is not `Clone`; its kind and text
/// are kept, so `is_transient` answers alike).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Unavailable { backend, source } => Error::Unavailable {
            backend,
            source: source.as_ref().map(|s| s.to_string().into()),
        },
        Error::Closed(what) => Error::Closed(what),
        other => Error::Backend {
            backend: "broker",
            source: other.to_string().into(),
        },
    }
}

impl ImHelper {
    /// Sends many point-to-point messages at once, each with its own sender, receivers, data,
    /// receipt flag and (optionally) id, as [`ImHelper::send_message`] would one by one, but
    /// publishing as few broker payloads as it can: the receivers of every message are grouped
    /// by owner node, and each node gets its share of the batch in one payload (see
    /// [`BATCH_PAYLOAD_MESSAGES`] and [`BATCH_PAYLOAD_BYTES`]). Messages from one sender to
    /// one receiver arrive in the order they are listed.
    ///
    /// Returns one result per message, in order: its [`SendReport`], or the broker error that
    /// kept it from one of its receivers' nodes (some of its receivers may have it then;
    /// resending it with the same id reaches the rest and none twice, so give ids to the
    /// messages you may retry). After a failed publish to a node, the later payloads for that
    /// node are not tried and their messages fail too.
    ///
    /// Every node the batch reaches must know `DeliverMany` (this version or later): upgrade
    /// nodes before helpers.
    ///
    /// ```no_run
    /// # async fn demo(helper: impush_helper::ImHelper) -> impush_helper::Result<()> {
    /// use impush_helper::OutgoingMessage;
    /// let users: Vec<impush_core::ClientId> = impush_core::parse_all(&["alice", "bob"])?;
    /// let batch = users
    ///     .iter()
    ///     .map(|u| OutgoingMessage::new("system".parse()?, vec![u.clone()], &format!("hi {u}")))
    ///     .collect::<impush_helper::Result<Vec<_>>>()?;
    /// for (user, result) in users.iter().zip(helper.send_messages(batch).await?) {
    ///     if let Err(e) = result {
    ///         eprintln!("{user}: {e}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first message with no receivers; then nothing is
    /// published.
    pub async fn send_messages(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<SendReport>>> {
        if let Some(i) = messages.iter().position(|m| m.to.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "message {i} of the batch has no receivers"
            )));
        }
        let ts = envelope::now_ms();
        let cluster = &self.inner.cluster;
        let mut shares: Vec<NodeShare<'_>> = Vec::new();
        let mut reports: Vec<(MessageId, usize)> = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let id = m.id.unwrap_or_else(MessageId::generate);
            let parts = parts_by_owner(m.to, |c| &cluster.owner(c).id);
            reports.push((id.clone(), parts.len()));
            let last = parts.len().saturating_sub(1);
            let mut data = Some(m.data);
            for (n, (node, to)) in parts.into_iter().enumerate() {
                let data = if n == last { data.take() } else { data.clone() };
                let Some(data) = data else { break };
                let d = Deliver {
                    id: id.clone(),
                    from: m.from.clone(),
                    to,
                    data,
                    ts,
                    receipt: m.receipt,
                    forwarded: false,
                };
                match shares.iter_mut().find(|s| s.node == node) {
                    Some(s) => s.payloads.add(i, d),
                    None => {
                        let mut s = NodeShare {
                            node,
                            payloads: Payloads::default(),
                        };
                        s.payloads.add(i, d);
                        shares.push(s);
                    }
                }
            }
        }
        // Nodes at once; one node's payloads in order, so a node gets a sender's messages in
        // the order they were listed.
        let failures = futures_util::future::join_all(shares.into_iter().map(|s| async move {
            let topic = self.topics.inbox(s.node);
            let mut failed: Option<Error> = None;
            let mut out = Vec::new();
            for mut p in s.payloads.0 {
                let messages = std::mem::take(&mut p.messages);
                if let Some(e) = &failed {
                    out.push((messages, copy_error(e)));
                    continue;
                }
                let cmd = p.command();
                let published = match envelope::encode("command", &cmd) {
                    Ok(payload) => self.inner.broker.publish(&topic, payload).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = published {
                    out.push((messages, copy_error(&e)));
                    failed = Some(e);
                }
            }
            out
        }))
        .await;
        let mut results: Vec<Result<SendReport>> = reports
            .into_iter()
            .map(|(id, nodes)| Ok(SendReport { id, nodes }))
            .collect();
        for (indexes, e) in failures.into_iter().flatten() {
            for i in indexes {
                if let Some(r) = results.get_mut(i) {
                    if r.is_ok() {
                        *r = Err(copy_error(&e));
                    }
                }
            }
        }
        Ok(results)
    }
}

/// `to` grouped by owner node, duplicates dropped, in order of first appearance.
fn parts_by_owner<'a>(
    to: Vec<ClientId>,
    owner: impl Fn(&ClientId) -> &'a NodeId,
) -> Vec<(&'a NodeId, Vec<ClientId>)> {
    if let [one] = to.as_slice() {
        // The common case (a notification per user): no set, no copy of the list.
        let node = owner(one);
        return vec![(node, to)];
    }
    let mut parts: Vec<(&NodeId, Vec<ClientId>)> = Vec::new();
    let mut seen = HashSet::with_capacity(to.len());
    for client in to {
        if seen.contains(&client) {
            continue;
        }
        seen.insert(client.clone());
        let node = owner(&client);
        match parts.iter_mut().find(|(n, _)| *n == node) {
            Some((_, list)) => list.push(client),
            None => parts.push((node, vec![client])),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn c(s: &str) -> ClientId {
        s.parse().unwrap()
    }

    fn deliver(bytes: usize) -> Deliver {
        Deliver {
            id: MessageId::generate(),
            from: c("s"),
            to: vec![c("r")],
            data: RawValue::from_string(format!("\"{}\"", "x".repeat(bytes))).unwrap(),
            ts: 1,
            receipt: false,
            forwarded: false,
        }
    }

    #[test]
    fn payloads_are_bounded_in_messages_and_bytes() {
        let mut s = Payloads::default();
        for i in 0..BATCH_PAYLOAD_MESSAGES + 1 {
            s.add(i, deliver(1));
        }
        let sizes: Vec<usize> = s.0.iter().map(|p| p.list.len()).collect();
        assert_eq!(sizes, vec![BATCH_PAYLOAD_MESSAGES, 1]);

        let mut s = Payloads::default();
        let big = BATCH_PAYLOAD_BYTES / 3;
        for i in 0..4 {
            s.add(i, deliver(big));
        }
        s.add(4, deliver(BATCH_PAYLOAD_BYTES * 2)); // too large for any payload: alone
        let sizes: Vec<usize> = s.0.iter().map(|p| p.list.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(s.0[2].messages, vec![4]);
        for p in &s.0 {
            let encoded = envelope::encode("t", &NodeCommand::DeliverMany(p.list.clone()))
                .unwrap()
                .len();
            assert!(
                p.list.len() == 1 || encoded <= BATCH_PAYLOAD_BYTES,
                "{encoded} bytes"
            );
            assert!(p.bytes >= encoded - 32, "estimate {} < {encoded}", p.bytes);
        }
    }

    #[test]
    fn a_nodes_messages_become_few_payloads_in_order() {
        let list: Vec<Deliver> = (0..2 * BATCH_PAYLOAD_MESSAGES + 1)
            .map(|_| deliver(1))
            .collect();
        let ids: Vec<MessageId> = list.iter().map(|d| d.id.clone()).collect();
        let commands = node_payloads(list);
        let mut seen = Vec::new();
        let mut kinds = Vec::new();
        for cmd in commands {
            match cmd {
                NodeCommand::DeliverMany(l) => {
                    kinds.push(l.len());
                    seen.extend(l.into_iter().map(|d| d.id));
                }
                NodeCommand::Deliver(d) => {
                    kinds.push(0);
                    seen.push(d.id);
                }
                _ => unreachable!(),
            }
        }
        // A lone message travels as a plain `Deliver` (0 here).
        assert_eq!(
            kinds,
            vec![BATCH_PAYLOAD_MESSAGES, BATCH_PAYLOAD_MESSAGES, 0]
        );
        assert_eq!(seen, ids);
        assert!(node_payloads(Vec::new()).is_empty());
    }

    #[test]
    fn receivers_are_grouped_by_owner_once_each() {
        let (n1, n2): (NodeId, NodeId) = ("n1".parse().unwrap(), "n2".parse().unwrap());
        let owner = |x: &ClientId| {
            if x.as_str().starts_with('a') {
                &n1
            } else {
                &n2
            }
        };
        let parts = parts_by_owner(vec![c("a1"), c("b1"), c("a2"), c("a1"), c("b1")], owner);
        assert_eq!(
            parts,
            vec![(&n1, vec![c("a1"), c("a2")]), (&n2, vec![c("b1")])]
        );
        assert_eq!(
            parts_by_owner(vec![c("b9")], owner),
            vec![(&n2, vec![c("b9")])]
        );
    }

    #[test]
    fn copied_errors_keep_their_kind() {
        let e = Error::Unavailable {
            backend: "redis",
            source: Some("connection refused".into()),
        };
        let copy = copy_error(&e);
        assert!(copy.is_transient());
        assert!(matches!(
            copy,
            Error::Unavailable {
                backend: "redis",
                ..
            }
        ));
        assert!(!copy_error(&Error::InvalidArgument("x".into())).is_transient());
    }
}
