//! What one run of the rolling scenario measured, from the clients' records and what the
//! traffic got accepted: gaps, reconnect rates, losses.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::client::{Client, Record};

/// What the traffic got accepted.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Point-to-point messages: the receiver (index into the clients) and the number.
    pub(crate) direct: Vec<(usize, u64)>,
    /// Channel publications' numbers.
    pub(crate) channel: Vec<u64>,
    /// Sends the helper refused (an error).
    pub(crate) failed: usize,
}

/// Accepted messages that have not arrived yet: point to point, and channel frames
/// (publication x member).
pub(crate) fn missing(clients: &[Client], sent: &Sent) -> (usize, usize) {
    let records: Vec<_> = clients.iter().map(|c| c.record.lock()).collect();
    let mut direct = 0;
    for (i, s) in &sent.direct {
        if records[*i].as_ref().is_ok_and(|r| !r.direct.contains(s)) {
            direct += 1;
        }
    }
    let mut channel = 0;
    for r in records.iter().flatten() {
        channel += sent
            .channel
            .iter()
            .filter(|s| !r.channel.contains(s))
            .count();
    }
    (direct, channel)
}

/// The most of `times` within any `window` (sorts them).
pub(crate) fn max_within(times: &mut [Instant], window: Duration) -> usize {
    times.sort_unstable();
    let (mut lo, mut max) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= window {
            lo += 1;
        }
        max = max.max(hi - lo + 1);
    }
    max
}

/// The `q` quantile of sorted `v` (nearest rank), 0 when empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The figures of one run, as JSON: gaps and reconnects counted from `since` (the start of
/// the restart), losses over everything `sent`.
pub(crate) fn outcome(clients: &[Client], sent: &Sent, since: Instant, nodes: usize) -> Value {
    let second = Duration::from_secs(1);
    let mut longest_ms = Vec::with_capacity(clients.len());
    let mut opened = Vec::new();
    let mut per_node_opened: BTreeMap<usize, Vec<Instant>> = BTreeMap::new();
    let mut per_node_attempts: BTreeMap<usize, Vec<Instant>> = BTreeMap::new();
    let (mut refused, mut duplicates, mut unrecovered) = (0usize, 0u64, 0u64);
    let (mut lost_direct, mut lost_channel, mut unexcused) = (0usize, 0usize, 0usize);
    let mut clients_told = 0usize;
    for (i, c) in clients.iter().enumerate() {
        let Ok(r) = c.record.lock() else { continue };
        let r: &Record = &r;
        let longest = r
            .gaps
            .iter()
            .filter(|(end, _)| *end > since)
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        longest_ms.push(longest);
        for (node, t) in r.opened.iter().filter(|(_, t)| *t > since) {
            opened.push(*t);
            per_node_opened.entry(*node).or_default().push(*t);
            per_node_attempts.entry(*node).or_default().push(*t);
        }
        for (node, t) in r.refused.iter().filter(|(_, t)| *t > since) {
            refused += 1;
            per_node_attempts.entry(*node).or_default().push(*t);
        }
        duplicates += r.duplicates;
        unrecovered += r.unrecovered;
        clients_told += usize::from(r.unrecovered > 0);
        lost_direct += sent
            .direct
            .iter()
            .filter(|(to, s)| *to == i && !r.direct.contains(s))
            .count();
        let missed = sent
            .channel
            .iter()
            .filter(|s| !r.channel.contains(s))
            .count();
        lost_channel += missed;
        if r.unrecovered == 0 {
            unexcused += missed;
        }
    }
    longest_ms.sort_by(f64::total_cmp);
    let reconnects = opened.len();
    let max_per_sec = max_within(&mut opened, second);
    let per_node: Vec<Value> = (0..nodes)
        .map(|n| {
            let mut o = per_node_opened.remove(&n).unwrap_or_default();
            let mut a = per_node_attempts.remove(&n).unwrap_or_default();
            json!({
                "node": format!("n{}", n + 1),
                "reconnects": o.len(),
                "max_reconnects_per_sec": max_within(&mut o, second),
                "max_attempts_per_sec": max_within(&mut a, second),
            })
        })
        .collect();
    let max_node_per_sec = per_node
        .iter()
        .filter_map(|n| n["max_reconnects_per_sec"].as_u64())
        .max()
        .unwrap_or(0);
    let max_node_attempts = per_node
        .iter()
        .filter_map(|n| n["max_attempts_per_sec"].as_u64())
        .max()
        .unwrap_or(0);
    json!({
        "longest_gap_ms": {
            "p50": quantile(&longest_ms, 0.50),
            "p99": quantile(&longest_ms, 0.99),
            "max": quantile(&longest_ms, 1.0),
        },
        "reconnects": reconnects,
        "reconnects_per_sec_max": max_per_sec,
        "node_reconnects_per_sec_max": max_node_per_sec,
        "node_attempts_per_sec_max": max_node_attempts,
        "refused_connects": refused,
        "per_node": per_node,
        "direct_accepted": sent.direct.len(),
        "channel_accepted": sent.channel.len(),
        "sends_failed": sent.failed,
        "direct_lost": lost_direct,
        "channel_frames_lost": lost_channel,
        "channel_frames_lost_unannounced": unexcused,
        "resume_unrecovered": unrecovered,
        "clients_told_unrecovered": clients_told,
        "duplicates_dropped": duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_quantiles() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut times = vec![ms(0), ms(900), ms(999), ms(1000), ms(2500)];
        assert_eq!(max_within(&mut times, Duration::from_secs(1)), 3);
        assert_eq!(max_within(&mut [], Duration::from_secs(1)), 0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
