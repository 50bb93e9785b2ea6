//! [`PendingAcks`]: the messages written to one socket that the client may still ack.
//!
//! Two kinds, bounded differently (`docs/design.md` section 15):
//! - **required**: with the offline inbox on and `offline.require_ack`, every point-to-point
//!   message stays pending until the client acks it. These are never forgotten: the session
//!   stops writing new ones past `limits.max_unacked` (flow control), and when the socket
//!   closes the node learns which went unacked.
//! - **optional**: otherwise only messages whose sender wants receipts are remembered, so an
//!   ack can produce an `acked` receipt for a message really written here; at most
//!   `limits.max_pending_acks`, the oldest forgotten first.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use impush_core::{ClientId, MessageId};

use crate::settle::Settlement;

/// Where an acked message came from, which says what its ack must settle.
#[derive(Debug, Clone)]
pub(crate) enum AckSource {
    /// A live message: receiver number `receiver` of its settlement.
    Live {
        settlement: Arc<Settlement>,
        receiver: u32,
    },
    /// A message pushed from the offline inbox.
    Stored,
}

/// What an ack of a written message tells the node.
#[derive(Debug, Clone)]
pub(crate) struct Ackable {
    pub(crate) sender: ClientId,
    pub(crate) receipt: bool,
    pub(crate) source: AckSource,
}

/// The messages written to one socket and not acked yet.
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    required: HashMap<MessageId, Ackable>,
    optional_order: VecDeque<MessageId>,
    optional: HashMap<MessageId, Ackable>,
}

impl PendingAcks {
    /// Remembers a message the client must ack (never forgotten until acked or closed).
    pub(crate) fn require(&mut self, id: MessageId, a: Ackable) {
        self.optional.remove(&id);
        self.required.insert(id, a);
    }

    /// Remembers a message the client may ack, forgetting the oldest beyond `cap`.
    pub(crate) fn allow(&mut self, id: MessageId, a: Ackable, cap: usize) {
        if cap == 0 || self.optional.contains_key(&id) || self.required.contains_key(&id) {
            return;
        }
        if self.optional_order.len() >= cap {
            if let Some(old) = self.optional_order.pop_front() {
                self.optional.remove(&old);
            }
        }
        self.optional_order.push_back(id.clone());
        self.optional.insert(id, a);
    }

    /// Whether [`PendingAcks::allow`] would remember one more without forgetting another.
    pub(crate) fn has_room(&self, cap: usize) -> bool {
        self.optional_order.len() < cap
    }

    /// The ack of `id`, if it was pending here (and no longer is).
    pub(crate) fn take(&mut self, id: &MessageId) -> Option<Ackable> {
        if let Some(a) = self.required.remove(id) {
            return Some(a);
        }
        let a = self.optional.remove(id)?;
        // Clients ack in delivery order; only an out-of-order ack pays for the scan.
        if self.optional_order.front() == Some(id) {
            self.optional_order.pop_front();
        } else {
            self.optional_order.retain(|x| x != id);
        }
        Some(a)
    }

    /// How many required acks are outstanding.
    pub(crate) fn unacked(&self) -> usize {
        self.required.len()
    }

    /// Whether `id` waits for a required ack here.
    pub(crate) fn requires(&self, id: &MessageId) -> bool {
        self.required.contains_key(id)
    }

    /// The required acks still outstanding (the socket closed).
    pub(crate) fn into_required(self) -> Vec<(MessageId, Ackable)> {
        self.required.into_iter().collect()
    }

    /// Nothing pending: the caller may free it.
    pub(crate) fn is_empty(&self) -> bool {
        self.required.is_empty() && self.optional.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ackable() -> Ackable {
        Ackable {
            sender: ClientId::new("s").unwrap(),
            receipt: true,
            source: AckSource::Stored,
        }
    }

    fn id(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    #[test]
    fn required_acks_are_never_evicted_and_optional_ones_are_bounded() {
        let mut p = PendingAcks::default();
        p.require(id("r1"), ackable());
        for i in 0..10 {
            p.allow(id(&format!("o{i}")), ackable(), 4);
        }
        assert_eq!(p.unacked(), 1);
        assert!(p.requires(&id("r1")));
        assert!(
            p.take(&id("o0")).is_none(),
            "the oldest optional ack was forgotten"
        );
        assert!(p.take(&id("o9")).is_some());
        assert!(p.take(&id("r1")).is_some());
        assert!(p.take(&id("r1")).is_none(), "an ack counts once");
        assert_eq!(p.unacked(), 0);
    }

    #[test]
    fn what_was_never_acked_comes_back_at_close() {
        let mut p = PendingAcks::default();
        p.require(id("a"), ackable());
        p.require(id("b"), ackable());
        assert!(p.take(&id("a")).is_some());
        let left: Vec<_> = p.into_required().into_iter().map(|(i, _)| i).collect();
        assert_eq!(left, vec![id("b")]);
    }
}
