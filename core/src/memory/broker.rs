//! [`MemoryBroker`]: `tokio::sync::broadcast` per topic for `Fanout`, a bounded queue per
//! (topic, group) for `Queue`.
//!
//! Each `Queue` subscription (a member) remembers what it handed out until it is acked; when the
//! subscription is dropped, whatever is still unacked goes back to the front of the group's
//! queue for the next member: the same at-least-once contract a real broker gives across a
//! consumer crash.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, Notify};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use crate::{Acknowledge, Broker, Delivery, Error, Result, SubscribeMode, Subscription};

const BACKEND: &str = "memory";

/// An in-process broker: publishers and subscribers must share one `MemoryBroker` (clone the
/// `Arc`).
///
/// Bounded: a fanout subscriber more than `fanout_capacity` messages behind gets
/// `Err(Error::Lagged)`; a queue group holds at most `queue_capacity` undelivered messages and
/// [`MemoryBroker::QUEUE_MAX_BYTES`] bytes and drops the oldest beyond that (reported as `Lagged`
/// to the next member that reads). Messages published on a topic before any group subscribed to
/// it are not retained. Unacked queue deliveries return to their group when their subscription
/// is dropped.
#[derive(Debug)]
pub struct MemoryBroker {
    fanout_capacity: usize,
    queue_capacity: usize,
    closed: AtomicBool,
    topics: Mutex<HashMap<String, Topic>>,
}

#[derive(Debug)]
struct Topic {
    fanout: broadcast::Sender<Bytes>,
    groups: HashMap<String, Arc<GroupQueue>>,
}

#[derive(Debug)]
struct GroupQueue {
    capacity: usize,
    items: Mutex<Items>,
    dropped: AtomicU64,
    notify: Notify,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Items {
    queue: VecDeque<Bytes>,
    bytes: usize,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(16 * 1024, 64 * 1024)
    }
}

impl MemoryBroker {
    /// Most bytes of undelivered payloads one queue group retains.
    pub const QUEUE_MAX_BYTES: usize = 64 * 1024 * 1024;

    /// A broker with the given per-subscriber fanout buffer and per-group queue retention.
    pub fn new(fanout_capacity: usize, queue_capacity: usize) -> Self {
        Self {
            fanout_capacity: fanout_capacity.max(1),
            queue_capacity: queue_capacity.max(1),
            closed: AtomicBool::new(false),
            topics: Mutex::new(HashMap::new()),
        }
    }

    fn with_topic<R>(&self, name: &str, f: impl FnOnce(&mut Topic) -> R) -> Result<R> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("memory broker"));
        }
        let mut topics = self.topics.lock().map_err(|_| poisoned())?;
        let topic = topics.entry(name.to_owned()).or_insert_with(|| Topic {
            fanout: broadcast::channel(self.fanout_capacity).0,
            groups: HashMap::new(),
        });
        Ok(f(topic))
    }
}

fn poisoned() -> Error {
    Error::Unavailable {
        backend: BACKEND,
        source: Some("a thread panicked while holding the topic table".into()),
    }
}

