//! The consumer of one subscription and the task that feeds its stream.
//!
//! Each subscription has its own `StreamConsumer` (independent positions; rdkafka's advice)
//! and a task that moves messages into a bounded channel, so a slow subscriber slows its
//! consumer down instead of growing memory.
//!
//! Queue subscriptions ack through the shared [`Tracker`](crate::offsets::Tracker): an ack
//! marks one offset (a short lock, no I/O), and the task commits the acked prefix every
//! `commit_interval` with an asynchronous commit. When the subscription ends, the task commits
//! synchronously and closes the consumer (leaving the group, so the next member takes over at
//! once) on the blocking pool. Deliveries still in the channel when their partition is revoked
//! are dropped there: the partition's next owner gets them from the committed offset.
//!
//! When every broker connection is lost, a fanout task replaces its consumer with a new one
//! once the cluster answers again, resuming at the next offset of each partition. A consumer
//! that lived through the outage would carry the old cluster's topic ids and positions, and a
//! broker that came back empty (tansu keeps everything in memory) answers its first fetch with
//! a reply that crashes librdkafka 2.12.1 (a leader-change tag naming no topic;
//! `rd_kafka_metadata_update_op` compares a NULL topic name). A fresh consumer asks for
//! metadata first and never sends that fetch.
//!
//! A queue task pauses its consumer's partitions instead (so it sends no fetch) and asks the
//! cluster, once it answers, whether it still has the group's committed offsets. If it does
//! (the outage was in the network, or the broker kept its state), the consumer goes on as it
//! was; if not (a broker that restarted empty), it is replaced and the new one resumes at what
//! the group has then. Replacing a member of a group the cluster kept would leave the old
//! member in it, unable to leave, and the new one without an assignment (`outage`).

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{Acknowledge, Delivery, Result, Subscription};
use rdkafka::{
    config::{ClientConfig, FromClientConfigAndContext},
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::Message,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    client::{self, Ctx, Group},
    error::Error,
    shared::{blocking, Inner},
    topics::Topics,
};

/// Deliveries buffered between a consumer and its subscriber.
const BUFFER: usize = 1024;

type KafkaConsumer = StreamConsumer<Ctx>;

mod outage;
mod positions;

use outage::Errors;
use positions::{assign_fanout, start_position};

/// One item on the way to the subscriber; `fence` is the (partition, generation) of a queue
/// delivery, checked again when the subscriber takes it.
struct Item {
    delivery: Result<Delivery>,
    fence: Option<(i32, u64)>,
}

/// Acks one queue delivery: marks its offset in the tracker.
struct OffsetAck {
    group: Arc<Group>,
    partition: i32,
    generation: u64,
    offset: i64,
}

impl Acknowledge for OffsetAck {
    fn ack(self: Box<Self>) {
        self.group
            .tracker()
            .ack(self.partition, self.generation, self.offset);
    }
}

/// What kind of subscription a task feeds.
enum Mode {
    /// Self-assigned partitions; `next` is the next offset expected per partition: a jump
    /// forward is a gap (the position fell out of retention) and is reported, never silent.
    Fanout { next: HashMap<i32, i64> },
    /// A member of a group whose acks `group` tracks.
    Queue { group: Arc<Group> },
}

impl Mode {
    fn group(&self) -> Option<Arc<Group>> {
        match self {
            Mode::Fanout { .. } => None,
            Mode::Queue { group } => Some(group.clone()),
        }
    }
}

fn create_consumer(
    inner: &Inner,
    topic: &str,
    group_id: &str,
    group: Option<Arc<Group>>,
) -> Result<Arc<KafkaConsumer>> {
    let cfg = member_config(inner, topic, group_id);
    KafkaConsumer::from_config_and_context(&cfg, Ctx::new(&inner.bootstrap, group))
        .map(Arc::new)
        .map_err(|e| {
            impush_core::Error::Config(format!(
                "config key `broker.consumer_properties`: kafka at {}: cannot create a consumer: {e}",
                inner.bootstrap
            ))
        })
}

/// The config of a consumer in Kafka group `group_id` on `topic`: a static member when it is a
/// queue member taking over another node's inbox (`Takeovers`; a fanout reader's group of its
/// own never is one).
fn member_config(inner: &Inner, topic: &str, group_id: &str) -> ClientConfig {
    let mut cfg = client::consumer_config(&inner.cfg, &inner.bootstrap, group_id);
    let takeover = inner
        .takeovers
        .as_ref()
        .is_some_and(|t| t.is_takeover(topic, group_id));
    if takeover {
        client::static_member(&mut cfg);
    }
    cfg
}

fn stream_of(rx: mpsc::Receiver<Item>, group: Option<Arc<Group>>) -> Subscription {
    ReceiverStream::new(rx)
        .filter_map(move |item| {
            let current = match (item.fence, &group) {
                (Some((p, generation)), Some(g)) => g.tracker().is_current(p, generation),
                _ => true,
            };
            // A stale delivery is dropped unacked: the partition's next owner gets it.
            std::future::ready(current.then_some(item.delivery))
        })
        .boxed()
}

