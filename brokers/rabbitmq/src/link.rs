//! The connection to RabbitMQ ([`Link`]) and the loop that replaces it when it is lost
//! ([`supervise`]).
//!
//! One AMQP connection per broker instance, with one channel per role: a publisher channel in
//! confirm mode, a control channel (topology, `ping`), and one channel per subscription
//! (`consume`). lapin's own auto-recovery is off: it has open reports of not recovering after a
//! server restart, and it would replay consumers behind our back. Instead, when the connection
//! is lost, [`Link::dead`] is cancelled (every subscription's consumer stops), calls fail at
//! once with "unavailable", and [`supervise`] connects again with backoff: it declares the
//! exchange, declares every live subscription's queue again and hands it a new consumer
//! (`consume::Sub`), and only then makes the new connection the broker's, so that `ping`
//! succeeds only once everything consumes again.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{FieldTable, ShortString},
    uri::AMQPUri,
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::RabbitMqConfig,
    consume::{self, Sub},
    error::Error,
};

/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the supervisor looks at the connection's state besides lapin's error events.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long closing a channel or the connection may take before we give up on it.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every part of the broker shares: the configuration and the current connection.
pub(crate) struct Shared {
    pub(crate) cfg: RabbitMqConfig,
    uri: AMQPUri,
    /// `cfg.url` with the password redacted.
    pub(crate) url: String,
    link: Mutex<Option<Arc<Link>>>,
    /// Every live subscription, to resume after a reconnect. Held while subscribing and while
    /// resuming, so that a subscription is either resumed by a reconnect or made on its link.
    pub(crate) subs: tokio::sync::Mutex<Vec<Weak<Sub>>>,
    /// Set when `shutdown` starts: publishes and subscribes are refused from then on.
    pub(crate) closing: AtomicBool,
    /// Cancelled by `shutdown` once pending publishes are done; every link's `dead` token is a
    /// child of it.
    pub(crate) closed: CancellationToken,
}

impl Shared {
    /// Parses the configuration and opens the first connection.
    pub(crate) async fn connect(cfg: RabbitMqConfig) -> Result<Arc<Self>, Error> {
        let url = cfg.redacted_url();
        let uri = cfg.amqp_uri().map_err(|reason| Error::Url {
            url: url.clone(),
            reason,
        })?;
        let shared = Arc::new(Self {
            cfg,
            uri,
            url,
            link: Mutex::new(None),
            subs: tokio::sync::Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            closed: CancellationToken::new(),
        });
        let link = shared.open().await?;
        shared.set_link(Some(link.clone()));
        tokio::spawn(supervise(shared.clone(), link));
        Ok(shared)
    }

    /// The live connection: `Closed` once shutdown started, `Down` while reconnecting.
    pub(crate) fn link(&self) -> impush_core::Result<Arc<Link>> {
        if self.closing.load(Ordering::Acquire) {
            return Err(impush_core::Error::Closed("rabbitmq broker"));
        }
        self.link_for_flush()
    }

    /// [`Shared::link`] for publishes queued before `shutdown`: usable until it is done.
    pub(crate) fn link_for_flush(&self) -> impush_core::Result<Arc<Link>> {
        if self.closed.is_cancelled() {
            return Err(impush_core::Error::Closed("rabbitmq broker"));
        }
        let link = self.link.lock().ok().and_then(|l| l.clone());
        match link {
            Some(l) if !l.dead.is_cancelled() => Ok(l),
            _ => Err(Error::Down {
                url: self.url.clone(),
            }
            .into()),
        }
    }

    fn set_link(&self, link: Option<Arc<Link>>) {
        if let Ok(mut slot) = self.link.lock() {
            *slot = link;
        }
    }

    /// Removes the current connection (shutdown).
    pub(crate) fn take_link(&self) -> Option<Arc<Link>> {
        self.link.lock().ok().and_then(|mut l| l.take())
    }

