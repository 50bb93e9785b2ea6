//! [`Node`]: what one ImServer node knows and does, shared by its sessions and its two broker
//! subscriptions.
//!
//! - The inbox (`{prefix}.inbox.{node}`, `Queue{group = node id}`) carries [`NodeCommand`]s:
//!   point-to-point deliveries, receipts for local senders, kicks.
//! - `{prefix}.all` (`Fanout`) carries [`ClusterCommand`]s: channel messages, broadcasts and
//!   membership changes, each applied to local connections only.
//!
//! Connections opening and closing update the presence store and publish online/offline events;
//! both happen under a per-client async lock so that a device reconnecting while its last other
//! connection closes cannot leave the store and the local index disagreeing.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use impush_core::{
    config::LimitsConfig,
    envelope::{self, ClusterCommand, Deliver, NodeCommand},
    protocol::ServerFrame,
    Broker, ClientId, Cluster, ConnectionId, Error, Event, MessageId, NodeId, PresenceStore,
    ReceiptStatus, SubscribeMode, Subscription, Topics,
};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{Metrics, OutKind},
    registry::Registry,
    session::{self, Outgoing, SessionHandle},
};

const CLIENT_LOCK_STRIPES: usize = 256;
const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"pong"}"#);

/// One node's shared state.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) cluster: Cluster,
    pub(crate) topics: Topics,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) presence: Arc<dyn PresenceStore>,
    pub(crate) limits: LimitsConfig,
    pub(crate) persist_channels: bool,
    pub(crate) metrics: Arc<Metrics>,
    /// What the node builds for itself; `Local::default()` when constructing.
    pub(crate) local: Local,
}

/// A node's own bookkeeping: local connections, id generation, per-client locks.
#[derive(Debug)]
pub(crate) struct Local {
    registry: Registry,
    boot: u64,
    conn_seq: AtomicU64,
    lock_hasher: RandomState,
    client_locks: Box<[AsyncMutex<()>]>,
}

impl Default for Local {
    fn default() -> Self {
        Self {
            registry: Registry::default(),
            boot: envelope::now_ms(),
            conn_seq: AtomicU64::new(0),
            lock_hasher: RandomState::new(),
            client_locks: (0..CLIENT_LOCK_STRIPES)
                .map(|_| AsyncMutex::new(()))
                .collect(),
        }
    }
}

impl Node {
    /// A connection id unique across the cluster and across restarts of this node.
    pub(crate) fn next_connection_id(&self) -> ConnectionId {
        let seq = self.local.conn_seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{:x}-{seq}", self.id, self.local.boot);
        ConnectionId::new(id).expect("node id and numbers form a valid connection id")
    }

    fn client_lock(&self, client: &ClientId) -> &AsyncMutex<()> {
        let i = self.local.lock_hasher.hash_one(client.as_str()) as usize
            % self.local.client_locks.len();
        &self.local.client_locks[i]
    }

    /// Registers a new connection: local index, presence, channels, online event.
    pub(crate) async fn attach(&self, handle: &Arc<SessionHandle>, metadata: &serde_json::Value) {
        let client = &handle.client;
        let _guard = self.client_lock(client).lock().await;
        let (first, excess) = self
            .local
            .registry
            .add(handle, self.limits.max_connections_per_client);
        for old in excess {
            session::replace(&old, self);
        }
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Metrics::bump(&self.metrics.connections_total);
        if let Err(e) = self
            .presence
            .connect(&self.id, client, &handle.connection)
            .await
        {
            self.presence_error("connect", &e);
        }
        if first {
            match self.presence.client_channels(client).await {
                Ok(chans) => self.local.registry.join_all(client, &chans),
                Err(e) => self.presence_error("client_channels", &e),
            }
        }
        tracing::info!(%client, connection = %handle.connection, first, "connected");
        self.publish_event(&Event::Online {
            client: client.clone(),
            node: self.id.clone(),
            connection: handle.connection.clone(),
            metadata: metadata.clone(),
            first,
        })
        .await;
    }

