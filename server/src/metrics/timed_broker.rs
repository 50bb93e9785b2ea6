//! [`TimedBroker`]: the node's broker, wrapped so that every `publish` (of the node, of the
//! presence store that shares the broker, and of the node's embedded helper) is timed into the
//! `impush_broker_publish_seconds` histogram, labelled with the `[broker] kind`
//! (`docs/design.md` section 17).
//!
//! A decorator rather than timing at each call site: the node publishes from many places
//! (inbox routing, receipts, events, history), and the helper lives in another crate.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use bytes::Bytes;
use impush_core::{Broker, Result, SubscribeMode, Subscription};

use super::Metrics;

/// Forwards everything to the broker it wraps and times `publish`.
#[derive(Debug)]
pub(crate) struct TimedBroker {
    inner: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
}

impl TimedBroker {
    /// Wraps `inner`, whose publishes are labelled `backend` in `metrics` (the first backend
    /// set on these metrics stays: a node has one broker).
    pub(crate) fn wrap(inner: Arc<dyn Broker>, backend: &str, metrics: Arc<Metrics>) -> Self {
        let _ = metrics.broker_backend.set(backend.into());
        Self { inner, metrics }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl Broker for TimedBroker {
    /// Failed publishes are timed too: a broker that times out is exactly what the histogram
    /// must show. A publish cancelled before it completed is not observed.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.publish(topic, payload).await;
        self.metrics.broker_publish.observe(started.elapsed());
        result
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        self.inner.subscribe(topic, mode).await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::StreamExt;
    use impush_core::MemoryBroker;

    use super::*;

    #[tokio::test]
    async fn publishes_are_timed_and_everything_is_forwarded() {
        let metrics = Arc::new(Metrics::default());
        let broker =
            TimedBroker::wrap(Arc::new(MemoryBroker::default()), "memory", metrics.clone());
        broker.ping().await.unwrap();
        let mut sub = broker.subscribe("t", SubscribeMode::Fanout).await.unwrap();
        assert_eq!(metrics.broker_publish.snapshot().count(), 0);
        broker
            .publish("t", Bytes::from_static(b"hi"))
            .await
            .unwrap();
        broker
            .publish("t", Bytes::from_static(b"again"))
            .await
            .unwrap();
        let got = sub.next().await.unwrap().unwrap();
        assert_eq!(got.payload(), &Bytes::from_static(b"hi"));
        assert_eq!(metrics.broker_publish.snapshot().count(), 2);
        assert_eq!(metrics.broker_backend.get().map(|b| &**b), Some("memory"));
        broker.shutdown().await.unwrap();
    }
}
