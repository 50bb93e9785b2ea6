//! impush-helper: [`ImHelper`], the library a business backend uses to push through impush.
//!
//! The business authenticates its users and decides who may talk to whom; then it asks the
//! helper to hand a client a connect URL ([`ImHelper::prepare_connect`]), to send messages, to
//! manage channels, and to watch online/offline [`events`](ImHelper::events). The helper computes
//! each receiver's owning node locally (the cluster's [`Partitioner`](impush_core::Partitioner))
//! and publishes straight to that node's inbox: no lookup on the hot path.
//!
//! In one process with the memory backends, get a helper from the running server
//! (`ImServer::helper()`); against a broker-backed cluster, build one with
//! [`ImHelper::connect`] from the same configuration file the nodes use, or with
//! [`ImHelper::builder`] when the cluster runs a broker kind you registered yourself
//! ([`Backends`]).
//!
//! Queries return an [`Answer`]: the value plus the nodes that did not answer in time (only
//! `[presence] kind = "cluster"` asks other nodes; a central store always answers completely).
//! An `Answer` derefs to its value.
//!
//! Method names follow FreeIM's ImHelper: `PrevConnectServer` is [`ImHelper::prepare_connect`],
//! `SendMessage` is [`ImHelper::send_message`], `JoinChan` is [`ImHelper::join_channel`], and so on.
//!
//! Sends are idempotent when you name them: the `_with_id` variants take the message's id, from
//! an [`IdempotencyKey`] of your own (`key.message_id()`) or chosen outright, and a retry with
//! the same id within `limits.idempotency_window` is not delivered twice, even when the first
//! attempt failed half-way through its receivers' nodes.
//!
//! Many messages at once, each with its own receivers and data (a notification per user), go
//! through [`ImHelper::send_messages`]: one broker payload per node for the whole batch.

mod batch;
mod config;

use std::sync::Arc;

use futures_util::{stream::BoxStream, StreamExt};
use impush_brokers::BackendContext;
use impush_core::{
    envelope::{self, ClusterCommand, Deliver, NodeCommand, Publication},
    token::TokenSigner,
    ChannelInfo, ChannelName, ClientId, Cluster, Event, MessageId, NodeId, PresenceStore,
    SubscribeMode, Topics,
};
use serde::Serialize;
use serde_json::value::RawValue;

pub use batch::{node_payloads, OutgoingMessage, BATCH_PAYLOAD_BYTES, BATCH_PAYLOAD_MESSAGES};
pub use config::HelperConfig;
pub use impush_brokers::Backends;
pub use impush_core::{idempotency::IdempotencyKey, Answer, Broker, Error, Result};

/// A stream of online/offline events. `Err(Error::Lagged)` items report events this helper
/// missed because it read too slowly; the stream continues after them.
pub type EventStream = BoxStream<'static, Result<Event>>;

/// What [`ImHelper::prepare_connect`] returns: where the client should connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectInfo {
    /// `ws(s)://host:port/ws?token=...` of the owning node. Single use, expires after the
    /// configured `auth.token_ttl`.
    pub url: String,
    /// The node that owns the client.
    pub node: NodeId,
}

/// What [`ImHelper::send_message`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendReport {
    /// The id the message got; receipts refer to it.
    pub id: MessageId,
    /// To how many node inboxes it was published.
    pub nodes: usize,
}

/// The pieces an [`ImHelper`] is made of, for embedding with backends you already hold.
#[derive(Debug, Clone)]
pub struct HelperParts {
    /// The cluster's nodes and partitioner.
    pub cluster: Cluster,
    /// Signs connect tokens (shared secret with the nodes).
    pub signer: TokenSigner,
    /// The broker the nodes subscribe to.
    pub broker: Arc<dyn Broker>,
    /// The presence store the nodes write.
    pub presence: Arc<dyn PresenceStore>,
    /// Topic prefix (`broker.prefix`).
    pub prefix: String,
    /// Whether the cluster keeps channel history (`[history] size > 0`): publications then
    /// go to their stream's sequencer node to be numbered (`docs/design.md` section 15).
    pub history: bool,
}

