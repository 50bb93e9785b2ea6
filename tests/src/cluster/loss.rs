//! The loss probe's parts (`docs/design.md` section 15), shared by the cluster suite's cases
//! (`cases/device.rs`) and the memory backbone's own run (`tests/tests/loss_probe_memory.rs`):
//! the chaos that resets and freezes [`Probe`] links, the sender that addresses every message
//! to every receiver, and the check that each receiver got each accepted id once, in order.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use impush_core::ClientId;
use rand::Rng;
use serde_json::json;

use super::{
    http::post,
    probe::{Control, Probe},
};

/// Receivers in a probe run.
pub const RECEIVERS: usize = 200;
/// Messages per second to every receiver (each message is addressed to all of them).
pub const RATE: u64 = 20;
/// How long messages flow while links break.
pub const RUN: Duration = Duration::from_secs(10);
/// `[limits]` keys that find dead peers within a couple of seconds (a frozen link stops
/// answering pings).
pub const LIVELY: &str = "ping_interval = \"1s\"\npong_timeout = \"1s\"\n";

/// Resets or freezes a random probe's link every 40 ms for `run`.
pub fn chaos(probes: &[Probe], run: Duration) -> tokio::task::JoinHandle<()> {
    let probes = probes.to_vec();
    tokio::spawn(async move {
        let start = Instant::now();
        while start.elapsed() < run {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let (i, reset, pause) = {
                let mut rng = rand::rng();
                (
                    rng.random_range(0..probes.len()),
                    rng.random_bool(0.6),
                    // From at once to 1.5 s: a client back before its node has seen its old
                    // link die names it (`replaces=`), and the node hands back what that link
                    // held before anything newer (`docs/design.md` section 15).
                    Duration::from_millis(rng.random_range(0..1500)),
                )
            };
            probes[i].control(if reset {
                Control::Reset { pause }
            } else {
                Control::Freeze(pause + Duration::from_millis(500))
            });
        }
    })
}

/// What the sender did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Ids of the messages the API accepted, in the order they were sent.
    pub accepted: Vec<String>,
    /// Send attempts.
    pub attempts: u64,
    /// Attempts the API refused.
    pub refused: usize,
}

/// Sends message number `i` (its `data`) from `sender` to all `receivers` through `send_url`
/// (`POST /api/v1/messages`) at `RATE` per second for `run`; `tick` runs before each send with
/// the time since the start (a case kills and restarts nodes there).
pub async fn send_to_all(
    send_url: &str,
    receivers: &[ClientId],
    run: Duration,
    mut tick: impl FnMut(Duration),
) -> Sent {
    let to: Vec<&str> = receivers.iter().map(ClientId::as_str).collect();
    let mut sent = Sent::default();
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < run {
        tick(start.elapsed());
        let (status, body) = post(
            send_url.to_owned(),
            json!({"from": "sender", "to": to, "data": sent.attempts, "receipt": false}),
        )
        .await;
        if status == 200 {
            sent.accepted
                .push(body["id"].as_str().unwrap_or_default().to_owned());
        } else {
            sent.refused += 1;
        }
        sent.attempts += 1;
        next += Duration::from_millis(1000 / RATE);
        tokio::time::sleep_until(next.into()).await;
    }
    assert!(
        sent.accepted.len() as u64 > sent.attempts / 2,
        "most sends accepted: {} of {} ({} refused)",
        sent.accepted.len(),
        sent.attempts,
        sent.refused
    );
    sent
}

/// What the check found (it panics on a loss, and on disorder when asked to check order).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Frames that repeated an id, which the probes dropped.
    pub duplicate_frames: usize,
    /// Arrivals before an older message from the same sender.
    pub inversions: usize,
}

/// Waits (up to a minute) until every probe has every accepted id, panicking with what is
/// missing if one never does; then checks order per sender when `ordered`, counts it
/// otherwise, and stops the probes.
pub async fn check_every_receiver(
    probes: &[Probe],
    sent: &Sent,
    ordered: bool,
    label: &str,
) -> Outcome {
    let want: HashSet<&str> = sent.accepted.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in probes {
        loop {
            let seen = p.seen();
            let got: HashSet<&str> = seen.messages.iter().map(|(id, _, _)| id.as_str()).collect();
            if want.is_subset(&got) {
                break;
            }
            if Instant::now() > deadline {
                let missing: Vec<(usize, &str)> = sent
                    .accepted
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| !got.contains(id.as_str()))
                    .map(|(i, id)| (i, id.as_str()))
                    .collect();
                panic!(
                    "{label}: {}: {} of {} accepted messages never arrived (accepted as number, \
                     id: {missing:?}); connections {:?}, closes {:?}",
                    p.client,
                    missing.len(),
                    want.len(),
                    seen.nodes,
                    seen.closes,
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut outcome = Outcome::default();
    for p in probes {
        let seen = p.seen();
        outcome.duplicate_frames += seen.duplicates;
        let order: Vec<u64> = seen
            .messages
            .iter()
            .filter(|(id, _, _)| want.contains(id.as_str()))
            .map(|(_, _, data)| data.as_u64().unwrap_or_default())
            .collect();
        outcome.inversions += order.windows(2).filter(|w| w[0] > w[1]).count();
        if ordered && order.windows(2).any(|w| w[0] > w[1]) {
            let how: Vec<String> = order
                .iter()
                .zip(&seen.how)
                .map(|(n, (c, h))| format!("{n}@{c}{}", &h[..1]))
                .collect();
            panic!(
                "{label}: {}: out of order (number@connection, l/s/r: live, stored, \
                 redelivered): {}; connections {:?}, closes {:?}",
                p.client,
                how.join(" "),
                seen.nodes,
                seen.closes
            );
        }
        p.control(Control::Stop);
    }
    eprintln!(
        "loss probe ({label}): {} receivers x {} accepted messages ({} sends, {} refused), 0 \
         lost, {} duplicate frames dropped by id, {} arrivals before an older message",
        probes.len(),
        sent.accepted.len(),
        sent.attempts,
        sent.refused,
        outcome.duplicate_frames,
        outcome.inversions
    );
    outcome
}
