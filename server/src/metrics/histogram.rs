//! [`Histogram`]: a fixed-bucket histogram of durations, observed on hot paths (every written
//! message frame, every written batch) and rendered as a Prometheus histogram.
//!
//! An observation is two relaxed atomic adds (its bucket and the sum), with no lock and no
//! allocation. The counters are kept in a few copies (shards), each on its own cache lines, and
//! a thread always adds to the same copy: session tasks write on every worker thread at once,
//! and a single set of counters would bounce its cache line between the cores on every frame.
//! Rendering adds the copies up. Bucket counts are kept per bucket (not cumulative) and summed
//! into Prometheus' cumulative `le` buckets when rendered, so the `+Inf` bucket and `_count`
//! always agree.

use std::{
    cell::Cell,
    fmt,
    marker::PhantomData,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

/// The most bounds a bucket layout may have (the `+Inf` bucket comes on top).
pub(crate) const MAX_BOUNDS: usize = 19;

/// Copies of the counters; threads beyond this many share them.
const SHARDS: usize = 8;

/// A bucket layout: upper bounds in microseconds, strictly ascending, at most [`MAX_BOUNDS`].
pub(crate) trait Buckets {
    /// The upper bounds (`le`), microseconds.
    const BOUNDS_US: &'static [u64];
}

/// Delivery and connect latencies: 0.5 ms to 10 s.
#[derive(Debug)]
pub(crate) enum Latency {}

impl Buckets for Latency {
    const BOUNDS_US: &'static [u64] = &[
        500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
        2_500_000, 5_000_000, 10_000_000,
    ];
}

/// Broker publishes: 0.1 ms (an in-process broker, a pipelined client) to 10 s.
#[derive(Debug)]
pub(crate) enum Publish {}

impl Buckets for Publish {
    const BOUNDS_US: &'static [u64] = &[
        100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000,
    ];
}

/// One copy of the counters, alone on its cache lines (128 bytes: adjacent-line prefetch pairs
/// lines on x86).
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    /// Observations per bucket: bucket `i` counts values above bound `i - 1` and at most bound
    /// `i`; the one after the last bound counts the rest (`+Inf`).
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    /// Sum of the observed values, microseconds.
    sum_us: AtomicU64,
}

/// A histogram of durations with the bucket layout `B`.
pub(crate) struct Histogram<B> {
    shards: [Shard; SHARDS],
    layout: PhantomData<B>,
}

impl<B> Default for Histogram<B> {
    fn default() -> Self {
        Self {
            shards: Default::default(),
            layout: PhantomData,
        }
    }
}

impl<B: Buckets> fmt::Debug for Histogram<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &s.count())
            .field("sum_us", &s.sum_us)
            .finish()
    }
}

/// What a histogram held at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Cumulative counts: entry `i` counts the values at most bound `i`; the last one (after
    /// every bound) counts all of them.
    pub(crate) cumulative: Vec<u64>,
    /// Sum of the values, microseconds.
    pub(crate) sum_us: u64,
}

