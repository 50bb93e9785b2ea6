//! Subscriptions: declaring the queue, consuming it on a channel of its own, handing the
//! payloads to the subscriber, (for queue groups) acknowledging them in batches, and carrying
//! on over a new connection after a reconnect.
//!
//! - `Fanout`: an exclusive, auto-delete, server-named queue bound to the exchange with the
//!   topic as routing key, consumed with `no_ack`: RabbitMQ forgets a message once it is on the
//!   wire, and the subscription buffers up to [`FANOUT_BUFFER`] payloads. A subscriber that
//!   falls further behind loses the overflow and is told so with `Error::Lagged`, never
//!   silently (the same contract as the memory broker's broadcast).
//! - `Queue{group}`: the durable queue `{topic}.{group}`, bounded by `x-max-length`
//!   (drop-head), consumed with manual acks and `basic.qos(prefetch)`. Each delivery carries an
//!   [`Acknowledge`] that sends its delivery tag to this subscription's task; the task acks in
//!   batches, off the subscriber's path: one `basic.ack(multiple)` covers every tag below the
//!   lowest one still unacked, tags above it are acked one by one. When the subscription is
//!   dropped the task sends the acks it already has, then closes the channel: RabbitMQ requeues
//!   everything still unacked for the other members of the group, which is the at-least-once
//!   contract.
//!
//! A subscription outlives its connection. Each [`Sub`] is registered with the broker; when
//! the connection is lost, its consumer (a [`Generation`]) ends, and after reconnecting the
//! supervisor (`link`) declares the queue again and hands the subscription a new generation
//! *before* the broker counts as connected again (so `ping`, hence `/readyz`, succeeds only
//! once every subscription consumes again). A queue group loses nothing meanwhile (its
//! unacked messages were requeued, and are delivered again: acks of the old connection's
//! deliveries are dropped, their tags mean nothing on the new one). A fanout subscriber
//! misses what was published while it had no queue, and gets `Error::Lagged { dropped: 0 }`
//! (count unknown) so that it can resynchronise. The stream ends only when the subscriber
//! drops it, at shutdown, when RabbitMQ cancels the consumer on a live connection (the queue
//! was deleted), or when declaring the queue again fails on a live connection.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{Acknowledge, Delivery, SubscribeMode};
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
    Channel, Consumer,
};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    batch,
    config::RabbitMqConfig,
    error::{Error, BACKEND},
    link::{Link, CLOSE_TIMEOUT},
};

/// Payloads a fanout subscription buffers for a slow subscriber before it lags.
pub(crate) const FANOUT_BUFFER: usize = 16 * 1024;
/// Payloads a queue subscription buffers (RabbitMQ sends no more than `prefetch` messages
/// ahead anyway).
const QUEUE_BUFFER: usize = 1024;
/// Most acks taken from the subscriber at once.
const ACK_BATCH: usize = 4096;
/// The longest name RabbitMQ takes for a queue or a routing key.
const MAX_NAME: usize = 255;

type Item = impush_core::Result<Delivery>;

/// The queue a group reads: `{topic}.{group}`.
pub(crate) fn group_queue(topic: &str, group: &str) -> Result<String, Error> {
    let name = format!("{topic}.{group}");
    if name.len() > MAX_NAME {
        return Err(Error::Name(format!(
            "queue name `{topic}.{group}` is longer than {MAX_NAME} bytes"
        )));
    }
    Ok(name)
}

/// One subscription as the broker knows it: what to declare again after a reconnect, and
/// where to hand the new consumer.
pub(crate) struct Sub {
    pub(crate) topic: String,
    pub(crate) mode: SubscribeMode,
    next: Mutex<Option<Generation>>,
    gave_up: AtomicBool,
    wake: Notify,
}

