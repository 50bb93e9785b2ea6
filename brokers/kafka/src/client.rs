//! librdkafka client settings, and the context every client of this crate runs with: it sends
//! librdkafka's logs to `tracing` and, for queue consumers, keeps the ack [`Tracker`] in step
//! with rebalances.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use rdkafka::{
    client::ClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::{KafkaError, KafkaResult},
    types::RDKafkaErrorCode,
    ClientConfig, Offset, TopicPartitionList,
};
use tokio::sync::watch;

use crate::{config::KafkaConfig, offsets::Tracker};

/// Settings every client gets: the bootstrap servers, a client id, the user's properties.
fn common(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    // librdkafka filters its logs by this level before they reach `Ctx::log`: take it from
    // what tracing would show (rdkafka's default asks the `log` crate, which we do not use).
    c.set_log_level(if tracing::enabled!(tracing::Level::TRACE) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(tracing::Level::DEBUG) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    });
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "impush")
        .set("socket.keepalive.enable", "true")
        .set("log.connection.close", "false");
    c
}

fn apply(c: &mut ClientConfig, props: &std::collections::BTreeMap<String, String>) {
    for (k, v) in props {
        c.set(k, v);
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// The producer: acks from all in-sync replicas, idempotent (so retries neither duplicate nor
/// reorder records, with up to 5 requests in flight), batches up to `linger`.
pub(crate) fn producer_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = common(bootstrap);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        // Topics are created by `Topics::ensure` with impush's partitions and replication;
        // a broker that auto-creates them on a producer's metadata request would use its own
        // defaults (tansu: 4 partitions) when it lost them in a restart.
        .set("allow.auto.create.topics", "false")
        .set("linger.ms", ms(cfg.linger))
        .set("message.timeout.ms", ms(cfg.publish_timeout))
        .set("message.max.bytes", cfg.max_message_bytes.to_string());
    apply(&mut c, &cfg.properties);
    apply(&mut c, &cfg.producer_properties);
    c
}

/// The admin client (topic creation).
pub(crate) fn admin_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = common(bootstrap);
    apply(&mut c, &cfg.properties);
    c
}

/// A consumer in Kafka group `group` (a fanout subscription's group is its own, and it never
/// joins it: it assigns its partitions itself and commits nothing).
pub(crate) fn consumer_config(cfg: &KafkaConfig, bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = common(bootstrap);
    // Offsets are committed by hand once the delivery is acked, never by a timer.
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Where a group without a committed offset starts. A new group gets one at its first
        // subscribe (the end of the topic), so this only applies when the committed offset was
        // lost or is out of range (the topic was recreated after a broker restart): then
        // everything the topic holds was published after that, and goes out.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", ms(cfg.session_timeout))
        .set(
            "heartbeat.interval.ms",
            ms((cfg.session_timeout / 3).max(Duration::from_millis(100))),
        )
        // A topic that disappears (a broker restart without persistence) is noticed sooner.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("group.id", group);
    apply(&mut c, &cfg.properties);
    apply(&mut c, &cfg.consumer_properties);
    c
}

/// Makes the consumer of `c` a static member of its group (a `group.instance.id` of its own):
/// it leaves its group by falling silent, never by a LeaveGroup (`shared::Takeovers` says
/// why).
pub(crate) fn static_member(c: &mut ClientConfig) {
    let id = c.get("group.id").unwrap_or("impush").to_owned();
    c.set(
        "group.instance.id",
        format!("{id}-{}", uuid::Uuid::new_v4().simple()),
    );
}

/// What a queue subscription's consumer shares with its task, its ackers and its stream.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) topic: String,
    tracker: Mutex<Tracker>,
    /// Counts the assignments this member received (the first one ends `subscribe`).
    assignments: watch::Sender<u64>,
    /// Which consumer of the subscription is the live one; the callbacks of one that was
    /// replaced (and is still closing) must not touch the tracker.
    instance: AtomicU64,
}

impl Group {
    pub(crate) fn new(topic: String) -> Arc<Self> {
        Arc::new(Self {
            topic,
            tracker: Mutex::new(Tracker::default()),
            assignments: watch::Sender::new(0),
            instance: AtomicU64::new(0),
        })
    }

    /// The consumer in use is being replaced: its callbacks stop counting, and everything
    /// it handed out becomes stale (acks ignored, buffered deliveries dropped; the group
    /// delivers them again from its committed offsets).
    pub(crate) fn retire_consumer(&self) {
        self.instance.fetch_add(1, Ordering::AcqRel);
        self.tracker().reset();
    }

    fn is_live(&self, instance: u64) -> bool {
        self.instance.load(Ordering::Acquire) == instance
    }

    /// The tracker. A panic while it was held leaves consistent enough data (every method
    /// only moves positions forward), so a poisoned lock is used as it is.
    pub(crate) fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn assignments(&self) -> watch::Receiver<u64> {
        self.assignments.subscribe()
    }