impl Snapshot {
    /// How many values were observed.
    pub(crate) fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

thread_local! {
    /// The shard this thread adds to (`usize::MAX` until its first observation).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Hands shards to threads in turn.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn shard_index() -> usize {
    SHARD
        .try_with(|s| {
            let i = s.get();
            if i < SHARDS {
                return i;
            }
            let i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            s.set(i);
            i
        })
        .unwrap_or(0)
}

impl<B: Buckets> Histogram<B> {
    /// Records one value, in microseconds.
    #[inline]
    pub(crate) fn observe_us(&self, us: u64) {
        // A layout with more bounds than a shard has buckets does not compile.
        const { assert!(B::BOUNDS_US.len() <= MAX_BOUNDS, "too many bucket bounds") };
        let bucket = B::BOUNDS_US.partition_point(|&bound| bound < us);
        if let Some(shard) = self.shards.get(shard_index()) {
            if let Some(b) = shard.buckets.get(bucket) {
                b.fetch_add(1, Ordering::Relaxed);
            }
            shard.sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    /// Records one duration (at microsecond resolution).
    #[inline]
    pub(crate) fn observe(&self, d: Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The upper bounds, microseconds.
    pub(crate) fn bounds_us(&self) -> &'static [u64] {
        B::BOUNDS_US
    }

    /// The counts so far, every shard added up. Observations racing this call may show in the
    /// buckets and not yet in the sum (or the reverse); the buckets agree with each other.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let n = B::BOUNDS_US.len() + 1;
        let mut per_bucket = vec![0u64; n];
        let mut sum_us = 0u64;
        for shard in &self.shards {
            for (total, b) in per_bucket.iter_mut().zip(&shard.buckets) {
                *total = total.wrapping_add(b.load(Ordering::Relaxed));
            }
            sum_us = sum_us.wrapping_add(shard.sum_us.load(Ordering::Relaxed));
        }
        let mut running = 0u64;
        let cumulative = per_bucket
            .into_iter()
            .map(|c| {
                running = running.wrapping_add(c);
                running
            })
            .collect();
        Snapshot { cumulative, sum_us }
    }
}

/// Channel messages and broadcasts carry their publish time to one member in this many (the
/// first, then every this-many-th, in fan-out order), and only those frames are observed. A
/// fan-out frame costs well under a microsecond of node CPU and is usually written alone, so
/// reading the clock for every one of them would cost the fan-out several percent.
pub(crate) const CHANNEL_LATENCY_SAMPLE: usize = 64;

/// The publish time to queue with the frame for member number `nth` (from 0) of a
/// publication's fan-out: `ts` for the members in the latency sample, 0 for the rest.
pub(crate) fn sampled_ts(nth: usize, ts: u64) -> u64 {
    if nth % CHANNEL_LATENCY_SAMPLE == 0 {
        ts
    } else {
        0
    }
}

/// Microseconds since the unix epoch: the clock message timestamps (`ts`, unix milliseconds)
/// are compared with.
pub(crate) fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Microseconds from `ts_ms` (unix milliseconds, stamped on another machine's clock) to
/// `now_us`. A sender whose clock runs ahead of this node's would give a negative latency: it
/// counts as 0.
pub(crate) fn since_ms(now_us: u64, ts_ms: u64) -> u64 {
    now_us.saturating_sub(ts_ms.saturating_mul(1_000))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    fn layouts() -> [&'static [u64]; 2] {
        [Latency::BOUNDS_US, Publish::BOUNDS_US]
    }

    #[test]
    fn layouts_ascend_and_fit() {
        for bounds in layouts() {
            assert!(bounds.len() <= MAX_BOUNDS);
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
        assert_eq!(Latency::BOUNDS_US.first(), Some(&500));
        assert_eq!(Latency::BOUNDS_US.last(), Some(&10_000_000));
    }

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket() {
        let h = Histogram::<Latency>::default();
        // le = 0.0005: 0 and exactly 500 us; le = 0.001: 501 and 1000; +Inf: past 10 s.
        for us in [0, 500, 501, 1_000, 10_000_000, 10_000_001, u64::MAX / 2] {
            h.observe_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), Latency::BOUNDS_US.len() + 1);
        assert_eq!(s.cumulative[0], 2, "le 0.0005");
        assert_eq!(s.cumulative[1], 4, "le 0.001");
        assert_eq!(s.cumulative[2], 4, "le 0.0025");
        let last_bound = Latency::BOUNDS_US.len() - 1;
        assert_eq!(s.cumulative[last_bound], 5, "le 10");
        assert_eq!(s.count(), 7, "+Inf");
        assert_eq!(
            s.sum_us,
            500 + 501 + 1_000 + 10_000_000 + 10_000_001 + u64::MAX / 2
        );
    }

    #[test]
    fn durations_are_observed_in_microseconds() {
        let h = Histogram::<Publish>::default();
        h.observe(Duration::from_micros(99));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1, "99 us is within le 0.0001");
        assert_eq!(s.cumulative[5], 2, "3 ms is within le 0.005");
        assert_eq!(s.count(), 3);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = Arc::new(Histogram::<Latency>::default());
        let threads: Vec<_> = (0..SHARDS as u64 + 3)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe_us((t * 7919 + i * 104_729) % 20_000_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        let n = (SHARDS as u64 + 3) * 10_000;
        assert_eq!(s.count(), n);
        let expected: u64 = (0..SHARDS as u64 + 3)
            .flat_map(|t| (0..10_000u64).map(move |i| (t * 7919 + i * 104_729) % 20_000_000))
            .sum();
        assert_eq!(s.sum_us, expected);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn one_member_in_the_sample_size_carries_the_publish_time() {
        let carried: Vec<usize> = (0..200).filter(|&n| sampled_ts(n, 7) == 7).collect();
        assert_eq!(carried, [0, 64, 128, 192]);
        assert!((0..200).all(|n| [0, 7].contains(&sampled_ts(n, 7))));
    }

    #[test]
    fn a_sender_clock_ahead_counts_as_zero() {
        assert_eq!(since_ms(5_000_000, 4_000), 1_000_000);
        assert_eq!(since_ms(5_000_000, 5_000), 0);
        assert_eq!(since_ms(5_000_000, 6_000), 0, "clock skew is clamped");
        assert_eq!(since_ms(5_000_000, u64::MAX), 0);
        let now = unix_now_us();
        assert!(
            now > 1_600_000_000_000_000,
            "the clock reads unix microseconds"
        );
    }
}
