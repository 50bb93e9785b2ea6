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
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, Notify};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use crate::{
    envelope::Topics, Acknowledge, Broker, Delivery, Error, Result, SubscribeMode, Subscription,
};

const BACKEND: &str = "memory";

/// An in-process broker: publishers and subscribers must share one `MemoryBroker` (clone the
/// `Arc`).
///
/// Bounded: a fanout subscriber more than `fanout_capacity` messages behind gets
/// `Err(Error::Lagged)` (fanout is at-most-once); a queue group holds at most `queue_capacity`
/// undelivered messages and [`MemoryBroker::QUEUE_MAX_BYTES`] bytes. Beyond that, a publish to
/// a node's inbox (with [`MemoryBroker::refusing_full_inboxes`]: what the built-in `memory`
/// kind and `Default` do) is refused, `Error::Unavailable`, transient: its publisher, a send
/// through the API or ImHelper, retries once the node caught up, and what was accepted is never
/// dropped. Every other group drops its oldest, reported as `Lagged` to the member that reads
/// next: their publishers (a node's events) do not retry, and an event group's reader resyncs
/// on `Lagged`. Publishers racing past the check can overshoot the bound by one message each.
/// Messages published on a topic before any group subscribed to it are not retained. Unacked
/// queue deliveries return to their group when their subscription is dropped.
///
/// A queue group without a member keeps what is published for it for at most
/// [`group_idle_ttl`](MemoryBroker::with_group_idle_ttl) (default
/// [`MemoryBroker::DEFAULT_GROUP_IDLE_TTL`]) after its last member left; then the group is
/// dropped with what it held, and a later member of that name starts a new, empty group. So
/// group names that are used once and abandoned cannot grow the process without bound.
#[derive(Debug)]
pub struct MemoryBroker {
    fanout_capacity: usize,
    queue_capacity: usize,
    group_idle_ttl: Duration,
    /// Topics starting with this (`{prefix}.inbox.`) refuse a publish to a full group.
    refusing: Option<String>,
    epoch: Instant,
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
    /// Live `Queue` subscriptions of this group.
    members: AtomicUsize,
    /// When the last member left, in ms since the broker's epoch.
    idle_since: AtomicU64,
    epoch: Instant,
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

/// 16,384 fanout, 65,536 per queue group, refusing full inboxes under the default prefix
/// (`impush`).
impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(16 * 1024, 64 * 1024).refusing_full_inboxes(&Topics::new("impush"))
    }
}

impl MemoryBroker {
    /// Most bytes of undelivered payloads one queue group retains.
    pub const QUEUE_MAX_BYTES: usize = 64 * 1024 * 1024;

    /// How long a queue group without a member is kept by default.
    pub const DEFAULT_GROUP_IDLE_TTL: Duration = Duration::from_secs(60);

