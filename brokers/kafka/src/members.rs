//! This process's members of each consumer group, so that a new member of a group joins only
//! once the members whose subscriber has left are closed (have left the group).
//!
//! A subscriber that drops its stream and subscribes again at once (a node resubscribing its
//! inbox, the conformance suite's redelivery case) would otherwise join while its old consumer
//! is still leaving, in the background. Kafka completes such a join with one more rebalance;
//! tansu's group coordinator (the broker this project tests on) can leave the new member
//! without any assignment, for good (`docs/design.md` section 3). Waiting for a leave that is
//! already under way costs a real cluster only that leave's time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

/// Whether a member's subscriber has dropped its stream.
type Gone = Box<dyn Fn() -> bool + Send + Sync>;

struct Member {
    gone: Gone,
    /// Cancelled once its consumer is closed.
    closed: CancellationToken,
}

#[derive(Default)]
pub(crate) struct Members {
    groups: Mutex<HashMap<String, Vec<Arc<Member>>>>,
}

impl Members {
    /// Registers a member of `group`; `gone` says whether its subscriber has left. Cancel the
    /// returned token once its consumer is closed.
    pub(crate) fn join(&self, group: &str, gone: Gone) -> CancellationToken {
        let closed = CancellationToken::new();
        let member = Arc::new(Member {
            gone,
            closed: closed.clone(),
        });
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let members = groups.entry(group.to_owned()).or_default();
        members.retain(|m| !m.closed.is_cancelled());
        members.push(member);
        closed
    }

    /// Waits, up to `within`, until every member of `group` whose subscriber has left is
    /// closed. Members still read are not waited for: a group has several on purpose.
    pub(crate) async fn left(&self, group: &str, within: Duration) {
        let leaving: Vec<CancellationToken> = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let Some(members) = groups.get_mut(group) else {
                return;
            };
            members.retain(|m| !m.closed.is_cancelled());
            if members.is_empty() {
                groups.remove(group);
                return;
            }
            members
                .iter()
                .filter(|m| (m.gone)())
                .map(|m| m.closed.clone())
                .collect()
        };
        let all = futures_util::future::join_all(leaving.iter().map(|t| t.cancelled()));
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::debug!(%group, "a member of this kafka group is still leaving; joining anyway");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_join_waits_for_members_that_are_leaving_and_only_for_those() {
        let members = Members::default();
        let left = Arc::new(AtomicBool::new(false));
        let flag = left.clone();
        let leaving = members.join("g", Box::new(move || flag.load(Ordering::SeqCst)));
        let _reading = members.join("g", Box::new(|| false));
        // Nobody has left: nothing to wait for (the timeout would show as a 5 s wait).
        tokio::time::timeout(
            Duration::from_secs(1),
            members.left("g", Duration::from_secs(5)),
        )
        .await
        .expect("no member is leaving");
        // One subscriber left, its consumer still open: the join waits for its close.
        left.store(true, Ordering::SeqCst);
        let wait = members.left("g", Duration::from_secs(5));
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut wait)
                .await
                .is_err(),
            "the join did not wait for the member that is leaving"
        );
        leaving.cancel();
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("the join goes on once that member is closed");
        // Another group is never waited for.
        tokio::time::timeout(
            Duration::from_secs(1),
            members.left("h", Duration::from_secs(5)),
        )
        .await
        .expect("an unknown group");
    }
}