impl GroupQueue {
    fn push(&self, payload: Bytes) {
        if let Ok(mut items) = self.items.lock() {
            items.bytes += payload.len();
            items.queue.push_back(payload);
            while items.queue.len() > self.capacity || items.bytes > MemoryBroker::QUEUE_MAX_BYTES {
                let Some(old) = items.queue.pop_front() else {
                    break;
                };
                items.bytes -= old.len();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Result<Bytes>> {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            return Some(Err(Error::Lagged { dropped }));
        }
        let mut items = self.items.lock().ok()?;
        let item = items.queue.pop_front()?;
        items.bytes -= item.len();
        Some(Ok(item))
    }

    /// Puts deliveries a member never acked back at the front, oldest first.
    fn requeue(&self, unacked: impl DoubleEndedIterator<Item = Bytes>) {
        if let Ok(mut items) = self.items.lock() {
            for payload in unacked.rev() {
                items.bytes += payload.len();
                items.queue.push_front(payload);
            }
        }
        self.notify.notify_one();
    }

    async fn next(&self) -> Option<Result<Bytes>> {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.pop() {
                // Pass the wake-up on: another member may be waiting while items remain.
                self.notify.notify_one();
                return Some(item);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }
}

/// One `Queue` subscription: what it handed out and has not had acked yet.
#[derive(Debug)]
struct Member {
    group: Arc<GroupQueue>,
    unacked: Mutex<BTreeMap<u64, Bytes>>,
    seq: AtomicU64,
}

impl Member {
    async fn next(self: &Arc<Self>) -> Option<Result<Delivery>> {
        let payload = match self.group.next().await? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut unacked) = self.unacked.lock() {
            unacked.insert(seq, payload.clone());
        }
        let ack = MemberAck {
            member: self.clone(),
            seq,
        };
        Some(Ok(Delivery::with_ack(payload, ack)))
    }
}

/// Acks one delivery of a [`Member`].
struct MemberAck {
    member: Arc<Member>,
    seq: u64,
}

impl Acknowledge for MemberAck {
    fn ack(self: Box<Self>) {
        if let Ok(mut unacked) = self.member.unacked.lock() {
            unacked.remove(&self.seq);
        }
    }
}

/// The state of a `Queue` subscription stream: dropping it (unsubscribing) hands whatever is
/// still unacked back to the group.
struct MemberGuard(Arc<Member>);

impl Drop for MemberGuard {
    fn drop(&mut self) {
        let unacked = match self.0.unacked.lock() {
            Ok(mut u) => std::mem::take(&mut *u),
            Err(_) => return,
        };
        if !unacked.is_empty() && !self.0.group.closed.load(Ordering::Acquire) {
            self.0.group.requeue(unacked.into_values());
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let groups: Vec<Arc<GroupQueue>> = self.with_topic(topic, |t| {
            // No fanout subscriber is fine: fanout is at-most-once.
            let _ = t.fanout.send(payload.clone());
            t.groups.values().cloned().collect()
        })?;
        for g in groups {
            g.push(payload.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        match mode {
            SubscribeMode::Fanout => {
                let rx = self.with_topic(topic, |t| t.fanout.subscribe())?;
                Ok(BroadcastStream::new(rx)
                    .map(|item| {
                        item.map(Delivery::new).map_err(
                            |BroadcastStreamRecvError::Lagged(dropped)| Error::Lagged { dropped },
                        )
                    })
                    .boxed())
            }
            SubscribeMode::Queue { group } => {
                let capacity = self.queue_capacity;
                let queue = self.with_topic(topic, |t| {
                    t.groups
                        .entry(group)
                        .or_insert_with(|| {
                            Arc::new(GroupQueue {
                                capacity,
                                items: Mutex::new(Items::default()),
                                dropped: AtomicU64::new(0),
                                notify: Notify::new(),
                                closed: AtomicBool::new(false),
                            })
                        })
                        .clone()
                })?;
                let member = MemberGuard(Arc::new(Member {
                    group: queue,
                    unacked: Mutex::new(BTreeMap::new()),
                    seq: AtomicU64::new(0),
                }));
                Ok(futures_util::stream::unfold(member, |m| async move {
                    let item = m.0.next().await?;
                    Some((item, m))
                })
                .boxed())
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("memory broker"));
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders ends fanout streams; queue streams end on the closed flag.
        let topics = std::mem::take(&mut *self.topics.lock().map_err(|_| poisoned())?);
        for t in topics.into_values() {
            for g in t.groups.into_values() {
                g.closed.store(true, Ordering::Release);
                g.notify.notify_waiters();
                g.notify.notify_one();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn queue_retention_is_bounded_in_bytes() {
        let b = MemoryBroker::new(16, 1_000_000);
        let group = SubscribeMode::Queue { group: "g".into() };
        drop(b.subscribe("t", group.clone()).await.unwrap());
        let mb = Bytes::from(vec![0u8; 1024 * 1024]);
        for _ in 0..70 {
            b.publish("t", mb.clone()).await.unwrap();
        }
        let mut sub = b.subscribe("t", group).await.unwrap();
        match sub.next().await {
            Some(Err(Error::Lagged { dropped })) => assert_eq!(dropped, 6),
            other => panic!("expected Lagged, got {other:?}"),
        }
        for _ in 0..64 {
            assert_eq!(sub.next().await.unwrap().unwrap().ack().len(), mb.len());
        }
    }
}
