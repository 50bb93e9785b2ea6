//! Catching the presence store up with every node's writes (`PresenceStore::catch_up`, in
//! `docs/design.md` section 3) before a moved connection's `last` at the end of its grace
//! (section 16), shared by the moves that end together.
//!
//! A catch-up of cluster presence is a barrier through the broker, a round trip; thousands of
//! moves ending together would make one each. So a catch-up that began at most [`REUSE`]
//! before a caller asked serves it too (the moved client reconnected seconds before its grace
//! ended), and callers arriving while one is under way wait for that one when it is recent
//! enough. A reaper's `last` has a catch-up of its own (`Node::connected_again`).

use std::{sync::Arc, time::Duration};

use futures_util::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use tokio::time::Instant;

/// How old a catch-up may be and still serve a caller: far less than the time a client takes
/// to reconnect after a close and have its new node announce it.
pub(crate) const REUSE: Duration = Duration::from_millis(100);

/// A catch-up's outcome, shared by every caller it serves.
pub(crate) type Outcome = Result<(), Arc<impush_core::Error>>;

type Run = Shared<BoxFuture<'static, Outcome>>;

/// The latest catch-up: when it began, and its run (done or under way).
pub(crate) struct CatchUps {
    latest: std::sync::Mutex<Option<(Instant, Run)>>,
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
    /// the run, so a failure shared by many is reported once.
    pub(crate) async fn wait(
        &self,
        start: impl FnOnce() -> BoxFuture<'static, Outcome>,
    ) -> Outcome {
        let asked = Instant::now();
        let (run, mine) = {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            match latest.as_ref() {
                Some((began, run)) if *began + self.reuse >= asked => (run.clone(), false),
                _ => {
                    let run: Run = start().shared();
                    *latest = Some((asked, run.clone()));
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
}
