//! Catching the presence store up with every node's writes (`PresenceStore::catch_up`, in
//! `docs/design.md` section 3) before a `last` is decided or confirmed (section 16), shared by
//! the callers of the same moment.
//!
//! A catch-up of cluster presence is a barrier through the broker, a round trip; thousands of
//! `last`s at once would make one each. Two ways to share one:
//! - [`CatchUps::wait`]: a catch-up that began at most [`REUSE`] before the caller asked serves
//!   it (a moved connection's count at the end of its grace: the client reconnected seconds
//!   before);
//! - [`CatchUps::wait_fresh`]: only one that begins after the caller asked serves it (a
//!   reaper's `last`, and the check after any `last` went out: a client reconnecting just
//!   then is exactly the one that matters). Callers arriving while one is under way share the
//!   next, which begins when that one ends.

use std::{sync::Arc, time::Duration};

use futures_util::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use tokio::time::Instant;

/// How old a catch-up may be and still serve a caller: far less than the time a client takes
/// to reconnect after a close and have its new node announce it.
pub(crate) const REUSE: Duration = Duration::from_millis(100);

/// Which catch-up serves a caller: one begun at most [`REUSE`] before it asked
/// ([`CatchUps::wait`]), or only one begun after ([`CatchUps::wait_fresh`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Since {
    Recently,
    Now,
}

/// A catch-up's outcome, shared by every caller it serves.
pub(crate) type Outcome = Result<(), Arc<impush_core::Error>>;

type Run = Shared<BoxFuture<'static, Outcome>>;

/// A catch-up: when it was asked for, its run, and the run it waits for before it begins
/// (the one under way when it was asked for), if any.
struct Slot {
    asked: Instant,
    run: Run,
    after: Option<Run>,
}

impl Slot {
    fn done(&self) -> bool {
        self.run.peek().is_some()
    }

    /// Whether it has not begun yet: the run it waits for is still under way.
    fn not_begun(&self) -> bool {
        self.after.as_ref().is_some_and(|a| a.peek().is_none())
    }
}

/// The latest catch-up (done, under way, or waiting for the one before it).
pub(crate) struct CatchUps {
    latest: std::sync::Mutex<Option<Slot>>,
    /// How old a catch-up may be and still serve a caller ([`REUSE`]).
    reuse: Duration,
}

impl Default for CatchUps {
    fn default() -> Self {
        Self::new(REUSE)
    }
}

impl std::fmt::Debug for CatchUps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUps").finish_non_exhaustive()
    }
}

impl CatchUps {
    pub(crate) fn new(reuse: Duration) -> Self {
        Self {
            latest: std::sync::Mutex::new(None),
            reuse,
        }
    }

    /// Returns once a catch-up begun at most `reuse` before this call has ended, starting
    /// one with `start` if there is none. An error comes back only to the caller that started
    /// the run, so a failure shared by many is reported once. `start` must not begin any work
    /// before its future is polled (a run may wait for the one before it).
    pub(crate) async fn wait(
        &self,
        start: impl FnOnce() -> BoxFuture<'static, Outcome>,
    ) -> Outcome {
        let asked = Instant::now();
        self.join_or_start(asked, start, |slot| {
            slot.not_begun() || slot.asked + self.reuse >= asked
        })
        .await
    }

    /// Returns once a catch-up that began after this call has ended: one not begun yet is
    /// joined; while one is under way, the next is started (or joined) to begin when it ends.
    pub(crate) async fn wait_fresh(
        &self,
        start: impl FnOnce() -> BoxFuture<'static, Outcome>,
    ) -> Outcome {
        self.join_or_start(Instant::now(), start, Slot::not_begun)
            .await
    }

    async fn join_or_start(
        &self,
        asked: Instant,
        start: impl FnOnce() -> BoxFuture<'static, Outcome>,
        serves: impl FnOnce(&Slot) -> bool,
    ) -> Outcome {
        let (run, mine) = {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            match latest.as_ref() {
                Some(slot) if serves(slot) => (slot.run.clone(), false),
                Some(slot) if !slot.done() => {
                    let before = slot.run.clone();
                    let own = start();
                    let run: Run = {
                        let before = before.clone();
                        async move {
                            let _ = before.await;
                            own.await
                        }
                        .boxed()
                        .shared()
                    };
                    *latest = Some(Slot {
                        asked,
                        run: run.clone(),
                        after: Some(before),
                    });
                    (run, true)
                }
                _ => {
                    let run: Run = start().shared();
                    *latest = Some(Slot {
                        asked,
                        run: run.clone(),
                        after: None,
                    });
                    (run, true)
                }
            }
        };
        let outcome = run.await;
        if mine {
            outcome
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// 200 callers at once share one catch-up (its error reaches the one that started it); a
    /// caller arriving longer than `reuse` after it began makes its own.
    #[tokio::test]
    async fn callers_at_once_share_a_catch_up_and_a_later_one_makes_its_own() {
        let calls = Arc::new(AtomicUsize::new(0));
        let start = {
            let calls = calls.clone();
            move || -> BoxFuture<'static, Outcome> {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Err(Arc::new(impush_core::Error::Unavailable {
                        backend: "test",
                        source: None,
                    }))
                }
                .boxed()
            }
        };
        // A window far longer than spawning 200 tasks takes, however busy the machine.
        let ups = Arc::new(CatchUps::new(Duration::from_secs(60)));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (ups, start) = (ups.clone(), start.clone());
            all.spawn(async move { ups.wait(start).await.is_err() });
        }
        let mut errors = 0;
        while let Some(failed) = all.join_next().await {
            errors += usize::from(failed.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one catch-up for all");
        assert_eq!(errors, 1, "its error told once");

        let ups = CatchUps::new(Duration::from_millis(1));
        let _ = ups.wait(start.clone()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = ups.wait(start).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "a later caller's own");
    }

    /// A fresh wait is not served by a catch-up already under way when it asked: 50 callers
    /// arriving during one share the next, which begins when that one has ended.
    #[tokio::test]
    async fn fresh_callers_share_the_next_catch_up_not_the_one_under_way() {
        let began = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = {
            let began = began.clone();
            move || -> BoxFuture<'static, Outcome> {
                let began = began.clone();
                async move {
                    began.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    Ok(())
                }
                .boxed()
            }
        };
        let ups = Arc::new(CatchUps::default());
        let first = {
            let (ups, start) = (ups.clone(), start.clone());
            tokio::spawn(async move { ups.wait_fresh(start).await })
        };
        while began.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let asked = Instant::now();
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (ups, start) = (ups.clone(), start.clone());
            all.spawn(async move { ups.wait_fresh(start).await });
        }
        while let Some(outcome) = all.join_next().await {
            outcome.unwrap().unwrap();
        }
        first.await.unwrap().unwrap();
        let began = began.lock().unwrap().clone();
        assert_eq!(began.len(), 2, "one more catch-up for the 50: {began:?}");
        assert!(
            began[1] >= asked,
            "the one they waited for began after they asked"
        );
    }
}
