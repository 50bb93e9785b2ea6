//! Which offsets of a queue subscription may be committed.
//!
//! Kafka keeps one committed offset per partition and group: "everything below this was
//! handled". Deliveries are acked one by one and possibly out of order, so each partition
//! keeps the offsets it handed out, in order, with an acked flag; the committable position is
//! one past the longest acked prefix. An offset that is never acked holds the position back:
//! it and everything after it are delivered again after a restart or a rebalance
//! (at-least-once).
//!
//! Every assignment of a partition gets a new generation. Acks and buffered deliveries of an
//! older generation (the partition was revoked meanwhile, and someone else may own it now) are
//! ignored: committing them could move another member's position.

use std::collections::{HashMap, VecDeque};

/// The offsets of one assigned partition.
#[derive(Debug)]
pub(crate) struct PartitionAcks {
    generation: u64,
    /// Offsets handed out and not yet part of the committable prefix, ascending.
    outstanding: VecDeque<(i64, bool)>,
    /// One past the longest acked prefix: the offset to commit. `None` until something was
    /// acked in this generation.
    position: Option<i64>,
    /// The last position a commit was sent for.
    sent: Option<i64>,
}

impl PartitionAcks {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            outstanding: VecDeque::new(),
            position: None,
            sent: None,
        }
    }

    fn delivered(&mut self, offset: i64) {
        match self.outstanding.back() {
            Some((last, _)) if *last >= offset => {
                // Offsets only go back when the partition was reset (the topic was recreated,
                // or the position fell out of retention): nothing before it can be acked now.
                self.outstanding.clear();
                self.position = None;
                self.sent = None;
            }
            _ => {}
        }
        if self.position.is_some_and(|p| offset < p) {
            self.position = None;
            self.sent = None;
        }
        self.outstanding.push_back((offset, false));
    }

    fn ack(&mut self, offset: i64) {
        if let Ok(i) = self.outstanding.binary_search_by_key(&offset, |(o, _)| *o) {
            self.outstanding[i].1 = true;
        }
        while let Some((o, true)) = self.outstanding.front().copied() {
            self.position = Some(o + 1);
            self.outstanding.pop_front();
        }
    }

    /// The position to commit, if it moved since the last commit was sent.
    fn to_commit(&self) -> Option<i64> {
        self.position.filter(|p| self.sent != Some(*p))
    }
}

/// The ack state of one queue subscription, shared by the consumer task, the ackers, the
/// rebalance callbacks and the stream that filters stale deliveries.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    generation: u64,
    partitions: HashMap<i32, PartitionAcks>,
}

impl Tracker {
    /// Partitions were assigned: they start a new generation (a partition assigned again
    /// after a revoke starts over from the committed offset).
    pub(crate) fn assigned(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.generation += 1;
        for p in partitions {
            self.partitions
                .insert(p, PartitionAcks::new(self.generation));
        }
    }

    /// Forgets every partition (their consumer is being replaced): everything handed out so
    /// far is stale.
    pub(crate) fn reset(&mut self) {
        self.generation += 1;
        self.partitions.clear();
    }

    /// Partitions are being revoked: returns the positions still to commit for them, and
    /// forgets them.
    pub(crate) fn revoked(&mut self, partitions: impl IntoIterator<Item = i32>) -> Vec<(i32, i64)> {
        self.generation += 1;
        let mut out = Vec::new();
        for p in partitions {
            if let Some(acks) = self.partitions.remove(&p) {
                if let Some(pos) = acks.to_commit() {
                    out.push((p, pos));
                }
            }
        }
        out
    }

    /// Records that `offset` of `partition` is being handed out; returns its generation, or
    /// `None` when the partition is not assigned (a late message of a revoked assignment).
    pub(crate) fn delivered(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let acks = self.partitions.get_mut(&partition)?;
        acks.delivered(offset);
        Some(acks.generation)
    }

