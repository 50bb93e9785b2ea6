//! [`NatsBroker`]: the [`Broker`] trait over one NATS connection.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
};

use async_nats::{
    connection::State,
    jetstream::{
        self,
        consumer::{pull, AckPolicy, DeliverPolicy},
        context::{CreateStreamErrorKind, PublishErrorKind},
        stream::{self, ConsumerErrorKind, DiscardPolicy, RetentionPolicy, StorageType},
        ErrorCode,
    },
    Client, ConnectOptions, Event,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use impush_brokers::BackendContext;
use impush_core::{Broker, Error as CoreError, Result, SubscribeMode, Subscription};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    config::{NatsConfig, Storage},
    error::Error,
    fanout, naming,
    queue::{self, AckCmd, Held, SharedHeld},
};

/// An impush [`Broker`] over NATS: core NATS for `Fanout`, JetStream for `Queue` groups.
///
/// See the [crate docs](crate) for the layout (subjects, streams, consumers) and the
/// guarantees. One connection per broker; every method is cancel safe.
#[derive(Debug)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: NatsConfig,
    /// `cfg.url` without secrets, for messages.
    addr: String,
    client: Client,
    js: jetstream::Context,
    /// Streams known to exist (checked or created once per broker).
    streams: Mutex<HashSet<String>>,
    closed: AtomicBool,
    /// Acks and naks of every queue member, in order (see `queue`).
    acks: mpsc::UnboundedSender<AckCmd>,
    /// Bumped when fanout subscribers may have missed messages (reconnect, slow consumer).
    gaps: Arc<watch::Sender<u64>>,
    /// The queue members alive, so that shutdown can give back what they hold.
    members: Mutex<Vec<Weak<Mutex<Held>>>>,
}

impl NatsBroker {
    /// Connects to the NATS server(s) of `cfg.url` and checks that JetStream is enabled.
    ///
    /// # Errors
    /// `Error::Config` naming `broker.url` for a URL NATS cannot parse; `Error::Unavailable`
    /// when the server cannot be reached in `request_timeout`; `Error::Backend` when the
    /// server has no JetStream (`nats-server -js`).
    pub async fn connect(cfg: &NatsConfig) -> Result<Self> {
        Self::connect_named(cfg, "impush").await
    }

    /// As [`NatsBroker::connect`], for a factory registered with
    /// [`Backends::register_broker`](impush_brokers::Backends::register_broker): the connection
    /// is named after the node (`impush {prefix} {node}`, or `... helper`), which is what the
    /// NATS server's monitoring (`/connz`) shows.
    ///
    /// # Errors
    /// As [`NatsBroker::connect`].
    pub async fn connect_for(cfg: &NatsConfig, ctx: &BackendContext) -> Result<Self> {
        let name = match &ctx.node {
            Some(node) => format!("impush {} {node}", ctx.prefix),
            None => format!("impush {} helper", ctx.prefix),
        };
        Self::connect_named(cfg, &name).await
    }

    async fn connect_named(cfg: &NatsConfig, name: &str) -> Result<Self> {
        let addr = cfg.redacted_url();
        let servers = cfg.servers();
        if servers.is_empty() {
            return Err(CoreError::Config(
                "config key `broker.url`: give at least one nats:// URL".into(),
            ));
        }
        for s in &servers {
            if s.parse::<async_nats::ServerAddr>().is_err() {
                return Err(CoreError::Config(format!(
                    "config key `broker.url`: `{}` is not a NATS URL (nats://host:port)",
                    cfg.redacted_url()
                )));
            }
        }
        if cfg.ack_wait < queue::NAK_DELAY {
            return Err(CoreError::Config(format!(
                "config key `broker.ack_wait`: at least {:?}, longer than a pull request lives \
                 (see the crate docs)",
                queue::NAK_DELAY
            )));
        }
        let (gaps, _) = watch::channel(0u64);
        let gaps = Arc::new(gaps);
        let options = ConnectOptions::new()
            .name(name)
            .connection_timeout(cfg.request_timeout)
            .request_timeout(Some(cfg.request_timeout))
            .event_callback(events(addr.clone(), gaps.clone()));
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| Error::connect(&addr, &e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.request_timeout)
            .build(client.clone());
        // Fail at start-up, not on the first queue subscription, when JetStream is off. (A raw
        // `$JS.API.INFO` request: async-nats 0.51's `query_account` cannot parse a 2.9 answer.)
        let off = |why: String| {
            Error::op(
                &addr,
                "checking JetStream (is it enabled? nats-server -js)",
                false,
                why,
            )
        };
        let info = client
            .request("$JS.API.INFO", Bytes::new())
            .await
            .map_err(|e| off(e.to_string()))?;
        if let Some(at) = info.payload.windows(8).position(|w| w == b"\"error\"") {
            return Err(off(String::from_utf8_lossy(&info.payload[at..]).into_owned()).into());
        }
        let (acks, ack_rx) = mpsc::unbounded_channel();
        tokio::spawn(queue::run_ack_writer(client.clone(), ack_rx));
        Ok(Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                addr,
                client,
                js,
                streams: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
                acks,
                gaps,
                members: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// The connection's event callback: logs, and tells fanout subscribers about gaps.
fn events(
    addr: String,
    gaps: Arc<watch::Sender<u64>>,
) -> impl Fn(Event) -> futures_util::future::Ready<()> + Send + Sync + 'static {
    let was_disconnected = AtomicBool::new(false);
    move |event| {
        match event {
            Event::Disconnected => {
                was_disconnected.store(true, Ordering::Relaxed);
                tracing::warn!("nats: disconnected from {addr}; reconnecting");
            }
            Event::Connected => {
                if was_disconnected.swap(false, Ordering::Relaxed) {
                    tracing::info!("nats: reconnected to {addr}");
                    // NATS core kept nothing for us while we were away.
                    gaps.send_modify(|n| *n += 1);
                }
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!("nats: subscription {sid} lost messages (slow consumer)");
                gaps.send_modify(|n| *n += 1);
            }
            Event::Draining | Event::Closed => tracing::debug!("nats ({addr}): {event}"),
            other => tracing::warn!("nats ({addr}): {other}"),
        }
        futures_util::future::ready(())
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CoreError::Closed("nats broker"));
        }
        Ok(())
    }

