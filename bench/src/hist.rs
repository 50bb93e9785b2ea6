//! [`LatHist`]: a mergeable latency histogram with log-linear buckets (16 per power of two,
//! so any reported percentile is within 6.25% of the true value), plus the exact max.
//!
//! Workers in separate processes each keep one and ship the bucket counts to the parent, which
//! adds them up; percentiles of the merged histogram are the cluster-wide percentiles.

use serde::{Deserialize, Serialize};

const SUB: u32 = 16;
const BUCKETS: usize = 64 * SUB as usize;

/// Latencies in nanoseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatHist {
    counts: Vec<u64>,
    max: u64,
    total: u64,
}

impl Default for LatHist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            max: 0,
            total: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < u64::from(SUB) {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 4
    let shift = exp - SUB.trailing_zeros();
    let sub = (v >> shift) as u32 - SUB; // 0..SUB
    ((exp - SUB.trailing_zeros() + 1) * SUB + sub) as usize
}

/// The largest value that falls in bucket `i` (so percentiles never under-report).
fn upper(i: usize) -> u64 {
    let i = i as u64;
    let sub = u64::from(SUB);
    if i < sub {
        return i;
    }
    let shift = i / sub - 1;
    let base = (sub + i % sub) << shift;
    base + (1u64 << shift) - 1
}

impl LatHist {
    pub(crate) fn record(&mut self, ns: u64) {
        let b = bucket(ns).min(BUCKETS - 1);
        self.counts[b] += 1;
        self.max = self.max.max(ns);
        self.total += 1;
    }

    pub(crate) fn merge(&mut self, other: &LatHist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), in ns.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    /// Non-empty buckets as (upper bound ns, count), for charts.
    pub(crate) fn buckets(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (upper(i), *c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_close() {
        let mut h = LatHist::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000f64),
            (0.9, 90_000_000.0),
            (0.99, 99_000_000.0),
        ] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.07, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000_000);
        let mut m = LatHist::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count(), 200_000);
        assert_eq!(m.quantile(0.5), h.quantile(0.5));
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 31, 32, 1000, 1 << 20, u64::MAX / 2] {
            let b = bucket(v);
            assert!(b >= last);
            assert!(upper(b) >= v, "{v}");
            last = b;
        }
    }
}