    /// Whether a delivery of `generation` is still current (its partition was not revoked
    /// since it was fetched).
    pub(crate) fn is_current(&self, partition: i32, generation: u64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|a| a.generation == generation)
    }

    /// Acks one delivery; stale acks (an older generation) are ignored.
    pub(crate) fn ack(&mut self, partition: i32, generation: u64, offset: i64) {
        if let Some(acks) = self.partitions.get_mut(&partition) {
            if acks.generation == generation {
                acks.ack(offset);
            }
        }
    }

    /// The positions that moved since they were last sent, marked as sent.
    pub(crate) fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (p, acks) in &mut self.partitions {
            if let Some(pos) = acks.to_commit() {
                acks.sent = Some(pos);
                out.push((*p, pos));
            }
        }
        out
    }

    /// A commit of `position` for `partition` failed: send it again next time.
    pub(crate) fn commit_failed(&mut self, partition: i32, position: i64) {
        if let Some(acks) = self.partitions.get_mut(&partition) {
            if acks.sent == Some(position) {
                acks.sent = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_the_contiguous_acked_prefix() {
        let mut t = Tracker::default();
        t.assigned([0]);
        let g: Vec<u64> = (10..15).map(|o| t.delivered(0, o).unwrap()).collect();
        assert!(t.take_commits().is_empty());
        t.ack(0, g[1], 11); // out of order: 10 still open
        assert!(t.take_commits().is_empty());
        t.ack(0, g[0], 10);
        assert_eq!(t.take_commits(), vec![(0, 12)]);
        assert!(t.take_commits().is_empty(), "sent once");
        t.ack(0, g[4], 14);
        t.ack(0, g[3], 13);
        assert!(t.take_commits().is_empty(), "12 is still open");
        t.ack(0, g[2], 12);
        assert_eq!(t.take_commits(), vec![(0, 15)]);
    }

    #[test]
    fn a_failed_commit_is_sent_again() {
        let mut t = Tracker::default();
        t.assigned([3]);
        let g = t.delivered(3, 0).unwrap();
        t.ack(3, g, 0);
        assert_eq!(t.take_commits(), vec![(3, 1)]);
        t.commit_failed(3, 1);
        assert_eq!(t.take_commits(), vec![(3, 1)]);
    }

    #[test]
    fn revoke_hands_out_the_last_position_and_fences_old_acks() {
        let mut t = Tracker::default();
        t.assigned([0, 1]);
        let g0 = t.delivered(0, 5).unwrap();
        t.delivered(0, 6).unwrap();
        let g1 = t.delivered(1, 7).unwrap();
        t.ack(0, g0, 5);
        assert_eq!(t.revoked([0]), vec![(0, 6)]);
        assert!(
            !t.is_current(0, g0),
            "buffered deliveries of partition 0 are stale"
        );
        assert!(t.is_current(1, g1), "partition 1 was not revoked");
        // Partition 0 comes back: a late ack of the old assignment must not count.
        t.assigned([0]);
        let g0b = t.delivered(0, 6).unwrap();
        assert_ne!(g0, g0b);
        t.ack(0, g0, 6);
        assert!(t.take_commits().is_empty(), "{t:?}");
        t.ack(0, g0b, 6);
        assert_eq!(t.take_commits(), vec![(0, 7)]);
        assert_eq!(t.delivered(9, 1), None, "not assigned");
    }

    #[test]
    fn a_reset_partition_starts_over() {
        let mut t = Tracker::default();
        t.assigned([0]);
        let g = t.delivered(0, 100).unwrap();
        t.ack(0, g, 100);
        assert_eq!(t.take_commits(), vec![(0, 101)]);
        // The topic was recreated: offsets start at 0 again.
        let g = t.delivered(0, 0).unwrap();
        t.ack(0, g, 0);
        assert_eq!(t.take_commits(), vec![(0, 1)]);
    }
}