    /// A broker with the given per-subscriber fanout buffer and per-group queue retention.
    pub fn new(fanout_capacity: usize, queue_capacity: usize) -> Self {
        Self {
            fanout_capacity: fanout_capacity.max(1),
            queue_capacity: queue_capacity.max(1),
            group_idle_ttl: Self::DEFAULT_GROUP_IDLE_TTL,
            refusing: None,
            epoch: Instant::now(),
            closed: AtomicBool::new(false),
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a queue group without a member for `ttl` after its last member left (checked
    /// when the next message is published on its topic), then drops it with what it held.
    pub fn with_group_idle_ttl(mut self, ttl: Duration) -> Self {
        self.group_idle_ttl = ttl;
        self
    }

    /// Refuses a publish to a node's inbox under `topics` whose queue group is full, instead of
    /// dropping that group's oldest message (see [`MemoryBroker`]).
    pub fn refusing_full_inboxes(mut self, topics: &Topics) -> Self {
        self.refusing = Some(topics.inbox_prefix());
        self
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

    /// A publish refused because a queue group of `topic` is full: its consumer is behind.
    fn full(&self, topic: &str) -> Error {
        Error::Unavailable {
            backend: BACKEND,
            source: Some(
                format!(
                    "a queue group of topic {topic} is full ({} messages or {} bytes wait for \
                     its consumer); retry once it caught up",
                    self.queue_capacity,
                    Self::QUEUE_MAX_BYTES
                )
                .into(),
            ),
        }
    }
}

fn poisoned() -> Error {
    Error::Unavailable {
        backend: BACKEND,
        source: Some("a thread panicked while holding the topic table".into()),
    }
}

impl GroupQueue {
    fn ms_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Called under the topic lock, like every new membership, so a group being joined is
    /// never dropped.
    fn expired(&self, ttl: Duration) -> bool {
        self.members.load(Ordering::Acquire) == 0
            && Duration::from_millis(
                self.ms_since_epoch()
                    .saturating_sub(self.idle_since.load(Ordering::Acquire)),
            ) >= ttl
    }

    /// Whether a payload of `len` bytes fits under both bounds.
    fn has_room(&self, len: usize) -> bool {
        self.items.lock().is_ok_and(|items| {
            items.queue.len() < self.capacity
                && items.bytes.saturating_add(len) <= MemoryBroker::QUEUE_MAX_BYTES
        })
    }

    /// Appends `payload`; with `may_drop` (a topic that does not refuse, see [`MemoryBroker`])
    /// drops the oldest beyond the bounds. Without it the bound was checked before, and only
    /// racing publishers overshoot it.
    fn push(&self, payload: Bytes, may_drop: bool) {
        if let Ok(mut items) = self.items.lock() {
            items.bytes += payload.len();
            items.queue.push_back(payload);
            while may_drop
                && (items.queue.len() > self.capacity
                    || items.bytes > MemoryBroker::QUEUE_MAX_BYTES)
            {
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
        let group = &self.0.group;
        if !unacked.is_empty() && !group.closed.load(Ordering::Acquire) {
            group.requeue(unacked.into_values());
        }
        // The idle time is stored before the count drops, so whoever sees no member sees it.
        group
            .idle_since
            .store(group.ms_since_epoch(), Ordering::Release);
        group.members.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let ttl = self.group_idle_ttl;
        let refusing = self.refusing.as_ref().is_some_and(|p| topic.starts_with(p));
        let groups: Option<Vec<Arc<GroupQueue>>> = self.with_topic(topic, |t| {
            // Groups without a member for longer than the TTL go, with what they held.
            t.groups.retain(|_, g| !g.expired(ttl));
            // Every group or none: a message refused for one group is not half-published.
            if refusing && !t.groups.values().all(|g| g.has_room(payload.len())) {
                return None;
            }
            // No fanout subscriber is fine: fanout is at-most-once.
            let _ = t.fanout.send(payload.clone());
            Some(t.groups.values().cloned().collect())
        })?;
        let Some(groups) = groups else {
            return Err(self.full(topic));
        };
        for g in groups {
            g.push(payload.clone(), !refusing);
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
                let (capacity, epoch, ttl) = (self.queue_capacity, self.epoch, self.group_idle_ttl);
                let queue = self.with_topic(topic, |t| {
                    if t.groups.get(&group).is_some_and(|g| g.expired(ttl)) {
                        t.groups.remove(&group);
                    }
                    let queue = t
                        .groups
                        .entry(group)
                        .or_insert_with(|| {
                            Arc::new(GroupQueue {
                                capacity,
                                members: AtomicUsize::new(0),
                                idle_since: AtomicU64::new(0),
                                epoch,
                                items: Mutex::new(Items::default()),
                                dropped: AtomicU64::new(0),
                                notify: Notify::new(),
                                closed: AtomicBool::new(false),
                            })
                        })
                        .clone();
                    queue.members.fetch_add(1, Ordering::AcqRel);
                    queue
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

    const INBOX: &str = "impush.inbox.n1";

    /// What a node's inbox holds is never dropped: beyond either bound the publish is refused,
    /// as a transient error, and succeeds again once the consumer has read.
    #[tokio::test]
    async fn a_full_inbox_refuses_publishes_and_keeps_what_it_holds() {
        let b = MemoryBroker::new(16, 1_000_000).refusing_full_inboxes(&Topics::new("impush"));
        let group = SubscribeMode::Queue { group: "n1".into() };
        drop(b.subscribe(INBOX, group.clone()).await.unwrap());
        let mb = Bytes::from(vec![0u8; 1024 * 1024]);
        for _ in 0..64 {
            b.publish(INBOX, mb.clone()).await.unwrap();
        }
        let refused = b.publish(INBOX, mb.clone()).await.unwrap_err();
        assert!(refused.is_transient(), "{refused:?}");
        let mut sub = b.subscribe(INBOX, group).await.unwrap();
        let first = sub.next().await.unwrap().unwrap();
        assert_eq!(first.ack().len(), mb.len(), "the oldest was dropped");
        b.publish(INBOX, mb.clone()).await.unwrap();
        for _ in 0..64 {
            assert_eq!(sub.next().await.unwrap().unwrap().ack().len(), mb.len());
        }

        let counted = MemoryBroker::default();
        let counted = MemoryBroker {
            queue_capacity: 3,
            ..counted
        };
        let mut sub = counted
            .subscribe(INBOX, SubscribeMode::Queue { group: "n1".into() })
            .await
            .unwrap();
        for i in 0..3u8 {
            counted.publish(INBOX, Bytes::from(vec![i])).await.unwrap();
        }
        assert!(
            counted
                .publish(INBOX, Bytes::from_static(b"x"))
                .await
                .is_err(),
            "the default broker refuses for a full inbox"
        );
        for i in 0..3u8 {
            assert_eq!(sub.next().await.unwrap().unwrap().ack().as_ref(), [i]);
        }
    }

    /// An inbox with a full group and one with room publishes to neither, nor on fanout.
    #[tokio::test]
    async fn a_refused_publish_reaches_no_group() {
        let b = MemoryBroker::new(16, 1).refusing_full_inboxes(&Topics::new("impush"));
        let mut full = b
            .subscribe(INBOX, SubscribeMode::Queue { group: "a".into() })
            .await
            .unwrap();
        b.publish(INBOX, Bytes::from_static(b"1")).await.unwrap();
        let mut other = b
            .subscribe(INBOX, SubscribeMode::Queue { group: "b".into() })
            .await
            .unwrap();
        let mut fan = b.subscribe(INBOX, SubscribeMode::Fanout).await.unwrap();
        assert!(b.publish(INBOX, Bytes::from_static(b"2")).await.is_err());
        assert_eq!(full.next().await.unwrap().unwrap().ack().as_ref(), b"1");
        b.publish(INBOX, Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(other.next().await.unwrap().unwrap().ack().as_ref(), b"3");
        assert_eq!(fan.next().await.unwrap().unwrap().ack().as_ref(), b"3");
    }

    /// Any other group (an event group, an inbox of another prefix) drops its oldest when full
    /// and tells its next reader: its publishers do not retry, its readers resync on `Lagged`.
    #[tokio::test]
    async fn other_groups_drop_the_oldest_and_say_so() {
        let b = MemoryBroker::new(16, 1_000_000).refusing_full_inboxes(&Topics::new("impush"));
        for topic in ["impush.events", "other.inbox.n1"] {
            let group = SubscribeMode::Queue { group: "g".into() };
            let mut sub = b.subscribe(topic, group).await.unwrap();
            let mb = Bytes::from(vec![0u8; 1024 * 1024]);
            for _ in 0..70 {
                b.publish(topic, mb.clone()).await.unwrap();
            }
            match sub.next().await {
                Some(Err(Error::Lagged { dropped })) => assert_eq!(dropped, 6, "{topic}"),
                other => panic!("expected Lagged on {topic}, got {other:?}"),
            }
            for _ in 0..64 {
                assert_eq!(sub.next().await.unwrap().unwrap().ack().len(), mb.len());
            }
        }
    }

    fn groups(b: &MemoryBroker, topic: &str) -> usize {
        b.topics
            .lock()
            .unwrap()
            .get(topic)
            .map_or(0, |t| t.groups.len())
    }

    #[tokio::test]
    async fn a_group_without_members_is_dropped_after_its_idle_ttl() {
        let b = MemoryBroker::default().with_group_idle_ttl(Duration::from_millis(200));
        let group = |g: &str| SubscribeMode::Queue { group: g.into() };
        // `kept` always has a member; `gone` is abandoned; `back` is rejoined within the TTL.
        let mut kept = b.subscribe("t", group("kept")).await.unwrap();
        drop(b.subscribe("t", group("gone")).await.unwrap());
        drop(b.subscribe("t", group("back")).await.unwrap());
        b.publish("t", Bytes::from_static(b"1")).await.unwrap();
        let mut back = b.subscribe("t", group("back")).await.unwrap();
        assert_eq!(&back.next().await.unwrap().unwrap().ack()[..], b"1");
        assert_eq!(groups(&b, "t"), 3, "within the TTL every group is kept");

        tokio::time::sleep(Duration::from_millis(300)).await;
        b.publish("t", Bytes::from_static(b"2")).await.unwrap();
        assert_eq!(groups(&b, "t"), 2, "the abandoned group is dropped");
        assert_eq!(&kept.next().await.unwrap().unwrap().ack()[..], b"1");
        assert_eq!(&kept.next().await.unwrap().unwrap().ack()[..], b"2");
        assert_eq!(&back.next().await.unwrap().unwrap().ack()[..], b"2");

        // A member of the dropped name starts an empty group.
        let mut gone = b.subscribe("t", group("gone")).await.unwrap();
        b.publish("t", Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(&gone.next().await.unwrap().unwrap().ack()[..], b"3");
    }
}