    /// Connects, declares the exchange and opens the publisher channel, within
    /// `connect_timeout`.
    async fn open(&self) -> Result<Arc<Link>, Error> {
        let after = self.cfg.connect_timeout;
        match tokio::time::timeout(after, self.open_inner()).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout {
                url: self.url.clone(),
                after,
            }),
        }
    }

    async fn open_inner(&self) -> Result<Arc<Link>, Error> {
        let connect_err = |source| Error::Connect {
            url: self.url.clone(),
            source,
        };
        let props = ConnectionProperties::default().with_connection_name("impush".into());
        let conn = Connection::connect_uri(self.uri.clone(), props)
            .await
            .map_err(connect_err)?;
        let control = conn.create_channel().await.map_err(connect_err)?;
        control
            .exchange_declare(
                self.cfg.exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(Error::op("exchange.declare"))?;
        let publisher = open_publisher(&conn).await?;
        Ok(Arc::new(Link {
            conn,
            publisher: tokio::sync::Mutex::new(Some(publisher)),
            control: tokio::sync::Mutex::new(Some(control)),
            order: Mutex::new(()),
            dead: self.closed.child_token(),
        }))
    }
}

async fn open_publisher(conn: &Connection) -> Result<Channel, Error> {
    let ch = conn
        .create_channel()
        .await
        .map_err(Error::op("channel.open"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(Error::op("confirm.select"))?;
    Ok(ch)
}

/// A publish handed to lapin, until RabbitMQ confirms it.
pub(crate) type Confirming = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// One AMQP connection and its shared channels.
pub(crate) struct Link {
    pub(crate) conn: Connection,
    /// Publishes, in confirm mode; reopened when it broke (a channel error, a confirm timeout).
    publisher: tokio::sync::Mutex<Option<Channel>>,
    /// Passive declarations for `ping`; reopened when it broke.
    control: tokio::sync::Mutex<Option<Channel>>,
    /// Held while a publish is handed to lapin; see [`Link::publish`].
    order: Mutex<()>,
    /// Cancelled once this connection is lost or the broker shut down.
    pub(crate) dead: CancellationToken,
}

impl Link {
    /// The publisher channel, reopened if it closed.
    async fn publisher(&self) -> Result<Channel, Error> {
        let mut slot = self.publisher.lock().await;
        if let Some(ch) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = open_publisher(&self.conn).await?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// Forgets the publisher channel (its confirms are no longer awaited), so the next publish
    /// opens a fresh one. Dropping the last handle closes it.
    pub(crate) async fn discard_publisher(&self) {
        self.publisher.lock().await.take();
    }

    /// Hands one message to lapin and returns the wait for RabbitMQ's confirm.
    ///
    /// The message is queued on the publisher channel when this returns, so messages begun one
    /// after the other go out (and are confirmed) in that order, whoever awaits what.
    pub(crate) async fn begin_publish(
        &self,
        exchange: &str,
        topic: &str,
        body: Bytes,
        props: BasicProperties,
    ) -> Result<Confirming, Error> {
        let ch = self.publisher().await?;
        let (exchange, topic) = (ShortString::from(exchange), ShortString::from(topic));
        let nack_topic = topic.to_string();
        let mut send: Confirming = Box::pin(async move {
            let confirm = ch
                .basic_publish(
                    exchange,
                    topic,
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .map_err(Error::op("basic.publish"))?;
            match confirm.await.map_err(Error::op("publish confirm"))? {
                Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
                Confirmation::Nack(_) => Err(Error::Nack { topic: nack_topic }),
            }
        });
        // lapin numbers a publish for its confirm (`register_pending`) and queues its frames
        // (`push_frames`) under two different locks, both in the first poll of `basic_publish`.
        // Two publishes polled at once on two threads could queue their frames in the other
        // order than their numbers, and RabbitMQ's confirm for one would resolve the other's.
        // So that first poll happens here, under `order`; the rest (the frames being written,
        // the confirm) is awaited by the caller. A noop waker is fine: the next poll brings
        // the real one.
        let first = {
            // Poisoning cannot leave anything half-done here: the lock guards no data.
            let _turn = self.order.lock().unwrap_or_else(|e| e.into_inner());
            send.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        };
        Ok(match first {
            Poll::Ready(r) => Box::pin(std::future::ready(r)),
            Poll::Pending => send,
        })
    }

    /// A round trip to RabbitMQ: a passive declaration of the exchange.
    pub(crate) async fn ping(&self, exchange: &str) -> Result<(), Error> {
        let mut slot = self.control.lock().await;
        let ch = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(ch) => ch.clone(),
            None => {
                let ch = self
                    .conn
                    .create_channel()
                    .await
                    .map_err(Error::op("channel.open"))?;
                *slot = Some(ch.clone());
                ch
            }
        };
        drop(slot);
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(Error::op("exchange.declare (passive)"))
    }

    /// Closes the connection politely, within [`CLOSE_TIMEOUT`].
    pub(crate) async fn close(&self) {
        self.dead.cancel();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conn.close(200, "OK".into())).await;
    }
}

/// Awaits `fut` for at most `after`, as operation `op`.
pub(crate) async fn within<T>(
    op: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(after, fut)
        .await
        .unwrap_or(Err(Error::Timeout { op, after }))
}

/// Watches the connection and replaces it when it is lost, until shutdown.
async fn supervise(shared: Arc<Shared>, mut link: Arc<Link>) {
    loop {
        wait_until_lost(&shared, &link).await;
        link.dead.cancel();
        if shared.closed.is_cancelled() {
            return;
        }
        shared.set_link(None);
        tracing::warn!(url = %shared.url, "connection to RabbitMQ lost; reconnecting");
        let mut backoff = Duration::from_millis(100);
        link = loop {
            tokio::select! {
                () = shared.closed.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let l = match shared.open().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = &e as &dyn std::error::Error, "reconnect failed");
                    continue;
                }
            };
            if shared.resume(&l).await {
                break l;
            }
            l.close().await;
        };
        tracing::warn!(url = %shared.url, "reconnected to RabbitMQ");
    }
}

