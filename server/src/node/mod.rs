//! [`Node`]: what one ImServer node knows and does, shared by its sessions and background tasks.
//!
//! - `feeds`: the two broker subscriptions. The inbox (`{prefix}.inbox.{node}`,
//!   `Queue{group = node id}`) carries [`NodeCommand`](impush_core::envelope::NodeCommand)s
//!   (point-to-point deliveries, receipts for local senders, kicks); `{prefix}.all` (`Fanout`)
//!   carries cluster commands (channel messages, broadcasts, membership changes, re-announces).
//! - `delivery`: turning commands into frames for local sockets; `batch`: several messages in
//!   one inbox payload, acked once all of them settled.
//! - `receipts`: the task that acts on settled messages (receipts, broker acks) and coalesces
//!   client acks into receipt frames.
//! - `lifecycle`: a connection from attach to detach (local index, presence, events).
//! - `upkeep`: the presence lease, reaping dead nodes, and reconciling the store after outages.
//! - `inbox`: the offline inbox (store for absent receivers, push on connect, remove on ack).
//! - `pending`: point-to-point messages kept until the device acks them.
//! - `ownership`: this node's state and the live view: sending guests home, taking over a
//!   dead node's inbox (`takeover`).
//! - `moves`: planned moves of clients (drain, return home) that are not logouts.
//! - `handover`: a per-node inbox follows its client to its owner.
//! - `linger`: memberships that outlive a dropped link for `[channels] linger`.
//! - `history`: channel and broadcast streams: numbering the ones this node owns, keeping
//!   every stream's recent publications, and resuming reconnecting clients.
//! - `catch_up`: catch-ups of the presence store shared by the callers that need one at once.
//! - `crossed`: a `last` a new connection crossed, found after it went out and repaired.
//! - `dedupe`: ids of recent messages, so a redelivered or retried message reaches sockets once.

mod batch;
mod catch_up;
mod crossed;
mod dedupe;
mod delivery;
mod feeds;
mod forward;
mod handover;
mod history;
mod inbox;
mod lifecycle;
mod linger;
mod moves;
mod ownership;
mod pending;
mod receipts;
mod supersede;
mod takeover;
mod upkeep;

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use impush_core::{
    config::{ClusterConfig, LimitsConfig},
    envelope, Broker, ClientId, Cluster, ConnectionId, Error, Event, NodeId, PresenceStore, Topics,
};
use tokio::sync::{mpsc, Mutex as AsyncMutex, RwLock as AsyncRwLock};
use tokio_util::{sync::DropGuard, task::TaskTracker};

pub(crate) use feeds::Feed;
pub(crate) use history::{Lanes, ResumeRequest};
pub(crate) use inbox::OfflineInbox;
pub(crate) use lifecycle::Accepted;
pub(crate) use receipts::Inboxes;

use crate::{metrics::Metrics, registry::Registry, settle::Outcomes, webhooks::Webhooks};

const CLIENT_LOCK_STRIPES: usize = 256;

/// What a node is built from.
#[derive(Debug)]
pub(crate) struct NodeParts {
    pub(crate) id: NodeId,
    pub(crate) cluster: Cluster,
    pub(crate) topics: Topics,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) presence: Arc<dyn PresenceStore>,
    pub(crate) limits: LimitsConfig,
    pub(crate) persist_channels: bool,
    /// `[channels] linger`.
    pub(crate) linger: Duration,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) offline: Option<OfflineInbox>,
    /// `[cluster]`: the lease and the timings of moves.
    pub(crate) cluster_config: ClusterConfig,
    /// `[history]`.
    pub(crate) history: impush_core::config::HistoryConfig,
    /// `[webhooks]`, started.
    pub(crate) webhooks: Webhooks,
}

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
    /// The offline inbox, when `[offline] enabled`.
    pub(crate) offline: Option<OfflineInbox>,
    /// Hooks for the business (`docs/design.md` section 17); no endpoints, no hooks.
    pub(crate) webhooks: Webhooks,
    registry: Registry,
    boot: u64,
    conn_seq: AtomicU64,
    lock_hasher: RandomState,
    client_locks: Box<[AsyncMutex<()>]>,
    /// Named connections accepted and not attached yet (`supersede`).
    arriving: supersede::Arriving,
    outcomes: Outcomes,
    /// Ids of point-to-point messages delivered lately (redeliveries, retried sends).
    recent: dedupe::RecentIds,
    /// Ids of channel messages and broadcasts numbered (or, without history, delivered)
    /// lately: a retried publication is not numbered and delivered twice.
    published: dedupe::RecentIds,
    repair: Repair,
    /// Catch-ups of the presence store before a `last` another node's writes may change.
    catch_ups: catch_up::CatchUps,
    keeping: pending::Keeping,
    /// The node's presence lease.
    pub(crate) lease: Duration,
    /// `[cluster]` timings of drain and return home.
    cluster_timing: ClusterConfig,
    /// Set once the node started draining.
    draining: AtomicBool,
    /// Gradual 1012 closes under way.
    moves: TaskTracker,
    /// Connections closed for a move, still in presence until their grace ends.
    parked: TaskTracker,
    /// Inboxes of dead nodes this node took over; dropping a guard lets go.
    takeovers: Mutex<HashMap<NodeId, DropGuard>>,
    /// Since when the live view has had each dead node dead.
    dead_since: Mutex<HashMap<NodeId, tokio::time::Instant>>,
    /// When the live view last changed (see `ownership_unsettled`).
    view_changed: Mutex<tokio::time::Instant>,
    /// Channel and broadcast history (`None` with `[history] size = 0`).
    history: Option<history::History>,
    /// A handover of offline inboxes is running.
    handing_over: AtomicBool,
    /// `[channels] linger`, its waits, and what ends them early.
    linger: Duration,
    lingering: TaskTracker,
    linger_stop: tokio_util::sync::CancellationToken,
}