/// Builds an [`ImHelper`] from configuration and a backend registry.
///
/// ```no_run
/// # async fn demo() -> impush_core::Result<()> {
/// use impush_helper::{Backends, HelperConfig, ImHelper};
/// let config = HelperConfig::load(Some("impush.toml".as_ref()))?;
/// let mut backends = Backends::with_defaults();
/// // backends.register_broker("nats", ...);   // the same registrations as your nodes
/// let helper = ImHelper::builder(&config).backends(backends).connect().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct HelperBuilder {
    config: HelperConfig,
    backends: Backends,
}

impl HelperBuilder {
    /// Uses `backends` instead of the built-in kinds only.
    pub fn backends(mut self, backends: Backends) -> Self {
        self.backends = backends;
        self
    }

    /// Connects the configured broker and presence store.
    ///
    /// # Errors
    /// [`Error::Config`] for an incomplete configuration (a helper needs `cluster.nodes` and
    /// `auth.secret`) or a kind the registry lacks; backend start-up errors.
    pub async fn connect(self) -> Result<ImHelper> {
        let config = &self.config;
        let cluster = Cluster::new(config.cluster.nodes.clone(), config.cluster.partitioner)?;
        let secret = config.auth.secret.as_ref().ok_or_else(|| {
            Error::Config(
                "config key `auth.secret`: a helper needs the cluster's shared secret".into(),
            )
        })?;
        let signer = TokenSigner::new(
            secret.expose().as_bytes(),
            config.auth.token_ttl,
            config.limits.max_metadata_bytes,
        )?;
        let mut ctx =
            BackendContext::new(&config.broker).with_cluster(&cluster, config.cluster.node_lease);
        let broker = self.backends.connect_broker(&config.broker, &ctx).await?;
        ctx.broker = Some(broker.clone());
        let presence = self
            .backends
            .connect_presence(&config.presence, &ctx)
            .await?;
        // The live view (who owns a client now, `docs/design.md` section 16), read from
        // presence as often as nodes renew their leases.
        let follow = tokio::spawn(impush_core::follow_live_nodes(
            cluster.clone(),
            presence.clone(),
            config.cluster.node_lease,
        ));
        let mut helper = ImHelper::new(HelperParts {
            cluster,
            signer,
            broker,
            presence,
            prefix: ctx.prefix,
            history: config.history.enabled(),
        });
        helper.follow = Some(Arc::new(AbortOnDrop(follow)));
        Ok(helper)
    }
}

/// Stops the live-view task when the last clone of its helper is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The business backend's handle on an impush cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImHelper {
    inner: Arc<HelperParts>,
    topics: Arc<Topics>,
    /// Keeps the cluster's live view current (helpers built from config; an embedded helper
    /// shares its node's view).
    follow: Option<Arc<AbortOnDrop>>,
}

impl ImHelper {
    /// A helper from parts you already hold (used by the server for its HTTP API and by
    /// embedded setups sharing memory backends).
    pub fn new(parts: HelperParts) -> Self {
        let topics = Arc::new(Topics::new(&parts.prefix));
        Self {
            inner: Arc::new(parts),
            topics,
            follow: None,
        }
    }

    /// Connects to the cluster described by `config` with the built-in backend kinds.
    ///
    /// # Errors
    /// As [`HelperBuilder::connect`].
    pub async fn connect(config: &HelperConfig) -> Result<Self> {
        Self::builder(config).connect().await
    }

    /// A builder for a helper of the cluster described by `config`, e.g. to use backend kinds
    /// registered in code.
    pub fn builder(config: &HelperConfig) -> HelperBuilder {
        HelperBuilder {
            config: config.clone(),
            backends: Backends::with_defaults(),
        }
    }

    /// The cluster this helper talks to.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The broker this helper publishes to.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The presence store this helper reads.
    pub fn presence(&self) -> &Arc<dyn PresenceStore> {
        &self.inner.presence
    }

