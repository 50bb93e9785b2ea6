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
//! member in it, unable to leave, and the new one without an assignment (`Task::hold`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{Acknowledge, Delivery, Result, Subscription};
use rdkafka::{
    config::FromClientConfigAndContext,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::Message,
    types::RDKafkaErrorCode,
    Offset, TopicPartitionList,
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
/// How long after a consumer was replaced "all brokers down" is not taken as a new outage:
/// the replacement queued such reports while it was created during the outage, and they come
/// out of its queue right after. librdkafka repeats the report while an outage lasts, so a
/// new one is still noticed.
const REBUILD_GAP: Duration = Duration::from_secs(2);

type KafkaConsumer = StreamConsumer<Ctx>;

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
    group_id: &str,
    group: Option<Arc<Group>>,
) -> Result<Arc<KafkaConsumer>> {
    let cfg = client::consumer_config(&inner.cfg, &inner.bootstrap, group_id);
    KafkaConsumer::from_config_and_context(&cfg, Ctx::new(&inner.bootstrap, group))
        .map(Arc::new)
        .map_err(|e| {
            impush_core::Error::Config(format!(
                "config key `broker.consumer_properties`: kafka at {}: cannot create a consumer: {e}",
                inner.bootstrap
            ))
        })
}

/// The partitions of `topic`, waiting (within `timeout`) for a just-created topic to show up
/// in the metadata. Blocking.
fn partitions(
    consumer: &KafkaConsumer,
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let found: Vec<i32> = match consumer
            .fetch_metadata(Some(topic), left.max(Duration::from_millis(100)))
        {
            Ok(md) => md
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect(),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                Vec::new()
            }
            Err(e) => return Err(Error::kafka(bootstrap, "topic metadata")(e).into()),
        };
        if !found.is_empty() {
            return Ok(found);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Kafka {
                bootstrap: bootstrap.to_owned(),
                op: "topic metadata",
                source: KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
            }
            .into());
        }
        // The blocking pool's thread, not a runtime worker.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Assigns every partition of `topic` to a fanout consumer: at `next` where it has one (a
/// consumer replaced after an outage), else at the current end. A `next` past the end means
/// the topic is younger than that position (recreated by a broker that lost it): everything
/// it holds is new, so that partition starts at its beginning. Blocking.
fn assign_fanout(
    consumer: &KafkaConsumer,
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    next: &HashMap<i32, i64>,
) -> Result<HashMap<i32, i64>> {
    let mut start = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions(consumer, bootstrap, topic, timeout)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(Error::kafka(bootstrap, "end offsets"))?;
        let at = match next.get(&p) {
            Some(n) if *n <= high => *n,
            Some(_) => low,
            None => high,
        };
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(at));
        start.insert(p, at);
    }
    consumer
        .assign(&tpl)
        .map_err(Error::kafka(bootstrap, "assign"))?;
    tracing::debug!(%topic, ?start, "kafka fanout assigned");
    Ok(start)
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
    let consumer = create_consumer(&inner, &group_id, None)?;
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
    };
    inner.tasks.spawn(task.run());
    Ok(stream_of(rx, None))
}

