//! [`Sequencer`]: the numbering of the streams this node owns (`docs/design.md` section 15).
//!
//! A stream's publications go to one node, its live owner by the partitioner
//! (`Cluster::stream_owner`), which gives each the next offset of the stream's current epoch
//! and publishes it on `{prefix}.all`. The epoch names this node's run of numbers for the
//! stream (node id, the node's start, a counter), so numbers from another run (after a
//! failover, a restart, or once this node forgot an idle stream) never look like a
//! continuation.
//!
//! Publications are numbered and published in order per stream by a fixed set of lanes (one
//! task each, a stream always on the same lane); each waits for its publish before the next,
//! so every node reads a stream's offsets in order. Lanes are bounded queues: a slow broker
//! holds the inbox reader instead of growing memory.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    time::{Duration, Instant},
};

use impush_core::{envelope::Position, NodeId};

use super::ring::StreamKey;

/// Lanes that publish numbered publications; a stream keeps its lane.
pub(crate) const LANES: usize = 8;
/// Publications waiting per lane.
pub(crate) const LANE_DEPTH: usize = 1024;

#[derive(Debug)]
struct Numbering {
    epoch: String,
    next: u64,
    used: Instant,
}

/// This node's numbering state for the streams it owns.
#[derive(Debug)]
pub(crate) struct Sequencer {
    prefix: String,
    runs: u64,
    streams: HashMap<StreamKey, Numbering>,
    hasher: RandomState,
}

impl Sequencer {
    /// Numbering for node `node`, started at `boot` (unix ms).
    pub(crate) fn new(node: &NodeId, boot: u64) -> Self {
        Self {
            prefix: format!("{node}.{}", to_base36(boot)),
            runs: 0,
            streams: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// The lane of `key`.
    pub(crate) fn lane(&self, key: &StreamKey) -> usize {
        self.hasher.hash_one(key) as usize % LANES
    }

    /// The next position of stream `key`.
    pub(crate) fn next(&mut self, key: &StreamKey, now: Instant) -> Position {
        let n = match self.streams.get_mut(key) {
            Some(n) => n,
            None => {
                self.runs += 1;
                let epoch = format!("{}.{}", self.prefix, self.runs);
                self.streams.entry(key.clone()).or_insert(Numbering {
                    epoch,
                    next: 1,
                    used: now,
                })
            }
        };
        let pos = Position {
            offset: n.next,
            epoch: n.epoch.clone(),
        };
        n.next += 1;
        n.used = now;
        pos
    }

    /// Forgets streams idle for longer than `ttl` (nothing of them is kept anywhere then); a
    /// later publication starts a new epoch.
    pub(crate) fn forget_idle(&mut self, now: Instant, ttl: Duration) {
        self.streams
            .retain(|_, n| now.saturating_duration_since(n.used) <= ttl);
    }
}

fn to_base36(mut v: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_per_stream_and_idle_streams_start_a_new_epoch() {
        let mut s = Sequencer::new(&"n1".parse().unwrap(), 1_700_000_000_000);
        let now = Instant::now();
        let a = StreamKey::Channel("a".parse().unwrap());
        let b = StreamKey::Broadcast;
        let a1 = s.next(&a, now);
        let a2 = s.next(&a, now);
        let b1 = s.next(&b, now);
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch);
        assert!(a1.epoch.starts_with("n1."), "{}", a1.epoch);
        s.forget_idle(now + Duration::from_secs(10), Duration::from_secs(5));
        let again = s.next(&a, now + Duration::from_secs(10));
        assert_eq!(again.offset, 1);
        assert_ne!(
            again.epoch, a1.epoch,
            "a new run never continues an old one's numbers"
        );
        assert_eq!(s.lane(&a), s.lane(&a), "a stream keeps its lane");
    }
}