impl Sub {
    pub(crate) fn new(topic: &str, mode: SubscribeMode) -> Arc<Self> {
        Arc::new(Self {
            topic: topic.to_owned(),
            mode,
            next: Mutex::new(None),
            gave_up: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Gives the subscription its consumer on a new connection.
    pub(crate) fn hand_over(&self, g: Generation) {
        if let Ok(mut next) = self.next.lock() {
            // A generation handed over earlier and not taken yet is dead by now: replace it.
            *next = Some(g);
        }
        self.wake.notify_one();
    }

    /// Ends the subscription's stream: its queue could not be declared again.
    pub(crate) fn give_up(&self) {
        self.gave_up.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn take_next(&self) -> Option<Generation> {
        self.next.lock().ok().and_then(|mut n| n.take())
    }
}

/// A subscription's consumer on one connection.
pub(crate) struct Generation {
    ch: Channel,
    consumer: Consumer,
    link: Arc<Link>,
}

impl Generation {
    /// Whether this generation ended because its connection did.
    fn connection_lost(&self) -> bool {
        self.link.dead.is_cancelled() || !self.link.conn.status().connected()
    }
}

/// Declares and binds the queue of `mode` on `link` and starts consuming it.
pub(crate) async fn open(
    cfg: &RabbitMqConfig,
    link: &Arc<Link>,
    topic: &str,
    mode: &SubscribeMode,
) -> Result<Generation, Error> {
    let ch = link
        .conn
        .create_channel()
        .await
        .map_err(Error::op("channel.open"))?;
    let opening = Opening(Some(ch.clone()));
    let mut args = FieldTable::default();
    let max_len = i64::try_from(cfg.queue_max_len).unwrap_or(i64::MAX);
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(max_len));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    let (queue, options, no_ack) = match mode {
        SubscribeMode::Fanout => (
            String::new(), // server-named
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            true,
        ),
        SubscribeMode::Queue { group } => {
            if let Some(expires) = cfg.queue_expires {
                let ms = i64::try_from(expires.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1);
                args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
            }
            ch.basic_qos(cfg.prefetch, BasicQosOptions { global: false })
                .await
                .map_err(Error::op("basic.qos"))?;
            (
                group_queue(topic, group)?,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                false,
            )
        }
    };
    let declared = ch
        .queue_declare(queue.as_str().into(), options, args)
        .await
        .map_err(Error::op("queue.declare"))?;
    ch.queue_bind(
        declared.name().clone(),
        cfg.exchange.as_str().into(),
        topic.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(Error::op("queue.bind"))?;
    let consumer = ch
        .basic_consume(
            declared.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(Error::op("basic.consume"))?;
    opening.done();
    Ok(Generation {
        ch,
        consumer,
        link: link.clone(),
    })
}

/// The channel of an [`open`] under way. Dropped before it is done (the open failed, or it
/// was abandoned: a subscribe past `publish_timeout` drops it wherever it waits), it closes
/// the channel: a lapin channel stays open when its handles are dropped, and a consumer that
/// RabbitMQ registered on it after all would take a share of the queue's messages (up to the
/// prefetch) that nobody reads or acks while the connection lives. Closing it requeues them.
struct Opening(Option<Channel>);

impl Opening {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let (Some(ch), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { close(&ch).await });
        }
    }
}

/// Starts the task that feeds `sub`'s subscriber, from `first`; returns the subscriber's end.
pub(crate) fn start(
    sub: Arc<Sub>,
    first: Generation,
    closed: CancellationToken,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(match sub.mode {
        SubscribeMode::Fanout => FANOUT_BUFFER,
        SubscribeMode::Queue { .. } => QUEUE_BUFFER,
    });
    tokio::spawn(run(sub, first, tx, closed));
    rx
}

/// Why a generation ended.
#[derive(PartialEq)]
enum End {
    /// The subscriber dropped its stream.
    SubscriberGone,
    /// The consumer ended (connection lost, consumer cancelled, channel error).
    ConsumerEnded,
}

/// Feeds the subscriber from one generation after the other until it leaves.
async fn run(
    sub: Arc<Sub>,
    mut generation: Generation,
    tx: mpsc::Sender<Item>,
    closed: CancellationToken,
) {
    let mut fanout = FanoutState::default();
    let mut queue = QueueState::new();
    loop {
        let end = match sub.mode {
            SubscribeMode::Fanout => fanout.run(&mut generation, &tx).await,
            SubscribeMode::Queue { .. } => queue.run(&mut generation, &tx).await,
        };
        close(&generation.ch).await;
        if end == End::SubscriberGone || !generation.connection_lost() {
            // Gone, or RabbitMQ cancelled the consumer on a live connection (its queue was
            // deleted): the stream ends, and a subscriber that wants more subscribes again.
            return;
        }
        // Wait for the supervisor to reconnect and hand over a new consumer.
        generation = loop {
            if sub.gave_up.load(Ordering::Acquire) {
                return;
            }
            if let Some(g) = sub.take_next() {
                break g;
            }
            tokio::select! {
                () = sub.wake.notified() => {}
                () = tx.closed() => return,
                () = closed.cancelled() => return,
            }
        };
        fanout.gap = true;
    }
}

/// Closes a generation's channel: RabbitMQ deletes a fanout queue and requeues a queue
/// group's unacked messages.
async fn close(ch: &Channel) {
    if ch.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, "OK".into())).await;
    }
}

