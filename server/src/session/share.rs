//! Sharing a large direct delivery out among the runtime's workers: the delivery loop writes
//! a part of its sockets itself and queues the frame for the rest without waking their tasks,
//! for flusher tasks that the other workers run (`docs/design.md` section 12).

use std::sync::Arc;

use super::{
    direct::{self, DirectWrites, Mode},
    SessionHandle,
};

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
    if share > 0 && direct::mode() == Mode::Paced {
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

#[cfg(test)]
mod tests {
    use super::*;

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
