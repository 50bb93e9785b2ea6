//! [`KafkaBroker`]: topics are Kafka topics.
//!
//! - Topics are created on first use by this process (admin `CreateTopics`, `partitions` and
//!   `replication` from the config; "already exists" is fine).
//! - publish: one shared idempotent `FutureProducer`; each record is keyed by its topic name,
//!   so all of a topic's records go to one partition and one publisher's records keep their
//!   order. A publish returns once the broker acked the record (`acks=all`); records waiting
//!   behind a request in flight, or for `linger`, go out together.
//! - `Fanout`: a consumer of its own (with a group id of its own that it never joins); it
//!   assigns itself every partition of the topic at the current end offsets before `subscribe`
//!   returns, so it gets exactly what is published afterwards, with no group join and no
//!   rebalance.
//! - `Queue{group}`: a consumer in Kafka group `{topic}:{group}` (one group per topic, so a group
//!   name used on two topics is two independent groups). Offsets are committed only up to
//!   what was acked (`subscription`); a new group first commits the current end offsets, so
//!   messages published while it has no member wait for it but the topic's history does not
//!   replay.
//!
//! librdkafka's blocking calls (metadata, watermarks, synchronous commits, `flush`, closing a
//! consumer) run on the blocking thread pool, never on the runtime's workers.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use impush_core::{Broker, NodeId, Result, SubscribeMode, Subscription};
use rdkafka::{
    admin::AdminClient,
    config::FromClientConfigAndContext,
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
    util::Timeout,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    client::{self, Ctx, Health},
    config::KafkaConfig,
    error::Error,
    shared::{blocking, drop_detached, Clients, Inner, Takeovers},
    subscription,
    topics::{check_topic, Topics},
};

/// A [`Broker`] over Kafka. See the module docs for the layout.
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

impl fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("cfg", &self.inner.cfg)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// A publish (see `Broker::publish`) with `clients`, without its overall timeout.
    async fn publish_within(
        &self,
        mut clients: Clients,
        topic: &str,
        payload: Bytes,
    ) -> Result<()> {
        let mut replaced = false;
        loop {
            clients.topics.ensure(topic).await?;
            let record = FutureRecord::to(topic)
                .key(topic.as_bytes())
                .payload(payload.as_ref());
            let e = match clients
                .producer
                .send(record, Timeout::After(self.inner.cfg.publish_timeout))
                .await
            {
                Ok(_) => {
                    clients.health.up();
                    return Ok(());
                }
                Err((e, _)) => e,
            };
            // The topic may be gone (deleted, or lost in a broker restart; the record then
            // times out waiting for it): check it again on the next publish.
            clients.topics.forget(topic);
            // An idempotent producer whose producer id or epoch the cluster no longer accepts
            // refuses everything from now on: replace it (a new one gets a new id), and send
            // once more with the new one. Seen with tansu: records that timed out during a
            // stall make librdkafka bump the epoch, which tansu answers with PRODUCER_FENCED
            // for every later record.
            let broken = clients
                .producer
                .client()
                .fatal_error()
                .map(|(code, _)| code)
                .or(e.rdkafka_error_code().filter(|c| {
                    matches!(
                        c,
                        RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                            | RDKafkaErrorCode::UnknownProducerId
                            | RDKafkaErrorCode::OutOfOrderSequenceNumber
                            | RDKafkaErrorCode::InvalidProducerIdMapping
                    )
                }));
            if let Some(code) = broken {
                tracing::warn!(kafka = %self.inner.bootstrap, ?code, "kafka producer refused by the cluster; replacing it");
                clients.health.force_lost();
                if !replaced {
                    replaced = true;
                    clients = self.clients()?;
                    continue;
                }
            }
            return Err(Error::Kafka {
                bootstrap: self.inner.bootstrap.clone(),
                op: "publish",
                source: e,
            }
            .into());
        }
    }

    /// Creates the producer and admin clients and checks that the cluster answers.
    ///
    /// # Errors
    /// `Error::Config` naming the key for a bad config, `Error::Unavailable` when no broker
    /// answers within `request_timeout`.
    pub async fn connect(cfg: &KafkaConfig) -> Result<Self> {
        Self::open(cfg, None).await
    }

    /// Connects for node `node` of the cluster whose topics are `topics`: its queue members of
    /// another node's inbox (a takeover after that node died) join as static members, which
    /// leave by falling silent rather than by a LeaveGroup (README "Over Kafka").
    ///
    /// # Errors
    /// As [`KafkaBroker::connect`].
    pub async fn connect_for_node(
        cfg: &KafkaConfig,
        node: &NodeId,
        topics: &impush_core::envelope::Topics,
    ) -> Result<Self> {
        Self::open(cfg, Some(Takeovers::new(node, topics))).await
    }

    async fn open(cfg: &KafkaConfig, takeovers: Option<Takeovers>) -> Result<Self> {
        cfg.validate()?;
        let bootstrap = cfg.bootstrap_servers()?;
        let (producer, health) = new_producer(cfg, &bootstrap)?;
        let admin: AdminClient<Ctx> = AdminClient::from_config_and_context(
            &client::admin_config(cfg, &bootstrap),
            Ctx::new(&bootstrap, None),
        )
        .map_err(|e| config_error(&bootstrap, "admin client", e))?;
        let topics = Arc::new(Topics::new(admin, cfg, &bootstrap));
        let broker = Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                bootstrap,
                clients: Mutex::new(Some(Clients {
                    producer,
                    health,
                    topics,
                })),
                closed: AtomicBool::new(false),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                members: Default::default(),
                takeovers,
            }),
        };
        if let Err(e) = broker.ping().await {
            // Dropping the clients blocks (producer purge, thread joins): not on this thread.
            drop_detached(broker);
            return Err(e);
        }
        Ok(broker)
    }

    /// The clients to use now. After the producer lost every broker (or failed for good) it
    /// is replaced first: the cluster may have come back without its state (tansu keeps
    /// everything in memory), and an idempotent producer whose producer id the cluster forgot
    /// retries its batch forever (`UNKNOWN_PRODUCER_ID`, seen with tansu). A new producer gets
    /// a new id. Topics are checked again for the same reason.
    fn clients(&self) -> Result<Clients> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(impush_core::Error::Closed("kafka broker"));
        }
        let mut clients = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        let current = clients
            .as_mut()
            .ok_or(impush_core::Error::Closed("kafka broker"))?;
        if current.health.take_lost() {
            let inner = &self.inner;
            let (producer, health) = new_producer(&inner.cfg, &inner.bootstrap)?;
            current.health = health;
            let old = std::mem::replace(&mut current.producer, producer);
            current.topics.forget_all();
            tracing::warn!(kafka = %inner.bootstrap, "kafka producer replaced (it lost every broker, or the cluster refused it)");
            // Dropping a producer purges and flushes it (up to 500 ms): not on this thread.
            drop_detached(old);
        }
        Ok(current.clone())
    }
}

