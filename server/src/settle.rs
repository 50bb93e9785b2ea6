//! How a point-to-point message ends on this node: [`Settlement`] follows one inbox message
//! until every frame of it was written to a socket or dropped, then reports a [`Settled`]
//! outcome (who got it, who was offline) carrying the broker acknowledgement.
//!
//! This is what makes the inbox at-least-once and `delivered` truthful: the node acknowledges an
//! inbox message to the broker only once the outcome is known, and `delivered` means a frame was
//! written (handed to the kernel), not merely queued. Each queued frame carries a
//! [`FrameToken`]; writing it marks the receiver delivered, and dropping it unwritten (the socket
//! closed, the queue overflowed) counts as not delivered. Tokens settle on drop, so every path
//! out of a session settles exactly once.
//!
//! Sessions also report client acks and written offline-inbox frames here
//! ([`ClientReport`]), so this module is all a session needs to know about receipts.
//!
//! A receiver may ack a frame before its message settled (other receivers' frames are still
//! queued): [`Settlement::acked_early`] records it, so the settled outcome lists it and the
//! node does not keep, as pending, a message the device already acked (`docs/design.md`
//! section 15).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use impush_core::{Acker, ClientId, MessageId, StoredMessage};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Orders settlements and connections on this node: a connection whose mark is above a
/// settlement's attached after that message was delivered live, so it did not get it then
/// (`Node::settle_with_inbox` pushes it from the inbox to those only).
static MARKS: AtomicU64 = AtomicU64::new(1);

/// The next mark (see [`MARKS`]).
pub(crate) fn next_mark() -> u64 {
    MARKS.fetch_add(1, Ordering::Relaxed)
}

/// The outcome of one inbox message on this node.
#[derive(Debug)]
pub(crate) struct Settled {
    pub(crate) id: MessageId,
    pub(crate) sender: ClientId,
    /// Whether the sender asked for receipts.
    pub(crate) receipt: bool,
    /// The message itself, for the offline inbox of the receivers that did not get it.
    pub(crate) data: Box<RawValue>,
    pub(crate) ts: u64,
    /// Its mark (see [`next_mark`]): connections with a higher one came after it.
    pub(crate) mark: u64,
    /// Receivers with a frame written on at least one socket.
    pub(crate) delivered: Vec<ClientId>,
    /// Receivers with a socket here none of which took the frame (they closed first).
    pub(crate) undelivered: Vec<ClientId>,
    /// Receivers with no socket here when it arrived, for whom it was kept in the offline
    /// inbox at once (see `node::delivery`)...
    pub(crate) kept: Vec<ClientId>,
    /// ...or could not be (too large, expired).
    pub(crate) not_kept: Vec<ClientId>,
    /// Delivered receivers whose client acked before the message settled.
    pub(crate) acked: Vec<ClientId>,
    /// Acknowledges the inbox delivery; call it once the outcome is acted upon.
    pub(crate) acker: Acker,
}

impl Settled {
    /// The message as the offline inbox keeps it.
    pub(crate) fn stored(&self) -> StoredMessage {
        StoredMessage {
            id: self.id.clone(),
            from: self.sender.clone(),
            data: self.data.clone(),
            ts: self.ts,
            receipt: self.receipt,
            written: false,
        }
    }
}

/// What a session tells the node about a frame it handled.
#[derive(Debug)]
pub(crate) enum ClientReport {
    /// The client acknowledged message `id` from `sender` (a `{"type":"ack"}` frame).
    Acked {
        id: MessageId,
        sender: ClientId,
        receiver: ClientId,
        /// The sender wants receipts.
        receipt: bool,
        /// The message may be kept in the offline inbox (it came from there, or was kept as
        /// pending once written): the ack removes it there.
        remove: bool,
    },
    /// A frame from the offline inbox was written to the socket.
    StoredWritten {
        id: MessageId,
        sender: ClientId,
        receiver: ClientId,
        receipt: bool,
    },
}

/// A frame pushed from the offline inbox: what to report once it is written or acked.
#[derive(Debug, Clone)]
pub(crate) struct StoredFrame {
    pub(crate) id: MessageId,
    pub(crate) sender: ClientId,
    pub(crate) receipt: bool,
}

/// What rides with a queued frame whose fate matters.
#[derive(Debug)]
pub(crate) enum Tracked {
    /// A live point-to-point message: settles it.
    Live(FrameToken),
    /// A message from the offline inbox.
    Stored(StoredFrame),
}

/// Where sessions and settlements report to (the node's receipts task).
#[derive(Debug, Clone)]
pub(crate) struct Outcomes {
    pub(crate) settled: mpsc::UnboundedSender<Settled>,
    pub(crate) reports: mpsc::UnboundedSender<ClientReport>,
}