    /// Unregisters a closed connection: local index, presence (and channel membership when it
    /// was the last one), offline event.
    pub(crate) async fn detach(&self, handle: &Arc<SessionHandle>, metadata: &serde_json::Value) {
        let client = &handle.client;
        let _guard = self.client_lock(client).lock().await;
        let last = self.local.registry.remove(handle);
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        let clear = last && !self.persist_channels;
        if let Err(e) = self
            .presence
            .disconnect(&self.id, client, &handle.connection, clear)
            .await
        {
            self.presence_error("disconnect", &e);
        }
        if last {
            self.local.registry.forget_channels(client);
        }
        tracing::info!(%client, connection = %handle.connection, last, "disconnected");
        self.publish_event(&Event::Offline {
            client: client.clone(),
            node: self.id.clone(),
            connection: handle.connection.clone(),
            metadata: metadata.clone(),
            last,
        })
        .await;
    }

    fn presence_error(&self, op: &'static str, e: &Error) {
        Metrics::bump(&self.metrics.presence_errors);
        tracing::warn!(
            op,
            error = e as &dyn std::error::Error,
            "presence store call failed"
        );
    }

    async fn publish_event(&self, event: &Event) {
        match envelope::encode("event", event) {
            Ok(payload) => self.publish(self.topics.events(), payload).await,
            Err(e) => tracing::error!(error = &e as &dyn std::error::Error, "cannot encode event"),
        }
    }

    async fn publish(&self, topic: &str, payload: bytes::Bytes) {
        if let Err(e) = self.broker.publish(topic, payload).await {
            Metrics::bump(&self.metrics.broker_publish_errors);
            tracing::warn!(
                topic,
                error = &e as &dyn std::error::Error,
                "broker publish failed"
            );
        }
    }

    pub(crate) fn push_pong(&self, handle: &SessionHandle) {
        if handle.push(
            Outgoing {
                frame: PONG,
                ack: None,
            },
            self,
        ) {
            self.metrics.out(OutKind::Pong, 1);
        }
    }

    /// The client `receiver` acked message `id` from `sender`.
    pub(crate) async fn acked(&self, id: &MessageId, sender: &ClientId, receiver: &ClientId) {
        self.route_receipts(id, sender, vec![(receiver.clone(), ReceiptStatus::Acked)])
            .await;
    }

    /// Sends receipts to `sender`'s connections, on this node or via its owner's inbox.
    async fn route_receipts(
        &self,
        id: &MessageId,
        sender: &ClientId,
        receipts: Vec<(ClientId, ReceiptStatus)>,
    ) {
        for (_, status) in &receipts {
            self.metrics.receipt(*status);
        }
        let owner = &self.cluster.owner(sender).id;
        if *owner == self.id {
            self.local_receipts(id, sender, &receipts);
            return;
        }
        let cmd = NodeCommand::Receipts {
            id: id.clone(),
            sender: sender.clone(),
            receipts,
        };
        match envelope::encode("receipts", &cmd) {
            Ok(payload) => self.publish(&self.topics.inbox(owner), payload).await,
            Err(e) => tracing::error!(
                error = &e as &dyn std::error::Error,
                "cannot encode receipts"
            ),
        }
    }

    fn local_receipts(
        &self,
        id: &MessageId,
        sender: &ClientId,
        receipts: &[(ClientId, ReceiptStatus)],
    ) {
        for (to, status) in receipts {
            let frame: Utf8Bytes = ServerFrame::Receipt {
                id,
                to,
                status: *status,
            }
            .to_json()
            .into();
            let n = self.local.registry.for_client(sender, |s| {
                s.push(
                    Outgoing {
                        frame: frame.clone(),
                        ack: None,
                    },
                    self,
                );
            });
            self.metrics.out(OutKind::Receipt, n as u64);
        }
    }