/// What the presence store may have missed while it was unreachable.
#[derive(Debug, Default)]
struct Repair {
    /// A connect or disconnect write failed: the store's view of this node needs a sync.
    dirty: AtomicBool,
    /// Clients whose channel memberships could not be loaded when they connected.
    unloaded: Mutex<HashSet<ClientId>>,
    /// Held shared by attach/detach while they write presence, exclusively by a sync, so a sync
    /// never works from a snapshot that a concurrent connect is about to change.
    gate: AsyncRwLock<()>,
}

impl Node {
    /// A node, the receiving ends of its outcome channels (for [`Node::run_receipts`]) and
    /// its history lanes (for [`Node::run_lanes`]).
    pub(crate) fn new(parts: NodeParts) -> (Arc<Self>, Inboxes, Option<Lanes>) {
        let (settled_tx, settled_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let boot = envelope::now_ms();
        let (recent, published) = (
            dedupe::RecentIds::new(&parts.limits),
            dedupe::RecentIds::new(&parts.limits),
        );
        let (history, lanes) = if parts.history.enabled() {
            let (h, l) = history::History::new(parts.history.clone(), &parts.id, boot);
            (Some(h), Some(l))
        } else {
            (None, None)
        };
        let node = Arc::new(Self {
            id: parts.id,
            cluster: parts.cluster,
            topics: parts.topics,
            broker: parts.broker,
            presence: parts.presence,
            limits: parts.limits,
            persist_channels: parts.persist_channels,
            metrics: parts.metrics,
            offline: parts.offline,
            webhooks: parts.webhooks,
            registry: Registry::default(),
            boot,
            conn_seq: AtomicU64::new(0),
            lock_hasher: RandomState::new(),
            client_locks: (0..CLIENT_LOCK_STRIPES)
                .map(|_| AsyncMutex::new(()))
                .collect(),
            arriving: supersede::Arriving::default(),
            outcomes: Outcomes {
                settled: settled_tx,
                reports: reports_tx,
            },
            recent,
            published,
            repair: Repair::default(),
            catch_ups: catch_up::CatchUps::default(),
            keeping: pending::Keeping::default(),
            lease: parts.cluster_config.node_lease,
            cluster_timing: parts.cluster_config,
            draining: AtomicBool::new(false),
            moves: TaskTracker::new(),
            parked: TaskTracker::new(),
            takeovers: Mutex::new(HashMap::new()),
            dead_since: Mutex::new(HashMap::new()),
            view_changed: Mutex::new(tokio::time::Instant::now()),
            history,
            handing_over: AtomicBool::new(false),
            linger: parts.linger,
            lingering: TaskTracker::new(),
            linger_stop: tokio_util::sync::CancellationToken::new(),
        });
        (
            node,
            Inboxes {
                settled: settled_rx,
                reports: reports_rx,
            },
            lanes,
        )
    }

    /// How many distinct clients have a connection on this node (the admin console's stats).
    pub(crate) fn local_client_count(&self) -> usize {
        self.registry.client_count()
    }

    /// `[cluster]` as configured (lease, drain and return-home timings).
    pub(crate) fn cluster_config(&self) -> &ClusterConfig {
        &self.cluster_timing
    }

    /// A connection id unique across the cluster and across restarts of this node.
    fn next_connection_id(&self) -> ConnectionId {
        let seq = self.conn_seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{:x}-{seq}", self.id, self.boot);
        ConnectionId::new(id).expect("node id and numbers form a valid connection id")
    }

    fn client_lock(&self, client: &ClientId) -> &AsyncMutex<()> {
        let i = self.lock_hasher.hash_one(client.as_str()) as usize % self.client_locks.len();
        &self.client_locks[i]
    }

    fn presence_error(&self, op: &'static str, e: &Error) {
        Metrics::bump(&self.metrics.presence_errors);
        tracing::warn!(
            op,
            error = e as &dyn std::error::Error,
            "presence store call failed"
        );
    }

    /// Publishes an online/offline event on `{prefix}.events` and hands it to the webhooks:
    /// every event is published by one node, so it is posted once.
    async fn publish_event(&self, event: &Event) {
        self.webhooks.event(event);
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
}
