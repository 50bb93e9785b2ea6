//! Request/reply over the presence topic: a request goes to one node or to every node, and
//! the asker collects answers until every expected node answered or the query timeout passed,
//! then reports the nodes that did not answer instead of hanging. Also the barriers an
//! instance has seen ([`Barriers`]), for read-your-writes across instances.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use impush_core::NodeId;
use tokio::{
    sync::{mpsc, Notify},
    time::Instant,
};

use crate::wire::Reply;

/// Requests of one instance waiting for answers.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<(NodeId, Reply)>>>,
}

/// Answers to one request, and the expected nodes that did not answer in time.
#[derive(Debug)]
pub(crate) struct Gathered {
    pub(crate) replies: Vec<(NodeId, Reply)>,
    pub(crate) missing: Vec<NodeId>,
}

/// A request registered with [`Pending::open`]; unregisters itself when dropped.
pub(crate) struct Waiting<'a> {
    pending: &'a Pending,
    pub(crate) rid: u64,
    rx: mpsc::UnboundedReceiver<(NodeId, Reply)>,
}

impl Pending {
    /// Registers a new request and returns its id and where its answers arrive.
    pub(crate) fn open(&self) -> Waiting<'_> {
        let rid = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(rid, tx);
        }
        Waiting {
            pending: self,
            rid,
            rx,
        }
    }

    /// Hands an answer to its request (late answers of finished requests are dropped).
    pub(crate) fn deliver(&self, rid: u64, node: NodeId, reply: Reply) {
        if let Ok(w) = self.waiting.lock() {
            if let Some(tx) = w.get(&rid) {
                let _ = tx.send((node, reply));
            }
        }
    }
}

impl Waiting<'_> {
    /// Collects answers from `expected` (answers from other nodes are kept too) until all of
    /// `expected` answered or `timeout` passed.
    pub(crate) async fn gather(mut self, expected: &[NodeId], timeout: Duration) -> Gathered {
        let mut outstanding: HashSet<&NodeId> = expected.iter().collect();
        let mut replies = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !outstanding.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((node, reply))) => {
                    if outstanding.remove(&node) || !expected.contains(&node) {
                        replies.push((node, reply));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut missing: Vec<NodeId> = outstanding.into_iter().cloned().collect();
        missing.sort();
        Gathered { replies, missing }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.pending.waiting.lock() {
            w.remove(&self.rid);
        }
    }
}

/// Barriers remembered (a reader waits for one it expects; older ones are forgotten).
const BARRIERS: usize = 1024;

/// A barrier: the publishing instance and a token it drew.
pub(crate) type BarrierKey = (String, u64);

/// The last [`BARRIERS`] barriers an instance read from the feed. A barrier published after
/// some writes and seen here means this instance has seen those writes.
#[derive(Debug, Default)]
pub(crate) struct Barriers {
    seen: Mutex<VecDeque<BarrierKey>>,
    arrived: Notify,
}

impl Barriers {
    /// Records a barrier read from the feed (forgetting the oldest past [`BARRIERS`]) and wakes
    /// whoever waits.
    pub(crate) fn record(&self, key: BarrierKey) {
        if let Ok(mut b) = self.seen.lock() {
            if b.len() >= BARRIERS {
                b.pop_front();
            }
            b.push_back(key);
        }
        self.arrived.notify_waiters();
    }

    fn contains(&self, key: &BarrierKey) -> bool {
        self.seen.lock().is_ok_and(|b| b.contains(key))
    }

    /// Waits until `key` was seen, for at most `timeout`; false if it was not.
    pub(crate) async fn wait(&self, key: &BarrierKey, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before the check, so a barrier recorded in between still wakes us.
            let arrived = self.arrived.notified();
            if self.contains(key) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(n: u64) -> BarrierKey {
        ("i1".to_owned(), n)
    }

    #[tokio::test]
    async fn a_barrier_recorded_before_or_while_waiting_is_seen() {
        let b = Arc::new(Barriers::default());
        b.record(key(1));
        assert!(b.wait(&key(1), Duration::from_secs(5)).await);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait(&key(2), Duration::from_secs(5)).await }
        });
        // Most likely the waiter is parked by now (the test runtime has one thread); either way
        // recording the barrier must let it finish.
        tokio::task::yield_now().await;
        b.record(key(2));
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn an_unseen_barrier_times_out() {
        let b = Barriers::default();
        b.record(("other".to_owned(), 1));
        assert!(!b.wait(&key(1), Duration::from_millis(30)).await);
    }

    #[tokio::test]
    async fn only_the_latest_barriers_are_remembered() {
        let b = Barriers::default();
        for n in 0..=BARRIERS as u64 {
            b.record(key(n));
        }
        assert!(
            !b.wait(&key(0), Duration::from_millis(1)).await,
            "the oldest is forgotten"
        );
        assert!(b.wait(&key(1), Duration::from_millis(1)).await);
        assert!(
            b.wait(&key(BARRIERS as u64), Duration::from_millis(1))
                .await
        );
    }

    #[tokio::test]
    async fn gather_reports_the_nodes_that_did_not_answer() {
        let p = Pending::default();
        let w = p.open();
        let n1 = NodeId::new("n1").unwrap();
        let n2 = NodeId::new("n2").unwrap();
        p.deliver(w.rid, n1.clone(), Reply::Done);
        p.deliver(w.rid + 1, n2.clone(), Reply::Done); // another request's answer
        let g = w
            .gather(&[n1.clone(), n2.clone()], Duration::from_millis(30))
            .await;
        assert_eq!(g.replies.len(), 1);
        assert_eq!(g.replies[0].0, n1);
        assert_eq!(g.missing, vec![n2]);
    }
}