/// A fanout subscription: a consumer that assigns itself every partition at its current end,
/// so exactly what is published after `subscribe` returns arrives.
pub(crate) async fn fanout(
    inner: Arc<Inner>,
    topics: Arc<Topics>,
    topic: &str,
) -> Result<Subscription> {
    // A group id of its own: librdkafka wants one even for self-assigned partitions. It never
    // joins the group (no subscribe) and commits nothing, so nothing rebalances.
    let group_id = format!("{topic}:fanout-{}", uuid::Uuid::new_v4().simple());
    let consumer = create_consumer(&inner, topic, &group_id, None)?;
    let (c, bootstrap, t, timeout) = (
        consumer.clone(),
        inner.bootstrap.clone(),
        topic.to_owned(),
        inner.cfg.request_timeout,
    );
    let start = blocking(&inner.bootstrap, "fanout subscribe", move || {
        assign_fanout(&c, &bootstrap, &t, timeout, &HashMap::new())
    })
    .await;
    let start = match start {
        Ok(s) => s,
        Err(e) => {
            close(&inner, consumer, None, topics, true).await;
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    let task = Task {
        inner: inner.clone(),
        consumer,
        topics,
        topic: topic.to_owned(),
        group_id,
        tx,
        mode: Mode::Fanout { next: start },
        replaced: None,
        closed: None,
        joining: None,
    };
    inner.tasks.spawn(task.run());
    Ok(stream_of(rx, None))
}

/// How long a new member of a group waits for an old one of this process to leave it, and
/// one that leaves waits for its own join to end: by then the cluster has answered the join
/// or dropped the member (its session ran out).
fn settle(inner: &Inner) -> std::time::Duration {
    inner.cfg.session_timeout + inner.cfg.request_timeout * 2
}

/// A queue subscription: a member of Kafka group `{topic}:{group}`.
pub(crate) async fn queue(
    inner: Arc<Inner>,
    topics: Arc<Topics>,
    topic: &str,
    group_name: &str,
) -> Result<Subscription> {
    let group_id = format!("{topic}:{group_name}");
    let settle = settle(&inner);
    inner.members.left(&group_id, settle).await;
    let group = Group::new(topic.to_owned());
    let consumer = create_consumer(&inner, topic, &group_id, Some(group.clone()))?;
    let (c, bootstrap, t, timeout) = (
        consumer.clone(),
        inner.bootstrap.clone(),
        topic.to_owned(),
        inner.cfg.request_timeout,
    );
    let started = blocking(&inner.bootstrap, "queue subscribe", move || {
        start_position(&c, &bootstrap, &t, timeout)?;
        c.subscribe(&[&t])
            .map_err(Error::kafka(&bootstrap, "subscribe"))?;
        Ok(())
    })
    .await;
    if let Err(e) = started {
        close(&inner, consumer, Some(group), topics, true).await;
        return Err(e);
    }
    let mut assignments = group.assignments();
    let (tx, rx) = mpsc::channel(BUFFER);
    let subscriber = tx.downgrade();
    let closed = inner.members.join(
        &group_id,
        Box::new(move || subscriber.upgrade().is_none_or(|tx| tx.is_closed())),
    );
    let task = Task {
        inner: inner.clone(),
        consumer,
        topics,
        topic: topic.to_owned(),
        group_id: group_id.clone(),
        tx,
        mode: Mode::Queue {
            group: group.clone(),
        },
        replaced: None,
        closed: Some(closed),
        joining: Some(group.assignments()),
    };
    inner.tasks.spawn(task.run());
    // Return once this member has its first assignment, so the group is settled before the
    // caller publishes (a rebalance with messages in flight redelivers them). Not waiting
    // would lose nothing: the group's position is committed already.
    if tokio::time::timeout(settle, assignments.changed())
        .await
        .is_err()
    {
        tracing::debug!(%topic, group = %group_id, "no kafka assignment yet; reading once it comes");
    }
    Ok(stream_of(rx, Some(group)))
}

/// Closes a consumer on the blocking pool: commits what `group` acked (synchronously, unless
/// `commit` is false because the cluster is unreachable) and drops it, which leaves the group.
async fn close(
    inner: &Inner,
    consumer: Arc<KafkaConsumer>,
    group: Option<Arc<Group>>,
    topics: Arc<Topics>,
    commit: bool,
) {
    let topic_name = group.as_ref().map(|g| g.topic.clone());
    let r = blocking(&inner.bootstrap, "close consumer", move || {
        if let (Some(g), true) = (&group, commit) {
            let last = g.tracker().take_commits();
            if !last.is_empty() {
                if let Err(e) = consumer.commit(&g.tpl(&last), CommitMode::Sync) {
                    tracing::warn!(topic = %g.topic, error = %e, "kafka final offset commit failed; those deliveries come again");
                }
            }
        }
        // The last reference: dropping it closes the consumer (revoke, leave group), which
        // blocks until librdkafka is done.
        drop(consumer);
        drop(topics);
        Ok(())
    })
    .await;
    if let Err(e) = r {
        tracing::warn!(topic = ?topic_name, error = %e, "closing a kafka consumer failed");
    }
}

/// Feeds one subscription until its stream is dropped or the broker shuts down.
struct Task {
    inner: Arc<Inner>,
    consumer: Arc<KafkaConsumer>,
    topics: Arc<Topics>,
    topic: String,
    group_id: String,
    tx: mpsc::Sender<Item>,
    mode: Mode,
    /// When the consumer was last replaced.
    replaced: Option<Instant>,
    /// A queue member's token in [`Members`](crate::members::Members), cancelled once its
    /// consumer is closed.
    closed: Option<tokio_util::sync::CancellationToken>,
    /// A queue member's assignments as of when its consumer subscribed: until one comes,
    /// its join is under way.
    joining: Option<tokio::sync::watch::Receiver<u64>>,
}

/// What the loop does after an event.
enum Next {
    Go,
    Stop,
}

impl Task {
    fn stopped(&self) -> bool {
        self.inner.cancel.is_cancelled() || self.tx.is_closed()
    }

    /// Sends `item`; false once the subscriber is gone or the broker shuts down. While the
    /// subscriber is slow, acks keep being committed.
    async fn send(&self, item: Item) -> bool {
        let item = match self.tx.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        let mut interval = tokio::time::interval(self.inner.cfg.commit_interval);
        interval.tick().await;
        loop {
            tokio::select! {
                biased;
                () = self.inner.cancel.cancelled() => return false,
                permit = self.tx.reserve() => match permit {
                    Ok(p) => { p.send(item); return true; }
                    Err(_) => return false,
                },
                _ = interval.tick() => self.commit(),
            }
        }
    }

    /// Commits the positions that moved, asynchronously (librdkafka queues the request).
    fn commit(&self) {
        let Mode::Queue { group } = &self.mode else {
            return;
        };
        let moved = group.tracker().take_commits();
        if moved.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.commit(&group.tpl(&moved), CommitMode::Async) {
            tracing::debug!(topic = %group.topic, error = %e, "kafka offset commit not sent; retrying");
            let mut tracker = group.tracker();
            for (p, o) in moved {
                tracker.commit_failed(p, o);
            }
        }
    }

    /// Turns one received message into what goes to the subscriber (none: a late message of
    /// a revoked partition, which its next owner reads).
    fn items(&mut self, partition: i32, offset: i64, payload: Bytes) -> Vec<Item> {
        tracing::trace!(topic = %self.topic, partition, offset, "kafka message");
        match &mut self.mode {
            Mode::Fanout { next } => {
                let mut out = Vec::with_capacity(1);
                let expected = next.insert(partition, offset + 1);
                if let Some(gap) = expected.filter(|e| offset > *e).map(|e| offset - e) {
                    out.push(Item {
                        delivery: Err(impush_core::Error::Lagged {
                            dropped: gap.unsigned_abs(),
                        }),
                        fence: None,
                    });
                }
                out.push(Item {
                    delivery: Ok(Delivery::new(payload)),
                    fence: None,
                });
                out
            }
            Mode::Queue { group } => {
                let Some(generation) = group.tracker().delivered(partition, offset) else {
                    return Vec::new();
                };
                let ack = OffsetAck {
                    group: group.clone(),
                    partition,
                    generation,
                    offset,
                };
                vec![Item {
                    delivery: Ok(Delivery::with_ack(payload, ack)),
                    fence: Some((partition, generation)),
                }]
            }
        }
    }

    async fn run(mut self) {
        let mut interval = tokio::time::interval(self.inner.cfg.commit_interval);
        let mut errors = Errors::default();
        loop {
            let received = tokio::select! {
                biased;
                () = self.inner.cancel.cancelled() => break,
                () = self.tx.closed() => break,
                _ = interval.tick() => {
                    self.commit();
                    continue;
                }
                m = self.consumer.recv() => m.map(|m| {
                    let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                    (m.partition(), m.offset(), payload)
                }),
            };
            match received {
                Ok((partition, offset, payload)) => {
                    errors.failing = false;
                    for item in self.items(partition, offset, payload) {
                        if !self.send(item).await {
                            return self.finish().await;
                        }
                    }
                }
                Err(e) => {
                    if let Next::Stop = self.on_error(e, &mut errors).await {
                        break;
                    }
                }
            }
        }
        self.finish().await;
    }

    async fn finish(mut self) {
        // A member that leaves while its join is still under way can be added back by that
        // join after its leave: tansu answers a join after a pause of its own. A member added
        // so never heartbeats and holds up the group until its session runs out. So a
        // subscriber that gave up during the join (a subscription dropped right after it was
        // made) leaves once the join is done; not when the broker shuts down, which must not
        // wait.
        if let Some(mut joining) = self.joining.take() {
            if !self.inner.cancel.is_cancelled() && !joining.has_changed().unwrap_or(true) {
                let within = settle(&self.inner);
                if tokio::time::timeout(within, joining.changed())
                    .await
                    .is_err()
                {
                    tracing::debug!(topic = %self.topic, "kafka group join still under way; leaving anyway");
                }
            }
        }
        let group = self.mode.group();
        close(&self.inner, self.consumer, group, self.topics, true).await;
        if let Some(closed) = self.closed {
            closed.cancel();
        }
    }
}