    /// A single-use connect URL for `client` on its owning node (FreeIM `PrevConnectServer`).
    ///
    /// `metadata` (JSON, `Value::Null` for none) is signed into the token and comes back in the
    /// client's online/offline events.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for metadata over `limits.max_metadata_bytes`.
    pub fn prepare_connect(
        &self,
        client: &ClientId,
        metadata: serde_json::Value,
    ) -> Result<ConnectInfo> {
        let node = self.inner.cluster.owner(client);
        let token = self.inner.signer.sign(client, &node.id, metadata)?;
        Ok(ConnectInfo {
            url: format!("{}/ws?token={token}", node.url.trim_end_matches('/')),
            node: node.id.clone(),
        })
    }

    /// Sends `data` (any `Serialize`, delivered to clients as that JSON) from `from` to every
    /// client in `to` (FreeIM `SendMessage`).
    ///
    /// `from` need not be a connected client. With `receipt`, the sender's connections get
    /// `receipt` frames: one per status for the receivers each node settled together
    /// (`delivered` once written to a socket; `stored` when the receiver had no socket to take
    /// it and it waits in the offline inbox, `[offline] enabled = true`; `offline` when it had
    /// none and nothing was stored; later `acked` when the receiver's client acks it). The
    /// sender gets its own message only if it is listed in `to`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty `to`; broker errors.
    pub async fn send_message<T: Serialize + ?Sized>(
        &self,
        from: &ClientId,
        to: &[ClientId],
        data: &T,
        receipt: bool,
    ) -> Result<SendReport> {
        let data = to_raw(data)?;
        self.send_message_raw(from, to, data, receipt).await
    }

    /// [`ImHelper::send_message`] with `data` already as JSON text.
    ///
    /// # Errors
    /// As [`ImHelper::send_message`].
    pub async fn send_message_raw(
        &self,
        from: &ClientId,
        to: &[ClientId],
        data: Box<RawValue>,
        receipt: bool,
    ) -> Result<SendReport> {
        self.send_message_raw_with_id(MessageId::generate(), from, to, data, receipt)
            .await
    }

    /// [`ImHelper::send_message`] as message `id`: idempotent. Every node delivers an id once
    /// within `limits.idempotency_window`, so when a send fails part-way (some receivers' nodes
    /// got it, then the broker failed), calling again with the same id reaches the rest and
    /// none twice. Take the id from an [`IdempotencyKey`] (`key.message_id()`, the id the HTTP
    /// API's `Idempotency-Key` gives too) or choose it yourself; the report is the same on
    /// every call (`nodes` counts the receivers' nodes as the live view has them now).
    ///
    /// The id names the message: a second call with the same id and another body is not a new
    /// message; each receiver gets whichever body reached its node first.
    ///
    /// ```no_run
    /// # async fn demo(helper: impush_helper::ImHelper) -> impush_helper::Result<()> {
    /// use impush_core::ClientId;
    /// use impush_helper::IdempotencyKey;
    /// let key = IdempotencyKey::new("order-4711-shipped")?;
    /// let from: ClientId = "shop".parse()?;
    /// let to: Vec<ClientId> = impush_core::parse_all(&["alice", "bob"])?;
    /// let data = serde_json::json!({"order": 4711});
    /// let report = loop {
    ///     match helper.send_message_with_id(key.message_id(), &from, &to, &data, false).await {
    ///         Ok(r) => break r,
    ///         Err(e) if e.is_transient() => continue, // retry: nobody gets it twice
    ///         Err(e) => return Err(e),
    ///     }
    /// };
    /// # let _ = report; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`ImHelper::send_message`].
    pub async fn send_message_with_id<T: Serialize + ?Sized>(
        &self,
        id: MessageId,
        from: &ClientId,
        to: &[ClientId],
        data: &T,
        receipt: bool,
    ) -> Result<SendReport> {
        let data = to_raw(data)?;
        self.send_message_raw_with_id(id, from, to, data, receipt)
            .await
    }

