//! [`Rings`]: what a node keeps of every channel and broadcast stream it reads on
//! `{prefix}.all`, so a reconnecting client can be given what it missed.
//!
//! Every node reads every publication, so every node keeps every stream and a client can
//! resume on any node. A stream holds runs, one per epoch (a sequencer's run of numbers), each
//! a gap-free sequence of offsets: a publication that skips numbers (the feed lost some) starts
//! the run again from it, so a run never claims to hold what it lost. Bounded three ways:
//! `[history] size` per stream, `ttl`, and `max_bytes` for the node, the oldest going first.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;

pub(crate) use crate::stream::StreamKey;

/// One kept publication.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) frame: Utf8Bytes,
}

/// One epoch's gap-free run of a stream.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) epoch: Arc<str>,
    /// The offset the run starts at (of its first entry, or of the next one when all were
    /// evicted).
    pub(crate) first: u64,
    pub(crate) entries: VecDeque<Entry>,
}

impl Run {
    /// The last offset the run has seen.
    pub(crate) fn last(&self) -> u64 {
        self.entries
            .back()
            .map_or(self.first.saturating_sub(1), |e| e.offset)
    }
}

/// What appending a publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Kept; deliver it.
    Fresh,
    /// Its offset was seen already (a redelivery): do not deliver it again.
    Seen,
}

/// Every stream this node keeps.
#[derive(Debug, Default)]
pub(crate) struct Rings {
    streams: HashMap<StreamKey, Vec<Run>>,
    /// Every kept entry in arrival order, for the node-wide bounds (age, bytes); an item whose
    /// entry left by its stream's own bound is skipped when reached.
    order: VecDeque<(StreamKey, Arc<str>, u64, usize, Instant)>,
    bytes: usize,
}

impl Rings {
    /// The runs of `key`, oldest first.
    pub(crate) fn runs(&self, key: &StreamKey) -> &[Run] {
        self.streams.get(key).map_or(&[], Vec::as_slice)
    }

    /// Keeps publication `offset` of `epoch` in stream `key`, within the bounds.
    pub(crate) fn append(
        &mut self,
        key: &StreamKey,
        epoch: &str,
        offset: u64,
        frame: &Utf8Bytes,
        now: Instant,
        limits: (usize, Duration, usize),
    ) -> Appended {
        let (size, ttl, max_bytes) = limits;
        self.expire(now, ttl, max_bytes);
        let runs = self.streams.entry(key.clone()).or_default();
        let i = match runs.iter().position(|r| &*r.epoch == epoch) {
            Some(i) => i,
            None => {
                runs.push(Run {
                    epoch: Arc::from(epoch),
                    first: offset,
                    entries: VecDeque::new(),
                });
                runs.len() - 1
            }
        };
        let run = &mut runs[i];
        if offset <= run.last() {
            return Appended::Seen;
        }
        if offset != run.last() + 1 {
            // Publications were lost on the way here: the run starts again from this one.
            run.entries.clear();
            run.first = offset;
        }
        let bytes = frame.len() + 64;
        run.entries.push_back(Entry {
            offset,
            frame: frame.clone(),
        });
        let epoch = run.epoch.clone();
        self.order
            .push_back((key.clone(), epoch.clone(), offset, bytes, now));
        self.bytes += bytes;
        // The stream's own bound: the oldest entries of its oldest runs go first.
        let mut kept: usize = runs.iter().map(|r| r.entries.len()).sum();
        while kept > size {
            let Some(run) = runs.iter_mut().find(|r| !r.entries.is_empty()) else {
                break;
            };
            if let Some(e) = run.entries.pop_front() {
                run.first = e.offset + 1;
                self.bytes = self.bytes.saturating_sub(e.frame.len() + 64);
            }
            kept -= 1;
        }
        runs.retain(|r| !r.entries.is_empty() || Arc::ptr_eq(&r.epoch, &epoch));
        Appended::Fresh
    }

