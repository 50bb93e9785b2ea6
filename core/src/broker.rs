//! The [`Broker`] trait: publish/subscribe of opaque byte payloads on named topics.
//!
//! Backends live in their own crates (memory here, Redis/RabbitMQ/Kafka under `brokers/`); the
//! node and the helper only ever hold an `Arc<dyn Broker>` chosen from config.

use std::{fmt::Debug, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::Result;

/// A stream of deliveries from one subscription. Dropping it unsubscribes.
///
/// An `Err(Error::Lagged { .. })` item reports lost messages and the stream goes on; a stream that
/// ends means the broker closed it (shutdown, or a connection loss the backend could not hide):
/// subscribe again.
pub type Subscription = BoxStream<'static, Result<Delivery>>;

/// Tells the broker that a [`SubscribeMode::Queue`] delivery was handled.
///
/// Implemented by backends. `ack` must not block: backends batch acknowledgements (one `XACK`
/// per read batch, a committed offset per interval) off the caller's path.
pub trait Acknowledge: Send + 'static {
    /// The delivery was handled; the broker may forget it.
    fn ack(self: Box<Self>);
}

/// The acknowledgement half of a [`Delivery`]: call [`Acker::ack`] once the message is settled.
///
/// Dropping it without acking leaves the message unacknowledged: the backend delivers it again
/// (to a member of the same group) once this subscription is gone, or after the backend's
/// redelivery timeout. A `Fanout` delivery's acker does nothing.
#[must_use = "an unacknowledged queue delivery is delivered again"]
pub struct Acker(Option<Box<dyn Acknowledge>>);

impl Acker {
    /// An acker with nothing to acknowledge (fanout deliveries, tests).
    pub fn none() -> Self {
        Self(None)
    }

    /// An acker that runs `ack`, e.g. one share of a delivery that carries several messages
    /// and is acknowledged once every share was.
    pub fn new(ack: impl Acknowledge) -> Self {
        Self(Some(Box::new(ack)))
    }

    /// Acknowledges the delivery.
    pub fn ack(self) {
        if let Some(a) = self.0 {
            a.ack();
        }
    }

    /// Whether acking this tells the broker anything (false for fanout deliveries).
    pub fn is_needed(&self) -> bool {
        self.0.is_some()
    }
}

/// An acker is itself an acknowledgement, so a delivery can be rebuilt around a new payload
/// (e.g. after decoding) and keep its ack.
impl Acknowledge for Acker {
    fn ack(self: Box<Self>) {
        (*self).ack();
    }
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Acker(pending)"
        } else {
            "Acker(none)"
        })
    }
}

/// One message received from a [`Subscription`]: the payload and how to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    payload: Bytes,
    acker: Acker,
}

impl Delivery {
    /// A delivery with nothing to acknowledge (what `Fanout` subscriptions yield).
    pub fn new(payload: Bytes) -> Self {
        Self {
            payload,
            acker: Acker::none(),
        }
    }

    /// A delivery the subscriber must acknowledge (what `Queue` subscriptions yield).
    pub fn with_ack(payload: Bytes, ack: impl Acknowledge) -> Self {
        Self {
            payload,
            acker: Acker(Some(Box::new(ack))),
        }
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload and the acker, to ack after handling the payload elsewhere.
    pub fn into_parts(self) -> (Bytes, Acker) {
        (self.payload, self.acker)
    }

    /// Acknowledges the delivery now and returns the payload (for subscribers that have
    /// nothing to settle first).
    pub fn ack(self) -> Bytes {
        self.acker.ack();
        self.payload
    }
}

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
/// - `Fanout`: at-most-once; messages from one publisher on one topic arrive in order; a gap is
///   reported as `Err(Error::Lagged)`, never silent. Deliveries need no acknowledgement.
/// - `Queue`: retains messages for a group that currently has no member, within the backend's
///   retention bound, and hands each message to one member: **at-least-once**. A delivery whose
///   [`Acker`] was not acked when its subscription ended (dropped, or the process died) is
///   delivered again to a member of the group, at once or after the backend's redelivery
///   timeout. Acknowledging is cheap and never blocks; backends batch it.
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
