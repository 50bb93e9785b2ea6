//! Kafka topics: the rule for their names, and [`Topics`], which creates each topic the first
//! time this process uses it (admin `CreateTopics`; "already exists" is fine).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use impush_core::Result;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use tokio::sync::OnceCell;

use crate::{client::Ctx, config::KafkaConfig, error::Error};

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`.
pub(crate) fn check_topic(topic: &str) -> Result<()> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(impush_core::Error::InvalidArgument(format!(
            "`{topic}` is not a valid Kafka topic name (1 to 249 of [a-zA-Z0-9._-])"
        )))
    }
}

/// Creates topics on first use, once per topic and process.
pub(crate) struct Topics {
    admin: AdminClient<Ctx>,
    bootstrap: String,
    partitions: i32,
    replication: i32,
    max_message_bytes: String,
    timeout: Duration,
    known: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
}

impl Topics {
    /// Topics created through `admin` with the partitions, replication and size limit of
    /// `cfg`.
    pub(crate) fn new(admin: AdminClient<Ctx>, cfg: &KafkaConfig, bootstrap: &str) -> Self {
        Self {
            admin,
            bootstrap: bootstrap.to_owned(),
            partitions: cfg.partitions,
            replication: cfg.replication,
            max_message_bytes: cfg.max_message_bytes.to_string(),
            timeout: cfg.request_timeout,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn cell(&self, topic: &str) -> Arc<OnceCell<()>> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.entry(topic.to_owned()).or_default().clone()
    }

    /// Makes sure `topic` exists (creates it the first time this process uses it).
    pub(crate) async fn ensure(&self, topic: &str) -> Result<()> {
        self.cell(topic)
            .get_or_try_init(|| self.create(topic))
            .await
            .map(drop)
    }

    /// Forgets that `topic` exists (the broker said it does not), so the next `ensure`
    /// creates it again.
    pub(crate) fn forget(&self, topic: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.remove(topic);
    }

    /// Forgets every topic (the cluster may have restarted without them).
    pub(crate) fn forget_all(&self) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.clear();
    }

    async fn create(&self, topic: &str) -> Result<()> {
        let new = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        )
        .set("max.message.bytes", &self.max_message_bytes);
        let opts = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(Error::kafka(&self.bootstrap, "create topic"))?;
        for r in results {
            match r {
                Ok(_) => tracing::debug!(%topic, "kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::Kafka {
                        bootstrap: self.bootstrap.clone(),
                        op: "create topic",
                        source: KafkaError::AdminOp(code),
                    }
                    .into())
                }
            }
        }
        Ok(())
    }
}