/// What became of a message for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Nothing yet (or its frames were all dropped).
    Open,
    /// A frame was written to one of its sockets.
    Written,
    /// It had no socket here and the message was kept in its offline inbox...
    Kept,
    /// ...or could not be.
    NotKept,
    /// It had no socket here and was sent on to its owner, which reports it (receipts,
    /// inbox) as if it had come there first.
    Forwarded,
}

#[derive(Debug)]
struct Progress {
    /// Tokens not yet written or dropped, plus one while frames are being queued.
    open: usize,
    /// Per receiver (index into `receivers`): what became of the message, and whether the
    /// client acked it already.
    fate: Vec<Fate>,
    acked: Vec<bool>,
    acker: Option<Acker>,
}

/// One inbox message being delivered to local sockets.
#[derive(Debug)]
pub(crate) struct Settlement {
    id: MessageId,
    sender: ClientId,
    receipt: bool,
    data: Box<RawValue>,
    ts: u64,
    mark: u64,
    receivers: Vec<ClientId>,
    progress: Mutex<Progress>,
    out: mpsc::UnboundedSender<Settled>,
}

impl Settlement {
    /// Starts following a message for `receivers`; a receiver none of whose frames gets
    /// written (no socket here, or every socket closed first) ends up undelivered. Open until
    /// [`Settlement::queued`] is called and every token is gone.
    pub(crate) fn begin(
        d: impush_core::envelope::Deliver,
        receivers: Vec<ClientId>,
        acker: Acker,
        out: mpsc::UnboundedSender<Settled>,
    ) -> Arc<Self> {
        let n = receivers.len();
        Arc::new(Self {
            id: d.id,
            sender: d.from,
            receipt: d.receipt,
            data: d.data,
            ts: d.ts,
            mark: next_mark(),
            receivers,
            progress: Mutex::new(Progress {
                open: 1,
                fate: vec![Fate::Open; n],
                acked: Vec::new(),
                acker: Some(acker),
            }),
            out,
        })
    }

    /// A token for one frame to receiver number `receiver`.
    pub(crate) fn token(self: &Arc<Self>, receiver: usize) -> FrameToken {
        if let Ok(mut p) = self.progress.lock() {
            p.open += 1;
        }
        FrameToken {
            settlement: self.clone(),
            receiver: u32::try_from(receiver).unwrap_or(u32::MAX),
            outcome: None,
        }
    }

    /// The receivers, in the order [`Settlement::token`] numbers them.
    pub(crate) fn receivers(&self) -> &[ClientId] {
        &self.receivers
    }

    /// Every frame has been queued (or refused); the outcome follows once they are written.
    pub(crate) fn queued(&self) {
        self.done(None);
    }

    /// The message id.
    pub(crate) fn id(&self) -> &MessageId {
        &self.id
    }

    /// The sender.
    pub(crate) fn sender(&self) -> &ClientId {
        &self.sender
    }

    /// Whether the sender wants receipts.
    pub(crate) fn wants_receipt(&self) -> bool {
        self.receipt
    }

    /// The message as the offline inbox keeps it (`written`: it reached a socket once).
    pub(crate) fn stored_message(&self, written: bool) -> StoredMessage {
        StoredMessage {
            id: self.id.clone(),
            from: self.sender.clone(),
            data: self.data.clone(),
            ts: self.ts,
            receipt: self.receipt,
            written,
        }
    }

    /// The message for `to` as a node sends it on to their owner (marked so it goes no
    /// further).
    pub(crate) fn forwarded_to(&self, to: Vec<ClientId>) -> impush_core::envelope::Deliver {
        impush_core::envelope::Deliver {
            id: self.id.clone(),
            from: self.sender.clone(),
            to,
            data: self.data.clone(),
            ts: self.ts,
            receipt: self.receipt,
            forwarded: true,
        }
    }

    /// When the API accepted the message: unix milliseconds on the sending helper's clock.
    pub(crate) fn ts(&self) -> u64 {
        self.ts
    }

    /// Receiver number `receiver` acked its frame. Returns whether the message had not settled
    /// yet (the outcome then lists the receiver as acked); `false` means it settled already.
    pub(crate) fn acked_early(&self, receiver: u32) -> bool {
        let Ok(mut p) = self.progress.lock() else {
            return false;
        };
        if p.acker.is_none() {
            return false;
        }
        let n = self.receivers.len();
        if p.acked.is_empty() {
            p.acked = vec![false; n];
        }
        match p.acked.get_mut(receiver as usize) {
            Some(a) => {
                *a = true;
                true
            }
            None => false,
        }
    }

