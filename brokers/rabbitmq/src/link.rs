//! One connection to RabbitMQ ([`Link`]) and its shared channels.
//!
//! One AMQP connection per broker instance, with one channel per role: a publisher channel in
//! confirm mode, a control channel (topology, `ping`), and one channel per subscription
//! (`consume`). lapin's own auto-recovery is off: it has open reports of not recovering after a
//! server restart, and it would replay consumers behind our back. Instead, when the connection
//! is lost, [`Link::dead`] is cancelled (every subscription's consumer stops) and the
//! supervisor (`shared`) replaces the link with a new one.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{FieldTable, ShortString},
    uri::AMQPUri,
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio_util::sync::CancellationToken;

use crate::{config::RabbitMqConfig, error::Error};

/// How long closing a channel or the connection may take before we give up on it.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Connects to `uri`, declares the exchange and opens the publisher channel, within
    /// `connect_timeout`. The connection's `dead` token is a child of `closed` (the broker's
    /// shutdown). `url` is `uri` with the password redacted, for errors.
    pub(crate) async fn open(
        cfg: &RabbitMqConfig,
        uri: &AMQPUri,
        url: &str,
        closed: &CancellationToken,
    ) -> Result<Arc<Link>, Error> {
        let after = cfg.connect_timeout;
        match tokio::time::timeout(after, Self::open_inner(cfg, uri, url, closed)).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout {
                url: url.to_owned(),
                after,
            }),
        }
    }

    async fn open_inner(
        cfg: &RabbitMqConfig,
        uri: &AMQPUri,
        url: &str,
        closed: &CancellationToken,
    ) -> Result<Arc<Link>, Error> {
        let connect_err = |source| Error::Connect {
            url: url.to_owned(),
            source,
        };
        let props = ConnectionProperties::default().with_connection_name("impush".into());
        let conn = Connection::connect_uri(uri.clone(), props)
            .await
            .map_err(connect_err)?;
        let control = conn.create_channel().await.map_err(connect_err)?;
        control
            .exchange_declare(
                cfg.exchange.as_str().into(),
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
            dead: closed.child_token(),
        }))
    }

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
