//! [`RabbitMqBroker`]: topics are routing keys of one direct exchange.
//!
//! Layout (see the README for the why):
//! - one durable **direct** exchange (`exchange`, default `impush`); a topic is a routing key,
//!   matched exactly, so `a` and `a.b` never see each other's messages and a publish never
//!   needs a declaration first (a per-topic exchange would have to exist before the first
//!   publish, or RabbitMQ closes the channel);
//! - `Fanout`: an exclusive auto-delete server-named queue per subscription;
//! - `Queue{group}`: the durable queue `{topic}.{group}`, declared when a member subscribes, so
//!   a node's inbox keeps its messages while the node restarts (within `queue_max_len`).
//!
//! See `publish` (confirms, batching), `consume` (acks, prefetch, lag), `link` (the
//! connection) and `shared` (reconnection).

use std::{
    fmt,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{Broker, Result, SubscribeMode, Subscription};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    config::RabbitMqConfig,
    consume::{self, Sub},
    error::Error,
    link::within,
    publish::{self, Outgoing},
    shared::Shared,
};

/// The longest topic (routing key) RabbitMQ takes.
const MAX_TOPIC: usize = 255;

/// A [`Broker`] over RabbitMQ. See the module docs for the layout.
pub struct RabbitMqBroker {
    shared: Arc<Shared>,
    outgoing: Arc<Outgoing>,
}

impl fmt::Debug for RabbitMqBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqBroker")
            .field("cfg", &self.shared.cfg)
            .field("connected", &self.shared.link().is_ok())
            .finish_non_exhaustive()
    }
}

impl RabbitMqBroker {
    /// Connects, and declares the exchange.
    ///
    /// The connection is then kept up by a background task: when it is lost, calls fail with
    /// `Error::Unavailable` until it is back; it is re-established with backoff, and every
    /// subscription carries on over the new one (a fanout subscriber gets `Error::Lagged`
    /// for what it may have missed meanwhile).
    ///
    /// # Errors
    /// `Error::Unavailable` when RabbitMQ cannot be reached (the message names the URL without
    /// its password), `Error::Config` for a bad URL, `Error::Backend` when RabbitMQ refuses
    /// (bad credentials, the exchange exists with another type).
    pub async fn connect(cfg: &RabbitMqConfig) -> Result<Self> {
        let shared = Shared::connect(cfg.clone()).await?;
        Ok(Self {
            shared,
            outgoing: Arc::new(Outgoing::default()),
        })
    }
}

fn check_topic(topic: &str) -> std::result::Result<(), Error> {
    if topic.len() > MAX_TOPIC {
        return Err(Error::Name(format!(
            "topic is longer than {MAX_TOPIC} bytes (a RabbitMQ routing key)"
        )));
    }
    Ok(())
}

#[async_trait]
impl Broker for RabbitMqBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(impush_core::Error::Closed("rabbitmq broker"));
        }
        check_topic(topic)?;
        publish::publish(&self.shared, &self.outgoing, topic, payload).await
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        check_topic(topic)?;
        let shared = &self.shared;
        let subscribed = async {
            // Under `subs`: a reconnect either happens before (and we use its link) or after
            // (and resumes this subscription too).
            let mut subs = shared.subs.lock().await;
            let link = shared.link()?;
            let first = consume::open(&shared.cfg, &link, topic, &mode).await?;
            let sub = Sub::new(topic, mode);
            subs.retain(|s| s.strong_count() > 0);
            subs.push(Arc::downgrade(&sub));
            Ok::<_, impush_core::Error>(consume::start(sub, first, shared.closed.clone()))
        };
        let after = shared.cfg.publish_timeout;
        let rx = tokio::time::timeout(after, subscribed)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    op: "subscribe",
                    after,
                }
                .into())
            })?;
        Ok(ReceiverStream::new(rx).boxed())
    }

    async fn ping(&self) -> Result<()> {
        let link = self.shared.link()?;
        let exchange = &self.shared.cfg.exchange;
        within("ping", self.shared.cfg.publish_timeout, link.ping(exchange))
            .await
            .map_err(Into::into)
    }

    async fn shutdown(&self) -> Result<()> {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // New publishes are refused from here on; those already queued get their confirm
        // (or their timeout) before the connection goes.
        let deadline = tokio::time::Instant::now() + self.shared.cfg.publish_timeout;
        while !self.outgoing.is_idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shared.closed.cancel();
        if let Some(link) = self.shared.take_link() {
            link.close().await;
        }
        Ok(())
    }
}
