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
}
