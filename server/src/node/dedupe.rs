//! [`RecentIds`]: the ids of the messages this node delivered (or publications it numbered)
//! lately, so a message the broker hands over twice (at-least-once: a redelivery after a
//! reconnect or a claim) or that a caller sends again with the same idempotency key or id
//! (`docs/design.md` section 7) reaches the sockets once.
//!
//! Bounded twice: an id is forgotten `limits.idempotency_window` after it was recorded, and at
//! most `limits.idempotency_max_ids` are held (the oldest go first), so memory stays bounded at
//! any message rate and shrinks back when traffic stops.

use std::{
    collections::{HashSet, VecDeque},
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

use impush_core::{config::LimitsConfig, ClientId, MessageId};

/// A set of recently seen message ids, forgotten after a window or beyond a count.
#[derive(Debug)]
pub(crate) struct RecentIds {
    cap: usize,
    window: Duration,
    /// Keys digests with a per-process random key, so no caller can choose ids whose digests
    /// collide (which would make the set's lookups linear).
    digest: RandomState,
    seen: Mutex<Seen>,
}

/// What is remembered: a digest of the id (and, for a point-to-point message, of the
/// receivers of the part this node got), not the id itself.
#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<u64, BuildHasherDefault<AsIs>>,
    /// Keys in the order they were recorded, with when.
    order: VecDeque<(Instant, u64)>,
}

/// The set's hasher: a key is a keyed digest already, hashing it again would only cost.
#[derive(Debug, Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; this folds anything else in all the same.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl RecentIds {
    /// Remembers ids for `limits.idempotency_window`, at most `limits.idempotency_max_ids`.
    pub(crate) fn new(limits: &LimitsConfig) -> Self {
        Self::bounded(limits.idempotency_max_ids, limits.idempotency_window)
    }

    /// Remembers ids for `window`, at most `cap` of them.
    pub(crate) fn bounded(cap: usize, window: Duration) -> Self {
        Self {
            cap: cap.max(1),
            window,
            digest: RandomState::new(),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records `id`; returns `false` when it was seen within the window (a duplicate).
    pub(crate) fn first_time(&self, id: &MessageId) -> bool {
        self.first_time_at(self.key(id, &[]), Instant::now())
    }

    /// Records the part of message `id` for `receivers` (sorted): one message reaches a node
    /// in several parts when its receivers' owners changed (a dead node's inbox re-routed, an
    /// inbox handed over), and each part is delivered once; the same part again (a
    /// redelivery, a retried send) is a duplicate.
    pub(crate) fn first_time_part(&self, id: &MessageId, receivers: &[ClientId]) -> bool {
        self.first_time_at(self.key(id, receivers), Instant::now())
    }

    fn key(&self, id: &MessageId, part: &[ClientId]) -> u64 {
        self.digest.hash_one((id, part))
    }

    fn first_time_at(&self, id: u64, now: Instant) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return true; // never drop a message because of a poisoned lock
        };
        let Seen { ids, order } = &mut *seen;
        // Ids are recorded in time order, so the expired ones are at the front.
        while let Some((at, old)) = order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            ids.remove(old);
            order.pop_front();
        }
        if ids.contains(&id) {
            return false;
        }
        if order.len() >= self.cap {
            if let Some((_, old)) = order.pop_front() {
                ids.remove(&old);
            }
        }
        ids.insert(id);
        order.push_back((now, id));
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().map(|s| s.ids.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ids<const N: usize>(r: &RecentIds, names: [&str; N]) -> [u64; N] {
        names.map(|s| r.key(&MessageId::new(s).unwrap(), &[]))
    }

    #[test]
    fn each_part_of_a_message_is_delivered_once() {
        let r = RecentIds::bounded(100, Duration::from_secs(300));
        let id = MessageId::new("m").unwrap();
        let (a, b) = (ClientId::new("a").unwrap(), ClientId::new("b").unwrap());
        assert!(r.first_time_part(&id, std::slice::from_ref(&a)));
        assert!(
            r.first_time_part(&id, std::slice::from_ref(&b)),
            "another part of the same message (re-routed here) is new"
        );
        assert!(
            !r.first_time_part(&id, std::slice::from_ref(&a)),
            "the same part again"
        );
    }

    #[test]
    fn digests_are_keyed_apart_from_the_ids() {
        let (r, other) = (
            RecentIds::bounded(100, Duration::from_secs(300)),
            RecentIds::bounded(100, Duration::from_secs(300)),
        );
        let id = MessageId::new("m").unwrap();
        assert_eq!(r.key(&id, &[]), r.key(&id, &[]));
        assert_ne!(
            r.key(&id, &[]),
            other.key(&id, &[]),
            "an id's digest can be known in advance"
        );
    }

    #[test]
    fn duplicates_are_caught_and_the_count_is_bounded() {
        let r = RecentIds::bounded(2, Duration::from_secs(300));
        let [a, b, c] = ids(&r, ["a", "b", "c"]);
        let now = Instant::now();
        assert!(r.first_time_at(a, now));
        assert!(!r.first_time_at(a, now));
        assert!(r.first_time_at(b, now));
        assert!(r.first_time_at(c, now)); // forgets a
        assert!(r.first_time_at(a, now));
        assert!(!r.first_time_at(c, now));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let window = Duration::from_secs(300);
        let r = RecentIds::bounded(100, window);
        let [a, b, c] = ids(&r, ["a", "b", "c"]);
        let t0 = Instant::now();
        assert!(r.first_time_at(a, t0));
        assert!(r.first_time_at(b, t0 + Duration::from_secs(100)));
        // Within the window: still a duplicate.
        assert!(!r.first_time_at(a, t0 + window - Duration::from_millis(1)));
        // Past it: a is new again, b (recorded later) is not yet forgotten.
        assert!(r.first_time_at(a, t0 + window));
        assert!(!r.first_time_at(b, t0 + window));
        // Memory shrinks back when traffic stops.
        assert!(r.first_time_at(c, t0 + window * 3));
        assert_eq!(r.len(), 1);
    }
}