    fn forget_stream(&self, name: &str) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Makes sure the stream that stores `subject` exists; returns its name.
    async fn ensure_stream(&self, subject: &str) -> Result<String> {
        let (name, subjects) = naming::stream_for(subject);
        let known = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&name);
        if known {
            return Ok(name);
        }
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!(
                "impush topics {}: queue groups read it (impush-example-nats)",
                subjects.join(", ")
            )),
            subjects,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_messages: self.cfg.stream_max_msgs,
            max_bytes: self.cfg.stream_max_bytes,
            max_age: self.cfg.stream_max_age,
            storage: match self.cfg.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            num_replicas: 1,
            ..Default::default()
        };
        match self.js.get_or_create_stream(config).await {
            Ok(_) => {}
            // Created meanwhile by another process with other limits: use it as it is (the
            // first creator's limits win; change them with `nats stream edit`).
            Err(e) if self.js.get_stream(&name).await.is_ok() => {
                tracing::debug!(cause = %e, "nats: stream {name} exists with another configuration");
            }
            Err(e) => {
                let transient = matches!(
                    e.kind(),
                    CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable
                );
                return Err(Error::op(
                    &self.addr,
                    format!("creating stream {name} (subjects {subject}...)"),
                    transient,
                    e,
                )
                .into());
            }
        }
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone());
        Ok(name)
    }

    /// Publishes through JetStream and waits until the stream stored the message.
    async fn js_publish(
        &self,
        subject: &str,
        payload: Bytes,
    ) -> Result<(), jetstream::context::PublishError> {
        self.js
            .publish(subject.to_owned(), payload)
            .await?
            .await
            .map(drop)
    }

    async fn subscribe_fanout(&self, subject: String) -> Result<Subscription> {
        let sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::op(&self.addr, format!("subscribing to {subject}"), true, e))?;
        // A round trip: the server has our interest before `subscribe` returns, so everything
        // published after it reaches us.
        self.flush(&format!("subscribing to {subject}")).await?;
        let (tx, rx) = mpsc::channel(self.cfg.fanout_buffer.max(1));
        tokio::spawn(fanout::run(sub, Some(self.gaps.subscribe()), tx));
        Ok(ReceiverStream::new(rx).boxed())
    }

    async fn subscribe_queue(
        &self,
        topic: &str,
        subject: String,
        group: &str,
    ) -> Result<Subscription> {
        let name = naming::consumer(topic, group);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("impush queue group `{group}` on `{topic}`")),
            filter_subject: subject.clone(),
            // A new group starts with what is published from now on, not with history.
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.cfg.ack_wait,
            max_ack_pending: self.cfg.max_ack_pending,
            inactive_threshold: self.cfg.group_idle_ttl.unwrap_or_default(),
            ..Default::default()
        };
        let mut retried = false;
        let consumer = loop {
            let stream_name = self.ensure_stream(&subject).await?;
            let stream = self
                .js
                .get_stream_no_info(&stream_name)
                .await
                .map_err(|e| {
                    Error::op(
                        &self.addr,
                        format!("opening stream {stream_name}"),
                        false,
                        e,
                    )
                })?;
            match stream.get_or_create_consumer(&name, config.clone()).await {
                Ok(c) => break c,
                // The stream was deleted behind our back: create it again, once.
                Err(e)
                    if !retried
                        && matches!(e.kind(), ConsumerErrorKind::JetStream(ref j)
                            if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
                {
                    self.forget_stream(&stream_name);
                    retried = true;
                }
                Err(e) => {
                    return Err(Error::op(
                        &self.addr,
                        format!("creating consumer {name} on stream {stream_name}"),
                        !matches!(
                            e.kind(),
                            ConsumerErrorKind::JetStream(_) | ConsumerErrorKind::InvalidName
                        ),
                        e,
                    )
                    .into())
                }
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.cfg.prefetch.max(1))
            .expires(queue::PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| Error::op(&self.addr, format!("pulling from consumer {name}"), true, e))?;
        let held: SharedHeld = Arc::default();
        {
            let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
            members.retain(|m| m.strong_count() > 0);
            members.push(Arc::downgrade(&held));
        }
        let (tx, rx) = mpsc::channel(self.cfg.prefetch.max(1));
        tokio::spawn(queue::run_member(
            messages,
            held,
            self.acks.clone(),
            tx,
            format!("queue group `{group}` on `{topic}`"),
        ));
        Ok(ReceiverStream::new(rx).boxed())
    }

    /// A request the server itself answers (`$JS.API.INFO`), within `request_timeout`: the
    /// client's own state says "connected" for as long as its pings have not timed out, and a
    /// flush only hands bytes to the kernel, so over a link that silently stopped carrying
    /// anything (a partition, a stalled path) both look healthy; an answer does not.
    async fn round_trip(&self, op: &str) -> Result<()> {
        if self.client.connection_state() != State::Connected {
            return Err(Error::op(&self.addr, op, true, "not connected (reconnecting)").into());
        }
        let request = self.client.request("$JS.API.INFO", Bytes::new());
        match tokio::time::timeout(self.cfg.request_timeout, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::op(&self.addr, op, true, e).into()),
            Err(_) => Err(Error::timeout(&self.addr, op, self.cfg.request_timeout).into()),
        }
    }

    async fn flush(&self, op: &str) -> Result<()> {
        if self.client.connection_state() != State::Connected {
            return Err(Error::op(&self.addr, op, true, "not connected (reconnecting)").into());
        }
        match tokio::time::timeout(self.cfg.request_timeout, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::op(&self.addr, op, true, e).into()),
            Err(_) => Err(Error::timeout(&self.addr, op, self.cfg.request_timeout).into()),
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let subject = naming::subject(topic);
        let mut retried = false;
        loop {
            let stream = inner.ensure_stream(&subject).await?;
            let err = match inner.js_publish(&subject, payload.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let kind = err.kind();
            if kind == PublishErrorKind::MaxPayloadExceeded {
                return Err(CoreError::TooLarge {
                    what: "NATS message",
                    size: payload.len(),
                    limit: inner.client.server_info().max_payload,
                });
            }
            if matches!(
                kind,
                PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut
            ) {
                // The stream may have been deleted behind our back (with subscribers on the
                // subject, NATS answers that with silence, hence the timeout too): check again.
                inner.forget_stream(&stream);
                if kind == PublishErrorKind::StreamNotFound && !retried {
                    retried = true;
                    continue;
                }
            }
            let transient = !matches!(kind, PublishErrorKind::Other);
            return Err(Error::op(
                &inner.addr,
                format!("publishing to {subject}"),
                transient,
                err,
            )
            .into());
        }
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        let inner = &self.inner;
        inner.check_open()?;
        let subject = naming::subject(topic);
        match mode {
            SubscribeMode::Fanout => inner.subscribe_fanout(subject).await,
            SubscribeMode::Queue { group } => inner.subscribe_queue(topic, subject, &group).await,
        }
    }

    async fn ping(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.round_trip("ping").await
    }

    async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // What queue members hold unacked now will not be acked by this process: give it back
        // so that the group's next member gets it within seconds, not after `ack_wait`.
        let members: Vec<SharedHeld> = inner
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .filter_map(|m| m.upgrade())
            .collect();
        for held in members {
            queue::give_back(&held, &inner.acks);
        }
        // Wait until every ack and nak queued so far is on the wire, then drain: unsubscribe
        // everything, flush, close. Subscriptions end.
        let (done, written) = oneshot::channel();
        if inner.acks.send(AckCmd::Barrier(done)).is_ok() {
            let _ = tokio::time::timeout(inner.cfg.request_timeout, written).await;
        }
        match tokio::time::timeout(inner.cfg.request_timeout, inner.client.drain()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::op(&inner.addr, "draining the connection", true, e).into()),
            Err(_) => Err(Error::timeout(
                &inner.addr,
                "draining the connection",
                inner.cfg.request_timeout,
            )
            .into()),
        }
    }
}
