//! [`RecentIds`]: the ids of the last messages this node delivered, so a message the broker
//! hands over twice (at-least-once: a redelivery after a reconnect or a claim) reaches the
//! sockets once.

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
};

use impush_core::MessageId;

/// A bounded set of recently seen message ids (oldest forgotten first).
#[derive(Debug)]
pub(crate) struct RecentIds {
    cap: usize,
    seen: Mutex<(HashSet<MessageId>, VecDeque<MessageId>)>,
}

impl RecentIds {
    /// Remembers at most `cap` ids.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Records `id`; returns `false` when it was seen recently (a duplicate).
    pub(crate) fn first_time(&self, id: &MessageId) -> bool {
        let Ok(mut guard) = self.seen.lock() else {
            return true; // never drop a message because of a poisoned lock
        };
        let (set, order) = &mut *guard;
        if set.contains(id) {
            return false;
        }
        if order.len() >= self.cap {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        set.insert(id.clone());
        order.push_back(id.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_caught_and_memory_is_bounded() {
        let r = RecentIds::new(2);
        let [a, b, c] = ["a", "b", "c"].map(|s| MessageId::new(s).unwrap());
        assert!(r.first_time(&a));
        assert!(!r.first_time(&a));
        assert!(r.first_time(&b));
        assert!(r.first_time(&c)); // forgets a
        assert!(r.first_time(&a));
        assert!(!r.first_time(&c));
        assert_eq!(r.seen.lock().unwrap().0.len(), 2);
    }
}