    /// Drops what is older than `ttl`, and the oldest while over `max_bytes`.
    pub(crate) fn expire(&mut self, now: Instant, ttl: Duration, max_bytes: usize) {
        while let Some((key, epoch, offset, bytes, at)) = self.order.front() {
            let old = now.saturating_duration_since(*at) > ttl;
            if !old && self.bytes <= max_bytes {
                break;
            }
            let (key, epoch, offset, bytes) = (key.clone(), epoch.clone(), *offset, *bytes);
            self.order.pop_front();
            let Some(runs) = self.streams.get_mut(&key) else {
                continue;
            };
            if let Some(run) = runs.iter_mut().find(|r| Arc::ptr_eq(&r.epoch, &epoch)) {
                if run.entries.front().is_some_and(|e| e.offset == offset) {
                    run.entries.pop_front();
                    run.first = offset + 1;
                    self.bytes = self.bytes.saturating_sub(bytes);
                }
            }
            runs.retain(|r| !r.entries.is_empty());
            if runs.is_empty() {
                self.streams.remove(&key);
            }
        }
    }

    /// Bytes kept.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StreamKey {
        StreamKey::Channel("room".parse().unwrap())
    }

    fn put(r: &mut Rings, epoch: &str, offset: u64, now: Instant, size: usize) -> Appended {
        r.append(
            &key(),
            epoch,
            offset,
            &Utf8Bytes::from_static("{}"),
            now,
            (size, Duration::from_secs(60), 1 << 20),
        )
    }

    fn offsets(r: &Rings, epoch: &str) -> Vec<u64> {
        r.runs(&key())
            .iter()
            .find(|run| &*run.epoch == epoch)
            .map(|run| run.entries.iter().map(|e| e.offset).collect())
            .unwrap_or_default()
    }

    #[test]
    fn runs_stay_gap_free_and_bounded() {
        let mut r = Rings::default();
        let now = Instant::now();
        for o in 1..=5 {
            assert_eq!(put(&mut r, "e1", o, now, 3), Appended::Fresh);
        }
        assert_eq!(offsets(&r, "e1"), vec![3, 4, 5], "size 3 keeps the newest");
        assert_eq!(r.runs(&key())[0].first, 3);
        assert_eq!(put(&mut r, "e1", 4, now, 3), Appended::Seen, "a redelivery");
        // 6 and 7 lost: the run restarts at 8 instead of pretending to be whole.
        assert_eq!(put(&mut r, "e1", 8, now, 3), Appended::Fresh);
        assert_eq!(offsets(&r, "e1"), vec![8]);
        assert_eq!(r.runs(&key())[0].first, 8);
        // A new epoch is a new run; the stream's bound counts both.
        put(&mut r, "e2", 1, now, 3);
        put(&mut r, "e2", 2, now, 3);
        put(&mut r, "e2", 3, now, 3);
        assert_eq!(
            offsets(&r, "e1"),
            Vec::<u64>::new(),
            "the oldest run went first"
        );
        assert_eq!(offsets(&r, "e2"), vec![1, 2, 3]);
    }

    #[test]
    fn age_and_bytes_are_bounded_node_wide() {
        let mut r = Rings::default();
        let t0 = Instant::now();
        put(&mut r, "e1", 1, t0, 100);
        put(&mut r, "e1", 2, t0 + Duration::from_secs(30), 100);
        r.expire(
            t0 + Duration::from_secs(61),
            Duration::from_secs(60),
            1 << 20,
        );
        assert_eq!(
            offsets(&r, "e1"),
            vec![2],
            "the publication older than the ttl left"
        );
        r.expire(t0 + Duration::from_secs(61), Duration::from_secs(60), 0);
        assert!(r.runs(&key()).is_empty(), "over max_bytes: everything left");
        assert_eq!(r.bytes(), 0);
    }
}
