//! Planned moves of clients between nodes (`docs/design.md` section 16): drain (this node is
//! going away) and return home (their owner is live again).
//!
//! A move closes a connection with 1012, which tells the client to reconnect at once with a
//! fresh URL; connections are closed one by one, spread over a period (jittered), so their
//! clients reconnect at a bounded rate instead of all at once.
//!
//! A planned move is not a logout: the closed connection keeps its presence entry (and so its
//! client's channels) for `cluster.move_grace`, long enough for the client to connect to its
//! new node. Its offline event (`moved: true`) comes after that, and says `last: false` when
//! the client is back. A client that does not come back within the grace is reported gone
//! (`last: true`), as it is.

use std::{sync::Arc, time::Duration};

use impush_core::{ClientId, Event, NodeState};
use rand::seq::SliceRandom;

use super::Node;
use crate::session::{self, SessionHandle};

impl Node {
    /// Closes `sessions` with 1012 one after another over `period`, skipping any already
    /// scheduled; returns how many it scheduled.
    pub(crate) fn move_gradually(
        self: &Arc<Self>,
        sessions: Vec<Arc<SessionHandle>>,
        period: Duration,
    ) -> usize {
        let mut batch: Vec<_> = sessions.into_iter().filter(|s| s.schedule_move()).collect();
        let n = batch.len();
        if n == 0 {
            return 0;
        }
        batch.shuffle(&mut rand::rng());
        let node = self.clone();
        self.moves.spawn(async move {
            paced(batch, period, |s| {
                if s.close(session::close::MOVED) {
                    crate::metrics::Metrics::bump(&node.metrics.moved);
                }
            })
            .await;
        });
        n
    }

    /// Starts draining: marks this node draining in presence at once (it is no longer handed
    /// out), then moves every client to its next node over `cluster.drain_period`. Returns
    /// `false`, doing nothing, when no other node is live to take them (shutdown then closes
    /// them with 1001 as usual).
    pub(crate) async fn drain(self: &Arc<Self>) -> bool {
        let others_live = self
            .cluster
            .statuses()
            .iter()
            .any(|(id, s)| id != &self.id && *s == impush_core::NodeStatus::Live);
        if !others_live {
            return false;
        }
        self.set_state(NodeState::Draining);
        // Tell the store now, not at the next heartbeat, so helpers stop handing us out
        // within one refresh of their view.
        if let Err(e) = self
            .presence
            .heartbeat(&self.id, self.lease, NodeState::Draining)
            .await
        {
            self.presence_error("heartbeat (drain)", &e);
        }
        // Helpers and other nodes read the live view every third of a lease: until they have,
        // a client closed now would be handed this node's URL again (and refused).
        tokio::time::sleep(self.lease / 3 + Duration::from_millis(100)).await;
        let all = self.registry.sessions_of(|_| true);
        tracing::info!(connections = all.len(), period = ?self.cluster_timing.drain_period, "draining");
        self.move_gradually(all, self.cluster_timing.drain_period);
        true
    }

    /// Waits until every connection moved away and every moved connection's grace ended (or
    /// `limit` passed).
    pub(crate) async fn drained(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.registry.for_all(|_| {}) == 0 && self.moves.is_empty() && self.parked.is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of a connection closed for a move: it leaves the local index now (nothing more
    /// is delivered to it), and presence after `cluster.move_grace`.
    pub(super) fn park(self: &Arc<Self>, handle: Arc<SessionHandle>, last_here: bool) {
        if last_here {
            self.registry.forget_channels(&handle.client);
        }
        let node = self.clone();
        let grace = self.cluster_timing.move_grace;
        self.parked.spawn(async move {
            tokio::time::sleep(grace).await;
            node.leave_presence(&handle, true).await;
        });
    }

    /// Removes a closed connection from presence (its client's channels too when it was the
    /// client's last anywhere and memberships do not persist) and publishes its offline event.
    pub(super) async fn leave_presence(self: &Arc<Self>, handle: &SessionHandle, moved: bool) {
        let client: &ClientId = &handle.client;
        // With no linger the store step below ends the memberships of a last connection:
        // what they were is read first, for the `left` hooks (`Node::end_memberships`).
        let channels = if self.clear_channels_now() {
            self.channels_for_left_hooks(client).await
        } else {
            Vec::new()
        };
        // A moved client connects to its next node at once: what that node wrote must be in
        // the view this count comes from, or a client that is back looks gone.
        if moved {
            self.catch_up_presence(super::catch_up::Since::Recently)
                .await;
        }
        let remaining = {
            let _gate = self.repair.gate.read().await;
            match self
                .presence
                .disconnect(
                    &self.id,
                    client,
                    &handle.connection,
                    self.clear_channels_now(),
                )
                .await
            {
                Ok(n) => Some(n),
                Err(e) => {
                    self.presence_error("disconnect", &e);
                    self.mark_dirty();
                    None
                }
            }
        };
        // What the store counts is the truth across nodes (a moving client has its new
        // connection elsewhere); without it, what this node knows.
        let last = remaining.map_or_else(|| !self.registry.is_local(client), |n| n == 0);
        if remaining == Some(0) {
            self.post_left(client, &channels);
            self.linger(vec![client.clone()]);
        }
        tracing::info!(%client, connection = %handle.connection, last, moved, "disconnected");
        self.publish_offline(Event::Offline {
            client: client.clone(),
            node: self.id.clone(),
            connection: handle.connection.clone(),
            metadata: handle.metadata.clone(),
            last,
            moved,
        })
        .await;
    }
}

/// Calls `f` on each of `items` in turn, spread over `period`: item `k` (from 0) at `k + 0.5`
/// to `k + 1.5` steps (`period / n`) from the start, so the rate stays bounded and nodes moving
/// clients at the same time do not fall into step. The times are kept against the start, not
/// slept one after another: sleeps shorter than the timer's millisecond and a busy node would
/// otherwise stretch the period (770 moves planned over 2 s took 8 s on a loaded machine).
async fn paced<T>(items: Vec<T>, period: Duration, mut f: impl FnMut(T)) {
    let step = period / u32::try_from(items.len().max(1)).unwrap_or(u32::MAX);
    let start = tokio::time::Instant::now();
    for (k, item) in items.into_iter().enumerate() {
        let due = step.mul_f64(k as f64 + 0.5 + rand::random::<f64>());
        tokio::time::sleep_until(start + due).await;
        f(item);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// 2,000 moves over 200 ms: steps of 0.1 ms, below the timer's millisecond. Slept one
    /// after another they took at least 2 s; kept against the start they end with the period.
    #[tokio::test]
    async fn moves_keep_their_period_when_steps_are_shorter_than_the_timer() {
        let period = Duration::from_millis(200);
        let started = Instant::now();
        let mut done = Vec::new();
        paced((0..2000).collect(), period, |k: u32| {
            done.push((k, started.elapsed()))
        })
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "took {took:?} for a period of {period:?}"
        );
        assert!(took >= period - period / 100, "ended early: {took:?}");
        assert!(done.windows(2).all(|w| w[0].0 < w[1].0), "in order");
        // Spread, not at once: the first half is done around half the period.
        let (_, half) = done[999];
        assert!(
            half >= Duration::from_millis(90),
            "half done after {half:?}"
        );
    }
}
