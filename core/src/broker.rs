//! The [`Broker`] trait: publish/subscribe of opaque byte payloads on named topics.
//!
//! Backends live in their own crates (memory here, Redis/RabbitMQ/Kafka under `brokers/`); the
//! node and the helper only ever hold an `Arc<dyn Broker>` chosen from config.

use std::{fmt::Debug, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::Result;

/// A stream of payloads from one subscription. Dropping it unsubscribes.
///
/// An `Err(Error::Lagged { .. })` item reports lost messages and the stream goes on; a stream that
/// ends means the broker closed it (shutdown, or a connection loss the backend could not hide):
/// subscribe again.
pub type Subscription = BoxStream<'static, Result<Bytes>>;

/// How a subscription shares a topic with other subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubscribeMode {
    /// Every subscriber gets every message published after it subscribed.
    Fanout,
    /// Each message goes to one member of `group`. Messages published while no member is
    /// subscribed wait (bounded retention) and are delivered when one subscribes.
    Queue {
        /// The group name; members of one group share the work.
        group: String,
    },
}

/// Publish/subscribe of opaque byte payloads on named topics.
///
/// # Contract
/// - At-most-once delivery for `Fanout`; messages from one publisher on one topic arrive in order.
/// - `Queue` retains messages for a group that currently has no member, within the backend's
///   retention bound, and hands each message to one member.
/// - Dropping a [`Subscription`] unsubscribes. Every method is cancel safe.
/// - Errors that may go away on retry are reported as `Error::Unavailable`
///   (see [`Error::is_transient`](crate::Error::is_transient)).
#[async_trait]
pub trait Broker: Send + Sync + Debug + 'static {
    /// Publishes `payload` on `topic`.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()>;

    /// Subscribes to `topic`; errors surface here, before the stream is handed out.
    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription>;

    /// Checks that the broker is reachable (used by `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Flushes pending publishes and closes connections. Calling it twice is fine.
    async fn shutdown(&self) -> Result<()>;
}

#[async_trait]
impl<T: Broker + ?Sized> Broker for Arc<T> {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        (**self).publish(topic, payload).await
    }
    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        (**self).subscribe(topic, mode).await
    }
    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
    async fn shutdown(&self) -> Result<()> {
        (**self).shutdown().await
    }
}

#[async_trait]
impl<T: Broker + ?Sized> Broker for Box<T> {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        (**self).publish(topic, payload).await
    }
    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        (**self).subscribe(topic, mode).await
    }
    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
    async fn shutdown(&self) -> Result<()> {
        (**self).shutdown().await
    }
}