/// The payloads of one AMQP message: one, or several for a batch.
fn payloads(d: &mut lapin::message::Delivery) -> Result<Vec<Bytes>, Error> {
    let body = Bytes::from(std::mem::take(&mut d.data));
    match d.properties.kind() {
        Some(kind) if kind.as_str() == batch::BATCH_TYPE => batch::decode(&body)
            .map_err(|e| Error::Name(format!("undecodable {} message: {e}", batch::BATCH_TYPE))),
        _ => Ok(vec![body]),
    }
}

fn undecodable(e: Error) -> Item {
    Err(impush_core::Error::Backend {
        backend: BACKEND,
        source: Box::new(e),
    })
}

/// A fanout subscription's losses not yet reported.
#[derive(Default)]
struct FanoutState {
    /// Payloads dropped because the subscriber's buffer was full.
    dropped: u64,
    /// Messages may have been missed without a count (the connection was replaced).
    gap: bool,
}

impl FanoutState {
    fn lagged(&mut self) -> Item {
        let dropped = std::mem::take(&mut self.dropped);
        self.gap = false;
        Err(impush_core::Error::Lagged { dropped })
    }

    fn behind(&self) -> bool {
        self.dropped > 0 || self.gap
    }

    /// Forwards a `no_ack` consumer to the subscriber, dropping (and counting) what does not
    /// fit.
    async fn run(&mut self, g: &mut Generation, tx: &mpsc::Sender<Item>) -> End {
        loop {
            tokio::select! {
                biased;
                () = g.link.dead.cancelled() => return End::ConsumerEnded,
                // Room again after an overflow (or a reconnect): report the gap at once.
                permit = tx.reserve(), if self.behind() => match permit {
                    Ok(p) => p.send(self.lagged()),
                    Err(_) => return End::SubscriberGone,
                },
                () = tx.closed() => return End::SubscriberGone,
                item = g.consumer.next() => {
                    let mut d = match item {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => {
                            tracing::debug!(error = &e as &dyn std::error::Error, "fanout consumer ended");
                            return End::ConsumerEnded;
                        }
                        None => return End::ConsumerEnded,
                    };
                    let items: Vec<Item> = match payloads(&mut d) {
                        Ok(ps) => ps.into_iter().map(|p| Ok(Delivery::new(p))).collect(),
                        Err(e) => vec![undecodable(e)],
                    };
                    for item in items {
                        if self.behind() {
                            match tx.try_reserve() {
                                Ok(p) => p.send(self.lagged()),
                                Err(mpsc::error::TrySendError::Full(())) => {}
                                Err(mpsc::error::TrySendError::Closed(())) => {
                                    return End::SubscriberGone
                                }
                            }
                        }
                        if self.behind() {
                            self.dropped += 1;
                            continue;
                        }
                        match tx.try_send(item) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => self.dropped += 1,
                            Err(mpsc::error::TrySendError::Closed(_)) => return End::SubscriberGone,
                        }
                    }
                }
            }
        }
    }
}

/// Acks one payload of a message; the last one acks the message.
struct PayloadAck {
    message: Arc<MessageAcks>,
}

/// The payloads of one delivered message still to be acked.
struct MessageAcks {
    remaining: AtomicUsize,
    /// The generation (connection) it was delivered on, and its delivery tag there.
    generation: u64,
    tag: u64,
    acks: mpsc::UnboundedSender<(u64, u64)>,
}

impl Acknowledge for PayloadAck {
    fn ack(self: Box<Self>) {
        let m = &self.message;
        if m.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The task is gone only when the subscription is: the message stays unacked and is
            // requeued, which is what an unacked delivery means.
            let _ = m.acks.send((m.generation, m.tag));
        }
    }
}