    async fn deliver(&self, d: Deliver) {
        let frame: Utf8Bytes = ServerFrame::Message {
            id: &d.id,
            from: &d.from,
            data: &d.data,
            ts: d.ts,
            receipt: d.receipt,
        }
        .to_json()
        .into();
        let ack = d.receipt.then(|| (d.id.clone(), d.from.clone()));
        let mut receipts = Vec::with_capacity(if d.receipt { d.to.len() } else { 0 });
        let mut written = 0u64;
        for to in &d.to {
            let mut delivered = false;
            self.local.registry.for_client(to, |s| {
                let ok = s.push(
                    Outgoing {
                        frame: frame.clone(),
                        ack: ack.clone(),
                    },
                    self,
                );
                delivered |= ok;
                written += u64::from(ok);
            });
            if d.receipt {
                let status = if delivered {
                    ReceiptStatus::Delivered
                } else {
                    ReceiptStatus::Offline
                };
                receipts.push((to.clone(), status));
            }
        }
        self.metrics.out(OutKind::Message, written);
        if d.receipt {
            self.route_receipts(&d.id, &d.from, receipts).await;
        }
    }

    async fn on_node_command(&self, cmd: NodeCommand) {
        match cmd {
            NodeCommand::Deliver(d) => self.deliver(d).await,
            NodeCommand::Receipts {
                id,
                sender,
                receipts,
            } => self.local_receipts(&id, &sender, &receipts),
            NodeCommand::Kick { client } => {
                let n = self
                    .local
                    .registry
                    .for_client(&client, |s| session::kick(s, self));
                tracing::info!(%client, connections = n, "kicked");
            }
        }
    }

    fn on_cluster_command(&self, cmd: ClusterCommand) {
        match cmd {
            ClusterCommand::Channel {
                id,
                channel,
                from,
                data,
                ts,
            } => {
                let frame: Utf8Bytes = ServerFrame::Channel {
                    id: &id,
                    channel: &channel,
                    from: &from,
                    data: &data,
                    ts,
                }
                .to_json()
                .into();
                let n = self.local.registry.for_channel(&channel, |s| {
                    s.push(
                        Outgoing {
                            frame: frame.clone(),
                            ack: None,
                        },
                        self,
                    );
                });
                self.metrics.out(OutKind::Channel, n as u64);
            }
            ClusterCommand::Broadcast { id, data, ts } => {
                let frame: Utf8Bytes = ServerFrame::Broadcast {
                    id: &id,
                    data: &data,
                    ts,
                }
                .to_json()
                .into();
                let n = self.local.registry.for_all(|s| {
                    s.push(
                        Outgoing {
                            frame: frame.clone(),
                            ack: None,
                        },
                        self,
                    );
                });
                self.metrics.out(OutKind::Broadcast, n as u64);
            }
            ClusterCommand::Joined { channel, clients } => {
                self.local.registry.join(&channel, &clients)
            }
            ClusterCommand::Left { channel, clients } => {
                self.local.registry.leave(&channel, &clients)
            }
        }
    }

