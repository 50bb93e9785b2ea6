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
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::SessionHandle;

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Queue) };
}

/// What a push on this thread does with a frame for an idle socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Queue it and wake the session task (outside delivery loops, and under a backlog).
    Queue,
    /// Write it at once.
    Write,
    /// Queue it without waking the session task: a flusher writes it (see [`shared_out`]).
    Defer,
}

/// While alive, frames pushed on this thread may be written straight to idle sockets.
#[derive(Debug)]
pub(crate) struct DirectWrites {
    before: Mode,
}

impl DirectWrites {
    fn enter() -> Self {
        Self::set(Mode::Write)
    }

    fn set(mode: Mode) -> Self {
        Self {
            before: MODE.replace(mode),
        }
    }
}

impl Drop for DirectWrites {
    fn drop(&mut self) {
        MODE.set(self.before);
    }
}

/// What a push on this thread does with a frame for an idle socket.
pub(super) fn mode() -> Mode {
    MODE.get()
}

/// Whether a push on this thread may write directly.
#[cfg(test)]
fn allowed() -> bool {
    mode() == Mode::Write
}

/// A delivery to fewer sockets than this writes them all itself.
const SHARE_FROM: usize = 256;
/// Sockets per flusher task: small enough that the workers even out their shares by taking
/// flushers from each other, large enough that a task per chunk costs nothing per frame.
const FLUSH_CHUNK: usize = 1024;

/// Delivers to `sessions` in a direct delivery; returns how many there were. A large one
/// queues its frames for a share of the sockets without waking their tasks and hands that
/// share to flusher tasks, which the runtime's other workers run, while this thread writes the
/// rest. Written by one thread alone, the last member of a 10,000-member channel waited for
/// 10,000 writes in a row while the other core idled; woken one by one, the share's session
/// tasks cost a wake-up and a poll per frame (`docs/design.md` section 12). The order of frames
/// per socket holds: a frame pushed while one is queued is queued behind it, and a flusher
/// writes from the front.
pub(crate) fn shared_out(
    mut sessions: Vec<Arc<SessionHandle>>,
    mut f: impl FnMut(&SessionHandle),
) -> usize {
    let n = sessions.len();
    let share = deferred_share(n, workers());
    if share > 0 && mode() == Mode::Write {
        let rest = sessions.split_off(share);
        {
            let _defer = DirectWrites::set(Mode::Defer);
            sessions.iter().for_each(|s| f(s));
        }
        while !sessions.is_empty() {
            let chunk: Vec<_> = sessions.drain(..FLUSH_CHUNK.min(sessions.len())).collect();
            tokio::spawn(async move { chunk.iter().for_each(|s| s.flush_deferred()) });
        }
        rest.iter().for_each(|s| f(s));
    } else {
        sessions.iter().for_each(|s| f(s));
    }
    n
}

/// The runtime's worker threads (1 outside a runtime).
fn workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}

/// How many of `n` sockets to leave to the other `workers - 1` workers.
fn deferred_share(n: usize, workers: usize) -> usize {
    if n < SHARE_FROM || workers < 2 {
        return 0;
    }
    n * (workers - 1) / workers
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
    fn a_large_delivery_leaves_a_share_to_the_other_workers() {
        assert_eq!(
            deferred_share(SHARE_FROM - 1, 2),
            0,
            "small: all written here"
        );
        assert_eq!(deferred_share(10_000, 1), 0, "one worker: all written here");
        assert_eq!(deferred_share(10_000, 2), 5_000);
        assert_eq!(deferred_share(9_000, 3), 6_000);
    }
}
