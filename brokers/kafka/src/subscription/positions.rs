//! What a subscription asks the cluster without fetching: a topic's partitions, where a
//! fanout reader starts, where a new group starts, and whether the cluster kept a group.
//! Every function here blocks (run it on the blocking pool).

use std::{collections::HashMap, time::Duration};

use impush_core::Result;
use rdkafka::{
    consumer::{CommitMode, Consumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
    Offset, TopicPartitionList,
};

use super::KafkaConsumer;
use crate::error::Error;

/// The partitions of `topic`, waiting (within `timeout`) for a just-created topic to show up
/// in the metadata. Blocking.
pub(super) fn partitions(
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
pub(super) fn assign_fanout(
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

/// Gives a group that has no committed offset on some partition of `topic` one: the current
/// end. Without it the first member would start at `auto.offset.reset`: `latest` would lose
/// what is published before it joined, `earliest` would replay the topic's history. Blocking.
pub(super) fn start_position(
    consumer: &KafkaConsumer,
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<()> {
    let parts = partitions(consumer, bootstrap, topic, timeout)?;
    let missing = |consumer: &KafkaConsumer| -> Result<Vec<i32>> {
        let committed = committed(consumer, bootstrap, topic, &parts, timeout)?;
        Ok(committed
            .into_iter()
            .filter(|(_, at)| at.is_none())
            .map(|(p, _)| p)
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
/// through an outage must not fetch from a broker that restarted empty (the `subscription`
/// module docs). Blocking.
pub(super) fn group_kept(
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
    let parts: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    let committed = committed(consumer, bootstrap, topic, &parts, timeout)?;
    Ok(committed.iter().any(|(_, at)| at.is_some()))
}

/// The group's committed offset on each of `parts` of `topic` (`None`: it has none there).
fn committed(
    consumer: &KafkaConsumer,
    bootstrap: &str,
    topic: &str,
    parts: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, Option<i64>)>> {
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(Error::kafka(bootstrap, "committed offsets"))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => (e.partition(), Some(o)),
            _ => (e.partition(), None),
        })
        .collect())
}