fn new_producer(cfg: &KafkaConfig, bootstrap: &str) -> Result<(FutureProducer<Ctx>, Arc<Health>)> {
    let health = Arc::new(Health::default());
    let producer = FutureProducer::from_config_and_context(
        &client::producer_config(cfg, bootstrap),
        Ctx::new(bootstrap, None).with_health(health.clone()),
    )
    .map_err(|e| config_error(bootstrap, "producer", e))?;
    Ok((producer, health))
}

/// librdkafka refused a property: a configuration error naming the client.
fn config_error(bootstrap: &str, client: &str, e: KafkaError) -> impush_core::Error {
    impush_core::Error::Config(format!(
        "config key `broker.properties`: kafka at {bootstrap}: cannot create the {client}: {e}"
    ))
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        check_topic(topic)?;
        // `publish_timeout` bounds the whole publish, as configured: the topic's check, the send
        // and a replaced producer's second send. librdkafka's own timeouts are checked on a
        // scan of about a second, and a second send doubles them (a send through a stopping
        // broker took 7.5 s with 2 s configured). A record given up on here may still reach the
        // broker: the caller, answered 503, retries with the same message id.
        let clients = self.clients()?;
        let topics = clients.topics.clone();
        let timeout = self.inner.cfg.publish_timeout;
        tokio::time::timeout(timeout, self.publish_within(clients, topic, payload))
            .await
            .unwrap_or_else(|_| {
                // As for a record that timed out: the topic may be gone, check it next time.
                topics.forget(topic);
                Err(Error::Stuck {
                    bootstrap: self.inner.bootstrap.clone(),
                    op: "publish",
                }
                .into())
            })
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        check_topic(topic)?;
        let clients = self.clients()?;
        clients.topics.ensure(topic).await?;
        match mode {
            SubscribeMode::Fanout => {
                subscription::fanout(self.inner.clone(), clients.topics, topic).await
            }
            SubscribeMode::Queue { group } => {
                subscription::queue(self.inner.clone(), clients.topics, topic, &group).await
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        let clients = self.clients()?;
        let bootstrap = self.inner.bootstrap.clone();
        let timeout = self.inner.cfg.request_timeout;
        blocking(&self.inner.bootstrap, "ping", move || {
            let md = clients
                .producer
                .client()
                .fetch_metadata(None, timeout)
                .map_err(Error::kafka(&bootstrap, "ping (metadata)"))?;
            clients.health.up();
            if md.brokers().is_empty() {
                return Err(Error::Reply {
                    bootstrap,
                    op: "ping (metadata)",
                    detail: "no broker in the cluster metadata".into(),
                }
                .into());
            }
            Ok(())
        })
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        let clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let timeout = self.inner.cfg.publish_timeout;
        let bootstrap = self.inner.bootstrap.clone();
        // flush() waits for every record in flight; dropping the clients joins their
        // threads. Both block, so neither runs on a runtime worker.
        let flushed = blocking(&self.inner.bootstrap, "flush", move || {
            let Some(clients) = clients else {
                return Ok(());
            };
            let r = clients
                .producer
                .flush(timeout)
                .map_err(|e| Error::kafka(&bootstrap, "flush")(e).into());
            drop(clients);
            r
        })
        .await;
        // The subscriptions commit what was acked and leave their groups.
        if tokio::time::timeout(timeout, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(kafka = %self.inner.bootstrap, "kafka subscriptions did not close within {timeout:?}");
        }
        flushed
    }
}
