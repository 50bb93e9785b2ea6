//! Request/reply over the presence topic: a request goes to one node or to every node, and
//! the asker collects answers until every expected node answered or the query timeout passed,
//! then reports the nodes that did not answer instead of hanging.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use impush_core::NodeId;
use tokio::sync::mpsc;

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