impl Shared {
    /// Declares every live subscription's queue on `link` and hands each its new consumer,
    /// then makes `link` the broker's connection; false (and nothing changed) if `link` was
    /// lost meanwhile. A subscription whose queue cannot be declared on a live connection
    /// ends, so that its subscriber finds out.
    async fn resume(&self, link: &Arc<Link>) -> bool {
        let mut subs = self.subs.lock().await;
        subs.retain(|s| s.strong_count() > 0);
        let mut resumed = 0;
        for sub in subs.iter().filter_map(Weak::upgrade) {
            let opened = within(
                "resubscribe",
                self.cfg.publish_timeout,
                consume::open(self, link, &sub.topic, &sub.mode),
            )
            .await;
            match opened {
                Ok(generation) => {
                    sub.hand_over(generation);
                    resumed += 1;
                }
                Err(_) if link.dead.is_cancelled() || !link.conn.status().connected() => {
                    return false;
                }
                Err(e) => {
                    tracing::warn!(
                        topic = %sub.topic,
                        error = &e as &dyn std::error::Error,
                        "cannot resubscribe after reconnecting; ending the subscription"
                    );
                    sub.give_up();
                }
            }
        }
        if self.closed.is_cancelled() {
            return false;
        }
        tracing::debug!(resumed, "subscriptions resumed");
        self.set_link(Some(link.clone()));
        true
    }
}

/// Returns once `link`'s connection is no longer usable, or at shutdown.
async fn wait_until_lost(shared: &Shared, link: &Link) {
    let mut events = link.conn.events_listener();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            () = shared.closed.cancelled() => return,
            () = link.dead.cancelled() => return,
            // lapin reports errors (of the connection or of one channel) as events; its state
            // says whether the connection survived. The tick covers losses without an event.
            ev = events.next() => if ev.is_none() { return },
            _ = tick.tick() => {}
        }
        if !link.conn.status().connected() {
            return;
        }
    }
}
