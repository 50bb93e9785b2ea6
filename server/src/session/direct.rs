//! When a push may write its frame straight to an idle socket: only inside a delivery loop
//! that said so ([`DirectWrites`]), and a delivery loop says so only at everyday rates
//! ([`Pacer`]).
//!
//! A direct write saves the session task's wake-up, poll and second lock: at everyday rates
//! each socket gets one frame per message and every one of those would cost a wake-up. Under a
//! backlog (deliveries following each other without a pause, as at full speed) frames are
//! queued instead, so each session task gathers many into one `writev`.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

thread_local! {
    static ALLOWED: Cell<bool> = const { Cell::new(false) };
}

/// While alive, frames pushed on this thread may be written straight to idle sockets.
#[derive(Debug)]
pub(crate) struct DirectWrites {
    before: bool,
}

impl DirectWrites {
    fn enter() -> Self {
        Self {
            before: ALLOWED.replace(true),
        }
    }

    /// While alive, pushes on this thread queue even inside a direct delivery.
    fn paused() -> Self {
        Self {
            before: ALLOWED.replace(false),
        }
    }
}

/// A delivery to fewer sockets than this writes them all itself.
const SHARE_FROM: usize = 256;

/// Delivers to `sessions` in a direct delivery: a large one queues the first share (their
/// session tasks woken, so the runtime's other workers write those sockets) while this thread
/// writes the rest. Written by one thread alone, the last member of a 10,000-member channel
/// waited for 10,000 writes in a row while the other core idled (`docs/design.md` section 12).
/// The order of frames per socket holds either way: a socket with a frame queued takes the
/// next one queued too.
pub(crate) fn shared_out<T>(sessions: &[T], mut f: impl FnMut(&T)) {
    let queued = queued_share(sessions.len(), workers());
    if queued > 0 {
        let _queue = DirectWrites::paused();
        sessions[..queued].iter().for_each(&mut f);
    }
    sessions[queued..].iter().for_each(f);
}

/// The runtime's worker threads (1 outside a runtime).
fn workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}

/// How many of `n` sockets to leave to the other `workers - 1` workers.
fn queued_share(n: usize, workers: usize) -> usize {
    if n < SHARE_FROM || workers < 2 {
        return 0;
    }
    n * (workers - 1) / workers
}

impl Drop for DirectWrites {
    fn drop(&mut self) {
        ALLOWED.set(self.before);
    }
}

/// Whether a push on this thread may write directly.
pub(super) fn allowed() -> bool {
    ALLOWED.get()
}

/// Tells the deliveries of one feed whether they may write directly: a delivery that begins
/// within `gap` of the previous one's end found a backlog, and queues.
#[derive(Debug)]
pub(crate) struct Pacer {
    base: Instant,
    /// When the last delivery ended, in ns since `base`.
    last_end: AtomicU64,
    gap_ns: u64,
}

impl Pacer {
    pub(crate) fn new(gap: Duration) -> Self {
        Self {
            base: Instant::now(),
            last_end: AtomicU64::new(0),
            gap_ns: u64::try_from(gap.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A delivery begins: direct writes while the returned guard lives, unless it follows the
    /// previous one too closely. Call [`Pacer::end`] when it is done.
    pub(crate) fn begin(&self) -> Option<DirectWrites> {
        let last = self.last_end.load(Ordering::Relaxed);
        (last == 0 || self.now_ns().saturating_sub(last) >= self.gap_ns).then(DirectWrites::enter)
    }

    /// The delivery is done.
    pub(crate) fn end(&self) {
        self.last_end.store(self.now_ns().max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_writes_only_inside_a_paced_delivery() {
        assert!(!allowed());
        let p = Pacer::new(Duration::from_secs(3600));
        {
            let _g = p.begin().expect("the first delivery writes directly");
            assert!(allowed());
        }
        assert!(!allowed(), "the guard restores the thread's state");
        p.end();
        assert!(p.begin().is_none(), "a delivery right after another queues");
        let quick = Pacer::new(Duration::ZERO);
        quick.end();
        let g = quick.begin();
        assert!(g.is_some() && allowed());
    }

    #[test]
    fn a_large_delivery_queues_a_share_for_the_other_workers() {
        assert_eq!(
            queued_share(SHARE_FROM - 1, 2),
            0,
            "small: all written here"
        );
        assert_eq!(queued_share(10_000, 1), 0, "one worker: all written here");
        assert_eq!(queued_share(10_000, 2), 5_000);
        assert_eq!(queued_share(9_000, 3), 6_000);
        let p = Pacer::new(Duration::ZERO);
        let _g = p.begin().expect("direct");
        let sessions: Vec<usize> = (0..1_000).collect();
        let mut direct = Vec::new();
        // Outside a runtime there is one worker: everything is written here.
        shared_out(&sessions, |_| direct.push(allowed()));
        assert!(direct.iter().all(|d| *d));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let direct = rt.block_on(async {
            let mut direct = Vec::new();
            shared_out(&sessions, |_| direct.push(allowed()));
            direct
        });
        assert_eq!(direct.iter().filter(|d| !**d).count(), 500, "half queued");
        assert!(direct[..500].iter().all(|d| !*d), "the queued share first");
        assert!(allowed(), "direct again after the share");
    }
}