    /// [`ImHelper::send_message_with_id`] with `data` already as JSON text.
    ///
    /// # Errors
    /// As [`ImHelper::send_message`].
    pub async fn send_message_raw_with_id(
        &self,
        id: MessageId,
        from: &ClientId,
        to: &[ClientId],
        data: Box<RawValue>,
        receipt: bool,
    ) -> Result<SendReport> {
        if to.is_empty() {
            return Err(Error::InvalidArgument("no receivers given".into()));
        }
        let ts = envelope::now_ms();
        // Group receivers by owning node, dropping duplicates (a receiver listed twice gets the
        // message once).
        let mut by_node: Vec<(&NodeId, Vec<ClientId>)> = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(to.len());
        for client in to {
            if !seen.insert(client) {
                continue;
            }
            let node = &self.inner.cluster.owner(client).id;
            match by_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, list)) => list.push(client.clone()),
                None => by_node.push((node, vec![client.clone()])),
            }
        }
        let nodes = by_node.len();
        for (node, receivers) in by_node {
            let cmd = NodeCommand::Deliver(Deliver {
                id: id.clone(),
                from: from.clone(),
                to: receivers,
                data: data.clone(),
                ts,
                receipt,
                forwarded: false,
            });
            self.publish(&self.topics.inbox(node), &cmd).await?;
        }
        Ok(SendReport { id, nodes })
    }

    /// Every online client, sorted (FreeIM `GetClientListByOnline`).
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
        self.inner.presence.online_clients().await
    }

    /// Whether `client` has at least one connection (FreeIM `HasOnline`).
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn is_online(&self, client: &ClientId) -> Result<Answer<bool>> {
        Ok(self.connections(client).await?.map(|n| n > 0))
    }

    /// [`ImHelper::is_online`] for many clients at once, in the same order.
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn is_online_many(&self, clients: &[ClientId]) -> Result<Answer<Vec<bool>>> {
        self.inner.presence.online(clients).await
    }

    /// How many connections `client` has across the cluster.
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn connections(&self, client: &ClientId) -> Result<Answer<usize>> {
        self.inner.presence.connections(client).await
    }

    /// Closes every connection of `client` with close code 4001 (FreeIM `ForceOffline`) and
    /// returns how many connections it had.
    ///
    /// # Errors
    /// Presence store or broker errors.
    pub async fn force_offline(&self, client: &ClientId) -> Result<usize> {
        let n = self.connections(client).await?.into_value();
        let node = &self.inner.cluster.owner(client).id;
        let cmd = NodeCommand::Kick {
            client: client.clone(),
        };
        self.publish(&self.topics.inbox(node), &cmd).await?;
        Ok(n)
    }

    /// Online/offline events of the whole cluster; every helper calling this sees every event
    /// (FreeIM's EventBus).
    ///
    /// # Errors
    /// Broker errors while subscribing.
    pub async fn events(&self) -> Result<EventStream> {
        self.events_with(SubscribeMode::Fanout).await
    }

    /// Online/offline events shared by the helpers of `group`: each event reaches one of them,
    /// so a business service with several instances handles each event once.
    ///
    /// # Errors
    /// Broker errors while subscribing.
    pub async fn events_in_group(&self, group: &str) -> Result<EventStream> {
        self.events_with(SubscribeMode::Queue {
            group: group.to_owned(),
        })
        .await
    }

    async fn events_with(&self, mode: SubscribeMode) -> Result<EventStream> {
        let sub = self
            .inner
            .broker
            .subscribe(self.topics.events(), mode)
            .await?;
        Ok(sub
            // Acked as it is handed out: the stream is the helper's end of the queue.
            .map(|item| item.and_then(|d| envelope::decode::<Event>("event", &d.ack())))
            .boxed())
    }

    /// Adds `clients` to `channel` (FreeIM `JoinChan`). Membership is per client id and, unless
    /// `channels.persist` is set, ends when the client's last connection closes.
    ///
    /// # Errors
    /// Presence store or broker errors.
    pub async fn join_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        self.inner.presence.join_channel(channel, clients).await?;
        let cmd = ClusterCommand::Joined {
            channel: channel.clone(),
            clients: clients.to_vec(),
        };
        self.publish(self.topics.all(), &cmd).await
    }

    /// Removes `clients` from `channel` (FreeIM `LeaveChan`).
    ///
    /// # Errors
    /// Presence store or broker errors.
    pub async fn leave_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        self.inner.presence.leave_channel(channel, clients).await?;
        let cmd = ClusterCommand::Left {
            channel: channel.clone(),
            clients: clients.to_vec(),
        };
        self.publish(self.topics.all(), &cmd).await
    }

    /// The members of `channel`, sorted (FreeIM `GetChanClientList`).
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn channel_members(&self, channel: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        self.inner.presence.channel_members(channel).await
    }

    /// Every channel with member and online counts (FreeIM `GetChanList`).
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        self.inner.presence.channels().await
    }

    /// The channels `client` belongs to (FreeIM `GetChanListByClientId`).
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn client_channels(&self, client: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        self.inner.presence.client_channels(client).await
    }

    /// How many members of `channel` are online (FreeIM `GetChanOnline`).
    ///
    /// # Errors
    /// Presence store errors.
    pub async fn channel_online(&self, channel: &ChannelName) -> Result<Answer<usize>> {
        self.inner.presence.channel_online(channel).await
    }

    /// Sends `data` to every member of `channel`, the sender included if it is a member
    /// (FreeIM `SendChanMessage`).
    ///
    /// # Errors
    /// Broker errors.
    pub async fn send_channel_message<T: Serialize + ?Sized>(
        &self,
        from: &ClientId,
        channel: &ChannelName,
        data: &T,
    ) -> Result<MessageId> {
        self.send_channel_message_raw(from, channel, to_raw(data)?)
            .await
    }

    /// [`ImHelper::send_channel_message`] with `data` already as JSON text.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn send_channel_message_raw(
        &self,
        from: &ClientId,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> Result<MessageId> {
        self.send_channel_message_raw_with_id(MessageId::generate(), from, channel, data)
            .await
    }

    /// [`ImHelper::send_channel_message`] as message `id`: idempotent like
    /// [`ImHelper::send_message_with_id`] (take the id from `key.channel_message_id(channel)`,
    /// as the HTTP API does). With history (`[history] size > 0`) the stream's sequencer numbers
    /// an id once within `limits.idempotency_window`; without, every node delivers it once.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn send_channel_message_with_id<T: Serialize + ?Sized>(
        &self,
        id: MessageId,
        from: &ClientId,
        channel: &ChannelName,
        data: &T,
    ) -> Result<MessageId> {
        self.send_channel_message_raw_with_id(id, from, channel, to_raw(data)?)
            .await
    }

    /// [`ImHelper::send_channel_message_with_id`] with `data` already as JSON text.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn send_channel_message_raw_with_id(
        &self,
        id: MessageId,
        from: &ClientId,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> Result<MessageId> {
        let ts = envelope::now_ms();
        if self.inner.history {
            let p = Publication {
                id: id.clone(),
                channel: Some(channel.clone()),
                from: Some(from.clone()),
                data,
                ts,
            };
            self.publish_to_sequencer(channel.as_str(), p).await?;
            return Ok(id);
        }
        let cmd = ClusterCommand::Channel {
            id: id.clone(),
            channel: channel.clone(),
            from: from.clone(),
            data,
            ts,
            pos: None,
        };
        self.publish(self.topics.all(), &cmd).await?;
        Ok(id)
    }

    /// Publishes `p` to the inbox of its stream's sequencer (the stream's live owner), which
    /// numbers it and publishes it to every node.
    async fn publish_to_sequencer(&self, key: &str, p: Publication) -> Result<()> {
        let owner = &self.inner.cluster.stream_owner(key).id;
        let topic = self.topics.inbox(owner);
        self.publish(&topic, &NodeCommand::Publish(p)).await
    }

    /// Sends `data` to every connected client (FreeIM `SendBroadcastMessage`).
    ///
    /// # Errors
    /// Broker errors.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, data: &T) -> Result<MessageId> {
        self.broadcast_raw(to_raw(data)?).await
    }

    /// [`ImHelper::broadcast`] with `data` already as JSON text.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn broadcast_raw(&self, data: Box<RawValue>) -> Result<MessageId> {
        self.broadcast_raw_with_id(MessageId::generate(), data)
            .await
    }

    /// [`ImHelper::broadcast`] as message `id`: idempotent like
    /// [`ImHelper::send_channel_message_with_id`] (take the id from `key.broadcast_id()`).
    ///
    /// # Errors
    /// Broker errors.
    pub async fn broadcast_with_id<T: Serialize + ?Sized>(
        &self,
        id: MessageId,
        data: &T,
    ) -> Result<MessageId> {
        self.broadcast_raw_with_id(id, to_raw(data)?).await
    }

    /// [`ImHelper::broadcast_with_id`] with `data` already as JSON text.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn broadcast_raw_with_id(
        &self,
        id: MessageId,
        data: Box<RawValue>,
    ) -> Result<MessageId> {
        let ts = envelope::now_ms();
        if self.inner.history {
            let p = Publication {
                id: id.clone(),
                channel: None,
                from: None,
                data,
                ts,
            };
            // The broadcast stream's key, as the node spells it (`StreamKey::placement`).
            self.publish_to_sequencer(" broadcast", p).await?;
            return Ok(id);
        }
        let cmd = ClusterCommand::Broadcast {
            id: id.clone(),
            data,
            ts,
            pos: None,
        };
        self.publish(self.topics.all(), &cmd).await?;
        Ok(id)
    }

    async fn publish<T: Serialize>(&self, topic: &str, value: &T) -> Result<()> {
        let payload = envelope::encode("command", value)?;
        self.inner.broker.publish(topic, payload).await
    }

    /// Empties `channel`: every member leaves it (FreeIM `ClearChanClient`). Returns how many
    /// members it had.
    ///
    /// The members are read from the presence store and removed [`CLEAR_CHUNK`] at a time: one
    /// presence write and one membership change on the cluster topic per chunk, so clearing a
    /// channel of a million members never builds one huge broker message. A client that joins
    /// while the clear runs may stay a member. Members' sockets stop getting the channel's
    /// messages sent after this returns.
    ///
    /// # Errors
    /// Presence store or broker errors (the chunks before the failure have left: calling again
    /// finishes the job). [`Error::Unavailable`] when the member list was partial
    /// (`[presence] kind = "cluster"` and a node did not answer in time): the members that were
    /// listed have left, the missing node's have not.
    pub async fn clear_channel(&self, channel: &ChannelName) -> Result<usize> {
        let members = self.inner.presence.channel_members(channel).await?;
        for chunk in members.value.chunks(CLEAR_CHUNK) {
            self.leave_channel(channel, chunk).await?;
        }
        if !members.missing.is_empty() {
            let nodes: Vec<&str> = members.missing.iter().map(NodeId::as_str).collect();
            return Err(Error::Unavailable {
                backend: "presence",
                source: Some(
                    format!(
                        "channel `{channel}` cleared partly: node(s) {} did not list their \
                         members in time",
                        nodes.join(", ")
                    )
                    .into(),
                ),
            });
        }
        Ok(members.value.len())
    }

    /// Removes `client` from each of `channels` (FreeIM `LeaveChan(client, [channels])`).
    /// Leaving a channel the client is not in is harmless; a channel listed twice is left once.
    ///
    /// # Errors
    /// Presence store or broker errors; the channels before the failing one have been left.
    pub async fn leave_channels(&self, client: &ClientId, channels: &[ChannelName]) -> Result<()> {
        let mut seen = std::collections::HashSet::with_capacity(channels.len());
        for channel in channels.iter().filter(|c| seen.insert(*c)) {
            self.leave_channel(channel, std::slice::from_ref(client))
                .await?;
        }
        Ok(())
    }
}

/// How many members [`ImHelper::clear_channel`] removes per presence write and per membership
/// command on the cluster topic: a bound on the size of one broker message (1,000 ids of at most
/// 128 bytes stay well under the 1 MB many brokers default to).
pub const CLEAR_CHUNK: usize = 1000;

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(data).map_err(|e| Error::codec("message data", e))
}