    fn done(&self, outcome: Option<(u32, Fate)>) {
        let finished = {
            let Ok(mut p) = self.progress.lock() else {
                return;
            };
            if let Some((i, fate)) = outcome {
                if let Some(f) = p.fate.get_mut(i as usize) {
                    // Written wins over anything else another socket reported.
                    if *f != Fate::Written {
                        *f = fate;
                    }
                }
            }
            p.open -= 1;
            if p.open > 0 {
                return;
            }
            (
                std::mem::take(&mut p.fate),
                std::mem::take(&mut p.acked),
                p.acker.take(),
            )
        };
        let (fates, acked_flags, acker) = finished;
        let Some(acker) = acker else { return };
        let mut delivered = Vec::new();
        let mut undelivered = Vec::new();
        let mut kept = Vec::new();
        let mut not_kept = Vec::new();
        let mut acked = Vec::new();
        for (i, (client, fate)) in self.receivers.iter().zip(fates).enumerate() {
            match fate {
                Fate::Written => {
                    delivered.push(client.clone());
                    if acked_flags.get(i).copied().unwrap_or(false) {
                        acked.push(client.clone());
                    }
                }
                Fate::Open => undelivered.push(client.clone()),
                Fate::Kept => kept.push(client.clone()),
                Fate::NotKept => not_kept.push(client.clone()),
                Fate::Forwarded => {}
            }
        }
        // The receiver task outlives every settlement except at shutdown, when an unacked
        // message is exactly what should be delivered again after a restart.
        let _ = self.out.send(Settled {
            id: self.id.clone(),
            sender: self.sender.clone(),
            receipt: self.receipt,
            data: self.data.clone(),
            ts: self.ts,
            mark: self.mark,
            delivered,
            undelivered,
            kept,
            not_kept,
            acked,
            acker,
        });
    }
}

/// Rides with one queued frame of a point-to-point message; settles on drop.
#[derive(Debug)]
pub(crate) struct FrameToken {
    settlement: Arc<Settlement>,
    receiver: u32,
    /// What to report when dropped (nothing: the frame was dropped unwritten).
    outcome: Option<Fate>,
}

impl FrameToken {
    /// The frame was written to the socket.
    pub(crate) fn written(mut self) {
        self.outcome = Some(Fate::Written);
    }

    /// The receiver had no socket: the message was kept in its offline inbox, or not.
    pub(crate) fn kept(mut self, kept: bool) {
        self.outcome = Some(if kept { Fate::Kept } else { Fate::NotKept });
    }

    /// The receiver had no socket here and the message was sent on to the node that owns it.
    pub(crate) fn forwarded(mut self) {
        self.outcome = Some(Fate::Forwarded);
    }

    /// The message this frame belongs to.
    pub(crate) fn settlement(&self) -> &Arc<Settlement> {
        &self.settlement
    }

    /// The receiver's number in the settlement (for [`Settlement::acked_early`]).
    pub(crate) fn receiver(&self) -> u32 {
        self.receiver
    }
}

impl Drop for FrameToken {
    fn drop(&mut self) {
        self.settlement
            .done(self.outcome.map(|f| (self.receiver, f)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn settlement(tx: mpsc::UnboundedSender<Settled>) -> Arc<Settlement> {
        let d = impush_core::envelope::Deliver {
            id: MessageId::new("m1").unwrap(),
            from: id("s"),
            to: Vec::new(),
            data: RawValue::from_string("1".into()).unwrap(),
            ts: 1,
            receipt: true,
            forwarded: false,
        };
        Settlement::begin(d, vec![id("a"), id("b"), id("c")], Acker::none(), tx)
    }

    #[test]
    fn settles_once_every_frame_is_written_or_dropped() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = settlement(tx);
        let a1 = s.token(0);
        let a2 = s.token(0);
        let b = s.token(1);
        s.queued();
        a1.written();
        assert!(rx.try_recv().is_err(), "settled while frames were open");
        drop(b); // b's only socket closed before writing
        drop(a2);
        let out = rx.try_recv().expect("settled");
        assert_eq!(out.delivered, vec![id("a")]);
        assert_eq!(out.undelivered, vec![id("b"), id("c")]);
        assert!(rx.try_recv().is_err(), "settled twice");
    }

    #[test]
    fn an_ack_before_settling_is_listed_and_one_after_is_refused() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = settlement(tx);
        let a = s.token(0);
        let b = s.token(1);
        s.queued();
        a.written();
        assert!(s.acked_early(0), "the message had not settled yet");
        b.written();
        let out = rx.try_recv().expect("settled");
        assert_eq!(out.delivered, vec![id("a"), id("b")]);
        assert_eq!(out.acked, vec![id("a")]);
        assert!(
            !s.acked_early(1),
            "an ack after settling must go the usual way"
        );
    }

    #[test]
    fn nothing_queued_settles_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = settlement(tx);
        assert!(rx.try_recv().is_err());
        s.queued();
        let out = rx.try_recv().expect("settled");
        assert!(out.delivered.is_empty());
        assert_eq!(out.undelivered, vec![id("a"), id("b"), id("c")]);
    }
}