/// A queue subscription: a member of Kafka group `{topic}:{group}`.
pub(crate) async fn queue(
    inner: Arc<Inner>,
    topics: Arc<Topics>,
    topic: &str,
    group_name: &str,
) -> Result<Subscription> {
    let group_id = format!("{topic}:{group_name}");
    let settle = inner.cfg.session_timeout + inner.cfg.request_timeout * 2;
    inner.members.left(&group_id, settle).await;
    let group = Group::new(topic.to_owned());
    let consumer = create_consumer(&inner, &group_id, Some(group.clone()))?;
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

/// Gives a group that has no committed offset on some partition of `topic` one: the current
/// end. Without it the first member would start at `auto.offset.reset`: `latest` would lose
/// what is published before it joined, `earliest` would replay the topic's history. Blocking.
fn start_position(
    consumer: &KafkaConsumer,
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<()> {
    let parts = partitions(consumer, bootstrap, topic, timeout)?;
    let missing = |consumer: &KafkaConsumer| -> Result<Vec<i32>> {
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(Error::kafka(bootstrap, "committed offsets"))?;
        Ok(committed
            .elements()
            .iter()
            .filter(|e| !matches!(e.offset(), Offset::Offset(o) if o >= 0))
            .map(|e| e.partition())
            .collect())
    };
    let todo = missing(consumer)?;
    if todo.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for p in &todo {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(Error::kafka(bootstrap, "end offsets"))?;
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(high));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        // Another member joined first and the group is no longer empty, so the coordinator
        // refuses a commit from outside it; that member committed a position before joining.
        if missing(consumer)?.is_empty() {
            return Ok(());
        }
        return Err(Error::kafka(bootstrap, "commit the start position")(e).into());
    }
    tracing::debug!(%topic, partitions = ?todo, "kafka group starts at the end of the topic");
    Ok(())
}

/// Whether the cluster still holds a committed offset of the group on some partition of
/// `topic`: every group this crate creates commits one before it first reads
/// ([`start_position`]), so a cluster without one lost the group (a broker that restarted
/// empty), and one with it kept it. Only metadata and offset requests: a consumer that lived
/// through an outage must not fetch from a broker that restarted empty (module docs).
/// Blocking.
fn group_kept(
    consumer: &KafkaConsumer,
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<bool> {
    let unknown = Some(RDKafkaErrorCode::UnknownTopicOrPartition);
    let md = match consumer.fetch_metadata(Some(topic), timeout) {
        Ok(md) => md,
        Err(e) if e.rdkafka_error_code() == unknown => return Ok(false),
        Err(e) => return Err(Error::kafka(bootstrap, "topic metadata")(e).into()),
    };
    let Some(found) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(false);
    };
    match found.error() {
        None => {}
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            return Ok(false)
        }
        Some(e) => {
            let source = KafkaError::MetadataFetch(RDKafkaErrorCode::from(e));
            return Err(Error::kafka(bootstrap, "topic metadata")(source).into());
        }
    }
    let mut tpl = TopicPartitionList::new();
    for p in found.partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(Error::kafka(bootstrap, "committed offsets"))?;
    Ok(committed
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(o) if o >= 0)))
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
}

/// How a consumer error is reported: once when a spell of errors starts, again when it ends.
#[derive(Default)]
struct Errors {
    failing: bool,
    next_recreate: Option<Instant>,
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