/// A queue-group subscription's acknowledgement state.
struct QueueState {
    acks_tx: mpsc::UnboundedSender<(u64, u64)>,
    acks_rx: mpsc::UnboundedReceiver<(u64, u64)>,
    /// The current generation's number.
    generation: u64,
    /// Delivery tags taken from lapin (in this generation) and not yet acked by the subscriber.
    outstanding: BTreeSet<u64>,
}

impl QueueState {
    fn new() -> Self {
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        Self {
            acks_tx,
            acks_rx,
            generation: 0,
            outstanding: BTreeSet::new(),
        }
    }

    async fn run(&mut self, g: &mut Generation, tx: &mpsc::Sender<Item>) -> End {
        self.generation += 1;
        self.outstanding.clear();
        let mut out: VecDeque<Item> = VecDeque::new();
        let mut acked: Vec<(u64, u64)> = Vec::with_capacity(ACK_BATCH);
        let end = loop {
            tokio::select! {
                biased;
                () = g.link.dead.cancelled() => break End::ConsumerEnded,
                _ = self.acks_rx.recv_many(&mut acked, ACK_BATCH) => {
                    if let Err(e) = self.send_acks(&g.ch, &mut acked).await {
                        tracing::debug!(error = &e as &dyn std::error::Error, "acking failed");
                        break End::ConsumerEnded;
                    }
                }
                permit = tx.reserve(), if !out.is_empty() => match (permit, out.pop_front()) {
                    (Ok(p), Some(item)) => p.send(item),
                    _ => break End::SubscriberGone,
                },
                () = tx.closed(), if out.is_empty() => break End::SubscriberGone,
                item = g.consumer.next(), if out.is_empty() => {
                    let mut d = match item {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => {
                            tracing::debug!(error = &e as &dyn std::error::Error, "queue consumer ended");
                            break End::ConsumerEnded;
                        }
                        None => break End::ConsumerEnded,
                    };
                    self.outstanding.insert(d.delivery_tag);
                    match payloads(&mut d) {
                        Ok(ps) => {
                            let message = Arc::new(MessageAcks {
                                remaining: AtomicUsize::new(ps.len()),
                                generation: self.generation,
                                tag: d.delivery_tag,
                                acks: self.acks_tx.clone(),
                            });
                            out.extend(ps.into_iter().map(|p| {
                                Ok(Delivery::with_ack(p, PayloadAck { message: message.clone() }))
                            }));
                        }
                        Err(e) => {
                            // It would not decode any better on redelivery.
                            let _ = self.acks_tx.send((self.generation, d.delivery_tag));
                            out.push_back(undecodable(e));
                        }
                    }
                }
            }
        };
        if end == End::SubscriberGone && !g.connection_lost() {
            // Acks the subscriber made before leaving count; later ones cannot (the channel is
            // about to close, and its unacked messages go back to the queue).
            while let Ok(a) = self.acks_rx.try_recv() {
                acked.push(a);
            }
            let _ = self.send_acks(&g.ch, &mut acked).await;
        }
        end
    }

    /// Sends the acks in `acked` (emptied) that belong to the current generation: one
    /// `multiple` ack for every tag below the lowest still outstanding, single acks above it.
    async fn send_acks(&mut self, ch: &Channel, acked: &mut Vec<(u64, u64)>) -> Result<(), Error> {
        let generation = self.generation;
        let tags: Vec<u64> = acked
            .drain(..)
            .filter(|&(g, _)| g == generation)
            .map(|(_, t)| t)
            .collect();
        for tag in &tags {
            self.outstanding.remove(tag);
        }
        let floor = self.outstanding.first().copied().unwrap_or(u64::MAX);
        if let Some(tag) = tags.iter().copied().filter(|&t| t < floor).max() {
            ch.basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(Error::op("basic.ack"))?;
        }
        let singles = tags
            .into_iter()
            .filter(|&t| t > floor)
            .map(|tag| ch.basic_ack(tag, BasicAckOptions { multiple: false }));
        for r in futures_util::future::join_all(singles).await {
            r.map_err(Error::op("basic.ack"))?;
        }
        Ok(())
    }
}