    /// Keeps this node's presence lease alive, reaps nodes whose lease ran out (publishing their
    /// clients' offline events), and registers local connections again when the store has
    /// forgotten this node (it restarted, or reaped us after a long stall).
    pub(crate) async fn run_presence_lease(
        self: Arc<Self>,
        lease: Duration,
        cancel: CancellationToken,
    ) {
        let every = lease / 3;
        let mut first = true;
        loop {
            match self.presence.heartbeat(&self.id, lease).await {
                Ok(known) => {
                    if !known && !first {
                        tracing::warn!(
                            "presence store lost this node's entries; registering them again"
                        );
                        self.resync_presence().await;
                    }
                    first = false;
                }
                Err(e) => self.presence_error("heartbeat", &e),
            }
            match self.presence.reap_expired(!self.persist_channels).await {
                Ok(dropped) => {
                    for d in dropped {
                        tracing::warn!(node = %d.node, client = %d.client, "dropping connection of a node whose lease expired");
                        self.publish_event(&Event::Offline {
                            client: d.client,
                            node: d.node,
                            connection: d.connection,
                            metadata: serde_json::Value::Null,
                            last: d.last,
                        })
                        .await;
                    }
                }
                Err(e) => self.presence_error("reap_expired", &e),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Writes every local connection and local channel membership to the presence store again.
    async fn resync_presence(&self) {
        let (connections, memberships) = self.local.registry.snapshot();
        for (client, connection) in &connections {
            if let Err(e) = self.presence.connect(&self.id, client, connection).await {
                self.presence_error("connect (resync)", &e);
                return;
            }
        }
        for (channel, members) in &memberships {
            if let Err(e) = self.presence.join_channel(channel, members).await {
                self.presence_error("join_channel (resync)", &e);
                return;
            }
        }
        tracing::info!(
            connections = connections.len(),
            channels = memberships.len(),
            "presence registered again"
        );
    }

    /// Subscribes to one of the node's two feeds.
    pub(crate) async fn subscribe(&self, feed: Feed) -> impush_core::Result<Subscription> {
        match feed {
            Feed::Inbox => {
                let mode = SubscribeMode::Queue {
                    group: self.id.to_string(),
                };
                self.broker
                    .subscribe(&self.topics.inbox(&self.id), mode)
                    .await
            }
            Feed::All => {
                self.broker
                    .subscribe(self.topics.all(), SubscribeMode::Fanout)
                    .await
            }
        }
    }

    async fn dispatch(&self, feed: Feed, bytes: &[u8]) {
        let decoded = match feed {
            Feed::Inbox => {
                envelope::decode::<NodeCommand>("node command", bytes).map(Command::Node)
            }
            Feed::All => {
                envelope::decode::<ClusterCommand>("cluster command", bytes).map(Command::Cluster)
            }
        };
        match decoded {
            Ok(Command::Node(cmd)) => self.on_node_command(cmd).await,
            Ok(Command::Cluster(cmd)) => self.on_cluster_command(cmd),
            Err(e) => {
                Metrics::bump(&self.metrics.undecodable);
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "dropping undecodable broker message"
                );
            }
        }
    }

    /// Consumes `feed` until `cancel`: items in order, lag reported, and a resubscribe with
    /// backoff whenever the stream ends (the broker restarted or dropped us).
    pub(crate) async fn run_feed(
        self: Arc<Self>,
        feed: Feed,
        first: Subscription,
        cancel: CancellationToken,
    ) {
        let mut sub = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(mut stream) = sub.take() {
                backoff = Duration::from_millis(100);
                loop {
                    let item = tokio::select! {
                        () = cancel.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(delivery)) => {
                            let (bytes, acker) = delivery.into_parts();
                            self.dispatch(feed, &bytes).await;
                            acker.ack();
                        }
                        Some(Err(Error::Lagged { dropped })) => {
                            self.metrics
                                .broker_lagged
                                .fetch_add(dropped, Ordering::Relaxed);
                            tracing::warn!(?feed, dropped, "subscription lagged");
                        }
                        Some(Err(e)) => {
                            tracing::warn!(
                                ?feed,
                                error = &e as &dyn std::error::Error,
                                "subscription error"
                            );
                        }
                        None => {
                            tracing::warn!(?feed, "subscription ended; resubscribing");
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match self.subscribe(feed).await {
                Ok(s) => sub = Some(s),
                Err(e) => {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tracing::warn!(
                        ?feed,
                        error = &e as &dyn std::error::Error,
                        "resubscribe failed"
                    );
                }
            }
        }
    }
}

/// The node's two broker feeds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Feed {
    /// `{prefix}.inbox.{node}`, read as `Queue{group = node id}`.
    Inbox,
    /// `{prefix}.all`, read `Fanout`.
    All,
}

/// A decoded broker message of either feed.
enum Command {
    Node(NodeCommand),
    Cluster(ClusterCommand),
}