    /// Handles a consumer error.
    async fn on_error(&mut self, e: KafkaError, errors: &mut Errors) -> Next {
        if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
            tracing::error!(topic = %self.topic, error = %e, "kafka consumer failed for good; ending the subscription");
            return Next::Stop;
        }
        if !errors.failing {
            tracing::warn!(topic = %self.topic, error = %e, "kafka subscription read failed; retrying");
            errors.failing = true;
        } else {
            tracing::debug!(topic = %self.topic, error = %e, "kafka subscription read failed");
        }
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown)
                if self.replaced.is_none_or(|t| t.elapsed() >= REBUILD_GAP) =>
            {
                return match self.mode {
                    Mode::Queue { .. } => self.hold().await,
                    Mode::Fanout { .. } => self.rebuild().await,
                };
            }
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                // The topic is gone (a broker restart without persistence): create it again,
                // so that this subscription reads what is published from now on.
                let now = Instant::now();
                if errors.next_recreate.is_none_or(|t| now >= t) {
                    errors.next_recreate = Some(now + Duration::from_secs(2));
                    self.topics.forget(&self.topic);
                    if let Err(e) = self.topics.ensure(&self.topic).await {
                        tracing::debug!(topic = %self.topic, error = %e, "cannot create kafka topic again");
                    }
                }
            }
            _ => {}
        }
        // Errors come as events, one per state change or retry, not in a tight loop; a
        // replaced consumer may have queued many, which must drain fast.
        tokio::task::yield_now().await;
        Next::Go
    }

    /// A queue member's consumer after the connection to every broker was lost: its
    /// partitions are paused (no fetch goes out) until the cluster answers, and then it is kept
    /// if the cluster kept the group (a committed offset is still there: the outage was in
    /// the network, or the broker kept its state), else replaced ([`Task::rebuild`]).
    ///
    /// Replacing a member of a group the cluster kept would leave the old member in it, unable
    /// to leave (its connections were gone when it was closed), and tansu never completes a
    /// rebalance with such a member: the new one got no assignment for as long as it was
    /// watched (`docs/design.md` section 3).
    async fn hold(&mut self) -> Next {
        tracing::warn!(topic = %self.topic, "lost every kafka broker; holding the group member until the cluster answers");
        let (c, bootstrap) = (self.consumer.clone(), self.inner.bootstrap.clone());
        let held = blocking(&self.inner.bootstrap, "pause", move || {
            let held = c
                .assignment()
                .map_err(Error::kafka(&bootstrap, "assignment"))?;
            c.pause(&held).map_err(Error::kafka(&bootstrap, "pause"))?;
            Ok(held)
        })
        .await;
        let Ok(held) = held else {
            return self.rebuild().await;
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.stopped() {
                return Next::Stop;
            }
            let (c, bootstrap, topic, timeout) = (
                self.consumer.clone(),
                self.inner.bootstrap.clone(),
                self.topic.clone(),
                self.inner.cfg.request_timeout,
            );
            let kept = blocking(&self.inner.bootstrap, "committed offsets", move || {
                group_kept(&c, &bootstrap, &topic, timeout)
            })
            .await;
            match kept {
                Ok(true) => break,
                Ok(false) => return self.rebuild().await,
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "kafka cluster not answering yet");
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return Next::Stop,
                        () = self.tx.closed() => return Next::Stop,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        let (c, bootstrap) = (self.consumer.clone(), self.inner.bootstrap.clone());
        let resumed = blocking(&self.inner.bootstrap, "resume", move || {
            c.resume(&held)
                .map_err(|e| Error::kafka(&bootstrap, "resume")(e).into())
        })
        .await;
        if resumed.is_err() {
            return self.rebuild().await;
        }
        // Reports of the outage still queued in the consumer are not a new one.
        self.replaced = Some(Instant::now());
        tracing::info!(topic = %self.topic, "kafka cluster kept the group; the member goes on");
        Next::Go
    }

    /// Replaces the consumer after the connection to every broker was lost (see the module
    /// docs). The old one is retired and closed at once, in the background and without a
    /// final commit (the cluster is away), so that it never talks to the cluster once it is
    /// back; the new one is positioned once the cluster answers.
    async fn rebuild(&mut self) -> Next {
        tracing::warn!(topic = %self.topic, "lost every kafka broker; replacing the consumer once the cluster answers");
        if let Mode::Queue { group } = &self.mode {
            group.retire_consumer();
        }
        let new = match create_consumer(&self.inner, &self.group_id, self.mode.group()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %self.topic, error = %e, "cannot replace the kafka consumer; ending the subscription");
                return Next::Stop;
            }
        };
        let old = std::mem::replace(&mut self.consumer, new);
        let (inner, topics) = (self.inner.clone(), self.topics.clone());
        self.inner
            .tasks
            .spawn(async move { close(&inner, old, None, topics, false).await });
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.stopped() {
                return Next::Stop;
            }
            match self.position().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "kafka consumer not positioned yet");
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return Next::Stop,
                        () = self.tx.closed() => return Next::Stop,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.replaced = Some(Instant::now());
        tracing::info!(topic = %self.topic, "kafka consumer replaced");
        Next::Go
    }

    /// Positions a replacement consumer once the cluster answers: fanout assigns its
    /// partitions where it was, queue subscribes (the group resumes at its committed offsets).
    /// The topic is created again first if the cluster lost it.
    async fn position(&mut self) -> Result<()> {
        self.topics.forget(&self.topic);
        self.topics.ensure(&self.topic).await?;
        let (c, bootstrap, t, timeout) = (
            self.consumer.clone(),
            self.inner.bootstrap.clone(),
            self.topic.clone(),
            self.inner.cfg.request_timeout,
        );
        match &mut self.mode {
            Mode::Fanout { next } => {
                let from = next.clone();
                *next = blocking(&self.inner.bootstrap, "fanout subscribe", move || {
                    assign_fanout(&c, &bootstrap, &t, timeout, &from)
                })
                .await?;
                // Whether the cluster kept what this subscription had not read yet cannot be
                // told: a broker that restarted empty (tansu keeps everything in memory) lost
                // it, and may even have recreated the topic at offsets this subscription
                // never reached. A gap is never silent: report one, of unknown size.
                tracing::warn!(topic = %self.topic, "kafka fanout resumed after losing every broker; reporting a possible gap");
                let lag = Item {
                    delivery: Err(impush_core::Error::Lagged { dropped: 0 }),
                    fence: None,
                };
                if !self.send(lag).await {
                    return Err(impush_core::Error::Closed("kafka subscription"));
                }
            }
            // No start position here: a group the cluster lost starts at the beginning of
            // the (recreated) topic, which holds only messages published since.
            Mode::Queue { .. } => {
                blocking(&self.inner.bootstrap, "queue subscribe", move || {
                    partitions(&c, &bootstrap, &t, timeout)?;
                    c.subscribe(&[&t])
                        .map_err(|e| Error::kafka(&bootstrap, "subscribe")(e).into())
                })
                .await?;
            }
        }
        Ok(())
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

    async fn finish(self) {
        let group = self.mode.group();
        close(&self.inner, self.consumer, group, self.topics, true).await;
        if let Some(closed) = self.closed {
            closed.cancel();
        }
    }
}
