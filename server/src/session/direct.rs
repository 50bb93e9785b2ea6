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
    static MODE: Cell<Mode> = const { Cell::new(Mode::Queue) };
}

/// What a push on this thread does with a frame for an idle socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Queue it and wake the session task (outside delivery loops, and under a backlog).
    Queue,
    /// Write it at once.
    Write,
    /// Write it at once; a large delivery shares its sockets out (`share`).
    Paced,
    /// Queue it without waking the session task: a flusher writes it (see `share`).
    Defer,
}

/// While alive, frames pushed on this thread may be written straight to idle sockets.
#[derive(Debug)]
pub(crate) struct DirectWrites {
    before: Mode,
}

impl DirectWrites {
    pub(super) fn set(mode: Mode) -> Self {
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

impl Mode {
    /// Whether a frame for an idle socket is written at once.
    pub(super) fn writes(self) -> bool {
        matches!(self, Mode::Write | Mode::Paced)
    }
}

/// Whether a push on this thread may write directly.
#[cfg(test)]
fn allowed() -> bool {
    mode().writes()
}

/// Tells the deliveries of one feed whether they may write directly: a delivery that begins
/// within `gap` of the previous one's end found a backlog, and queues; with a `share_gap`, one
/// that begins that long or more after it is paced, and may share its sockets out (`share`).
/// In between (a burst's deliveries, each soon after the last) a delivery writes them all
/// itself: its flushers would race the next delivery's frames for the same sockets. Feeds whose
/// deliveries go to one client (point to point) have nothing to share and no share gap.
#[derive(Debug)]
pub(crate) struct Pacer {
    base: Instant,
    /// When the last delivery ended, in ns since `base`.
    last_end: AtomicU64,
    gap_ns: u64,
    share_gap_ns: Option<u64>,
}

impl Pacer {
    pub(crate) fn new(gap: Duration, share_gap: Option<Duration>) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            base: Instant::now(),
            last_end: AtomicU64::new(0),
            gap_ns: ns(gap),
            share_gap_ns: share_gap.map(ns),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A delivery begins: direct writes while the returned guard lives, unless it follows the
    /// previous one too closely. Call [`Pacer::end`] when it is done.
    pub(crate) fn begin(&self) -> Option<DirectWrites> {
        let last = self.last_end.load(Ordering::Relaxed);
        let quiet = match last {
            0 => u64::MAX,
            last => self.now_ns().saturating_sub(last),
        };
        if self.share_gap_ns.is_some_and(|g| quiet >= g) {
            Some(DirectWrites::set(Mode::Paced))
        } else if quiet >= self.gap_ns {
            Some(DirectWrites::set(Mode::Write))
        } else {
            None
        }
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
        let p = Pacer::new(Duration::from_secs(3600), Some(Duration::from_secs(3600)));
        {
            let _g = p.begin().expect("the first delivery writes directly");
            assert!(allowed());
        }
        assert!(!allowed(), "the guard restores the thread's state");
        p.end();
        assert!(p.begin().is_none(), "a delivery right after another queues");
        // Paced (quiet for the share gap) shares out; a burst's delivery writes by itself.
        let burst = Pacer::new(Duration::ZERO, Some(Duration::from_secs(3600)));
        {
            let _g = burst.begin().expect("the first delivery writes directly");
            assert_eq!(mode(), Mode::Paced);
        }
        burst.end();
        {
            let _g = burst.begin().expect("past the gap");
            assert_eq!(mode(), Mode::Write, "soon after the last: no share");
        }
        let quick = Pacer::new(Duration::ZERO, Some(Duration::ZERO));
        quick.end();
        let g = quick.begin();
        assert!(g.is_some() && allowed());
        drop(g);
        // Point to point: never paced for a share, even the first delivery.
        let direct = Pacer::new(Duration::ZERO, None);
        let _g = direct.begin().expect("writes directly");
        assert_eq!(mode(), Mode::Write);
    }
}
