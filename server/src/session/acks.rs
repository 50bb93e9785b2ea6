//! [`PendingAcks`]: the delivered messages a client may still ack, bounded, so an ack can only
//! produce a receipt for a message that was really written to this socket.

use std::collections::{HashMap, VecDeque};

use impush_core::{ClientId, MessageId};

/// What an ack of a delivered message tells the node.
#[derive(Debug, Clone)]
pub(super) struct Ackable {
    pub(super) sender: ClientId,
    pub(super) receipt: bool,
    pub(super) stored: bool,
}

/// The ids of delivered messages the client may still ack, oldest first, bounded.
#[derive(Debug)]
pub(super) struct PendingAcks {
    cap: usize,
    order: VecDeque<MessageId>,
    senders: HashMap<MessageId, Ackable>,
}

impl PendingAcks {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            order: VecDeque::new(),
            senders: HashMap::new(),
        }
    }

    pub(super) fn insert(&mut self, id: MessageId, sender: Ackable) {
        if self.cap == 0 || self.senders.contains_key(&id) {
            return;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.senders.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.senders.insert(id, sender);
    }

    pub(super) fn take(&mut self, id: &MessageId) -> Option<Ackable> {
        let sender = self.senders.remove(id)?;
        // Clients ack in delivery order; only an out-of-order ack pays for the scan.
        if self.order.front() == Some(id) {
            self.order.pop_front();
        } else {
            self.order.retain(|x| x != id);
        }
        if self.senders.is_empty() {
            // Give the capacity back: most connections sit idle after a burst.
            *self = Self::new(self.cap);
        }
        Some(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_acks_give_memory_back_when_empty() {
        let mut p = PendingAcks::new(4);
        let id = MessageId::new("m1").unwrap();
        let a = Ackable {
            sender: ClientId::new("s").unwrap(),
            receipt: true,
            stored: false,
        };
        p.insert(id.clone(), a);
        assert!(p.senders.capacity() > 0);
        assert!(p.take(&id).is_some());
        assert_eq!(p.senders.capacity(), 0);
        assert_eq!(p.order.capacity(), 0);
    }
}