    /// A list of `(partition, offset)` of this topic, as librdkafka takes it.
    pub(crate) fn tpl(&self, offsets: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            // Only fails for an unrepresentable offset, which a position never is.
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o));
        }
        tpl
    }

    fn partitions_of<'a>(&'a self, tpl: &'a TopicPartitionList) -> impl Iterator<Item = i32> + 'a {
        tpl.elements()
            .into_iter()
            .filter(move |e| e.topic() == self.topic)
            .map(|e| e.partition())
    }
}

/// Whether a client lost every broker after it had reached the cluster: then it holds state
/// of a cluster that may have restarted empty (see `subscription` and `broker`), and is
/// replaced.
#[derive(Debug, Default)]
pub(crate) struct Health {
    up: AtomicBool,
    lost: AtomicBool,
}

impl Health {
    /// The client reached the cluster (a call succeeded).
    pub(crate) fn up(&self) {
        self.up.store(true, Ordering::Release);
    }

    fn all_down(&self) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.lost.store(true, Ordering::Release);
        }
    }

    /// The client must be replaced (it failed for good).
    pub(crate) fn force_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Whether every broker was lost since the last call (and the client had been up).
    pub(crate) fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }
}

/// The context of every client: logs to `tracing`; for the producer, its [`Health`]; for a
/// queue consumer, the rebalance and commit callbacks.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) bootstrap: Arc<str>,
    /// The queue subscription's group state, and which of its consumers this one is.
    group: Option<(Arc<Group>, u64)>,
    health: Option<Arc<Health>>,
}

impl Ctx {
    /// The context of a client; for a queue consumer, of the group's live consumer.
    pub(crate) fn new(bootstrap: &str, group: Option<Arc<Group>>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            group: group.map(|g| {
                let instance = g.instance.load(Ordering::Acquire);
                (g, instance)
            }),
            health: None,
        }
    }

    /// The group state, while this consumer is the live one.
    fn live_group(&self) -> Option<&Arc<Group>> {
        self.group
            .as_ref()
            .filter(|(g, instance)| g.is_live(*instance))
            .map(|(g, _)| g)
    }

    /// Tracks whether the client lost every broker in `health`.
    pub(crate) fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let kafka = &*self.bootstrap;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning
                // One per connection attempt while a broker is away: the subscriptions and
                // the producer report the outage themselves, once.
                if fac == "FAIL" =>
            {
                tracing::debug!(kafka, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!(kafka, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(kafka, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::trace!(kafka, fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            if let Some(h) = &self.health {
                h.all_down();
            }
        }
        // Connection failures are logged by librdkafka itself (`log` above) and retried by it;
        // repeating them here would double every line.
        if matches!(
            code,
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        ) {
            tracing::debug!(kafka = &*self.bootstrap, error = %error, "kafka client: {reason}");
        } else {
            tracing::warn!(kafka = &*self.bootstrap, error = %error, "kafka client: {reason}");
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(group) = self.live_group() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = group.partitions_of(tpl).collect();
                tracing::debug!(topic = %group.topic, partitions = ?parts, "kafka partitions assigned");
                group.tracker().assigned(parts);
            }
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = group.partitions_of(tpl).collect();
                let last = group.tracker().revoked(parts.iter().copied());
                tracing::debug!(topic = %group.topic, partitions = ?parts, "kafka partitions revoked");
                // The acked prefix goes out before this member rejoins, so the next owner
                // starts after it. Asynchronous: this runs on the polling task, and the commit
                // reaches the coordinator before the JoinGroup that follows it.
                if !last.is_empty() && !consumer.assignment_lost() {
                    if let Err(e) = consumer.commit(&group.tpl(&last), CommitMode::Async) {
                        tracing::debug!(topic = %group.topic, error = %e, "commit on revoke failed");
                    }
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(topic = %group.topic, error = %e, "kafka rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Some(group), Rebalance::Assign(_)) = (self.live_group(), rebalance) {
            group.assignments.send_modify(|n| *n += 1);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let (Some(group), Err(e)) = (self.live_group(), result) else {
            return;
        };
        tracing::debug!(topic = %group.topic, error = %e, "kafka offset commit failed; retrying");
        let mut tracker = group.tracker();
        for el in offsets.elements() {
            if let (true, Offset::Offset(o)) = (el.topic() == group.topic, el.offset()) {
                tracker.commit_failed(el.partition(), o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_static_member_has_an_instance_id_of_its_own() {
        let cfg = KafkaConfig::default();
        let (mut a, mut b) = (
            consumer_config(&cfg, "127.0.0.1:1", "t:n2"),
            consumer_config(&cfg, "127.0.0.1:1", "t:n2"),
        );
        assert_eq!(a.get("group.instance.id"), None, "dynamic unless asked");
        static_member(&mut a);
        static_member(&mut b);
        let (a, b) = (
            a.get("group.instance.id").unwrap(),
            b.get("group.instance.id").unwrap(),
        );
        assert!(a.starts_with("t:n2-"), "{a}");
        assert_ne!(a, b, "two members of one group would fence each other");
    }
}
