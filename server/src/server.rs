//! [`ImServer`]: starting, running and stopping one node.

use std::{net::SocketAddr, sync::Arc};

use impush_brokers::{BackendContext, Backends};
use impush_core::{
    config::Secret,
    token::{NonceCache, TokenSigner},
    Broker, Cluster, NodeEntry, OfflineStore, Partitioner, PresenceStore, Topics,
};
use impush_helper::{HelperParts, ImHelper};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    app::{App, EventGroups},
    config::Config,
    edge::{self, EdgeLimits},
    http,
    metrics::{Metrics, TimedBroker},
    node::{Feed, Node, NodeParts, OfflineInbox},
    webhooks::Webhooks,
    Error, Result,
};

/// Credentials a node generated because the configuration did not set them. Show them to the
/// operator once; they change at every start. (`Debug` hides them, like every [`Secret`].)
#[derive(Debug, Clone, Default)]
pub struct Generated {
    /// The generated `auth.secret`, if it was generated.
    pub secret: Option<Secret>,
    /// The generated `auth.api_key`, if it was generated.
    pub api_key: Option<Secret>,
    /// The generated `admin.secret` (the admin console's login), if it was generated.
    pub admin_secret: Option<Secret>,
}

/// A running ImServer node.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> impush_server::Result<()> {
/// let server = impush_server::ImServer::start(impush_server::Config::default()).await?;
/// let helper = server.helper();
/// let alice = "alice".parse()?;
/// println!("connect to {}", helper.prepare_connect(&alice, serde_json::Value::Null)?.url);
/// server.shutdown().await
/// # }
/// ```
#[derive(Debug)]
pub struct ImServer {
    app: Arc<App>,
    helper: ImHelper,
    local_addr: SocketAddr,
    generated: Generated,
    serve: JoinHandle<std::io::Result<()>>,
    loops: TaskTracker,
    /// Stops the receipts task, after the sessions are gone.
    receipts_stop: CancellationToken,
}

/// How long SSE streams keep forwarding after the last connection closed at shutdown.
const STREAM_DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

fn random_key() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds an [`ImServer`]: the configuration, the backend registry the configuration's kinds
/// are looked up in, or backend instances you already hold.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> impush_server::Result<()> {
/// use impush_server::{Backends, Config, ImServer};
/// let mut backends = Backends::with_defaults();
/// // backends.register_broker("nats", |cfg: NatsConfig, ctx| NatsBroker::connect(cfg, ctx));
/// let server = ImServer::builder(Config::load(None)?).backends(backends).start().await?;
/// # server.shutdown().await }
/// ```
#[derive(Debug)]
pub struct ImServerBuilder {
    config: Config,
    backends: Backends,
    broker: Option<Arc<dyn Broker>>,
    presence: Option<Arc<dyn PresenceStore>>,
    offline: Option<Arc<dyn OfflineStore>>,
    partitioner: Option<Arc<dyn Partitioner>>,
}

impl ImServerBuilder {
    /// Places clients with this partitioner instead of the one `cluster.partitioner` names
    /// (give helpers the same one: `Cluster::with_partitioner`).
    pub fn partitioner(mut self, partitioner: Arc<dyn Partitioner>) -> Self {
        self.partitioner = Some(partitioner);
        self
    }

    /// Looks the configured kinds up in `backends` (default: [`Backends::with_defaults`]).
    pub fn backends(mut self, backends: Backends) -> Self {
        self.backends = backends;
        self
    }

    /// Uses this broker instead of the one `[broker]` names (e.g. a memory broker shared with
    /// other nodes in the same process).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Uses this presence store instead of the one `[presence]` names.
    pub fn presence(mut self, presence: Arc<dyn PresenceStore>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Uses this offline store instead of the one `[offline]` names (it is used only when
    /// `offline.enabled`).
    pub fn offline(mut self, offline: Arc<dyn OfflineStore>) -> Self {
        self.offline = Some(offline);
        self
    }

    /// Connects the backends, binds the listen address and starts serving.
    ///
    /// # Errors
    /// Invalid configuration, a kind the registry lacks, unreachable backends, or a listen
    /// address that cannot be bound.
    pub async fn start(self) -> Result<ImServer> {
        let config = self.config;
        config.validate()?;
        // The backends first: a wrong kind or an unreachable broker is reported as such, not
        // hidden behind a busy port, and nothing listens before they are ready.
        let cluster = |url: String| {
            let nodes = if config.cluster.nodes.is_empty() {
                vec![NodeEntry {
                    id: config.node.id.clone(),
                    url,
                }]
            } else {
                config.cluster.nodes.clone()
            };
            let partitioner = self
                .partitioner
                .clone()
                .unwrap_or_else(|| config.cluster.partitioner.build());
            Cluster::with_partitioner(nodes, partitioner)
        };
        let mut ctx = BackendContext::new(&config.broker)
            .with_node(config.node.id.clone())
            .with_cluster(
                &cluster(format!("ws://{}", config.node.listen))?,
                config.cluster.node_lease,
            );
        let broker = match self.broker {
            Some(b) => b,
            None => self.backends.connect_broker(&config.broker, &ctx).await?,
        };
        // Every publish of this node, its presence store and its embedded helper is timed,
        // labelled with the configured kind (also for a broker handed to the builder).
        let metrics = Arc::new(Metrics::default());
        let broker: Arc<dyn Broker> = Arc::new(TimedBroker::wrap(
            broker,
            config.broker.kind(),
            metrics.clone(),
        ));
        ctx.broker = Some(broker.clone());
        ctx.presence_section = config.presence.clone();
        ctx.inbox_limits = config.offline.limits();
        let presence = match self.presence {
            Some(p) => p,
            None => {
                self.backends
                    .connect_presence(&config.presence, &ctx)
                    .await?
            }
        };
        let offline = match (config.offline.enabled, self.offline) {
            (false, _) => {
                // Unused, but a typo in it (`IMPUSH_OFFLINE__ENABLE`) must not pass silently;
                // a kind this build leaves out cannot be checked, and is not needed.
                match self.backends.check_offline(&config.offline.store) {
                    Ok(()) | Err(impush_core::Error::NotCompiled(_)) => None,
                    Err(e) => return Err(e.into()),
                }
            }
            (true, Some(o)) => Some(o),
            (true, None) => Some(
                self.backends
                    .connect_offline(&config.offline.store, &ctx)
                    .await?,
            ),
        };

        let listener = TcpListener::bind(config.node.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.node.listen,
                source,
            })?;
        let local_addr = listener.local_addr()?;
        // What clients are told when the node list is left out: the address actually bound.
        let cluster = cluster(format!("ws://{local_addr}"))?;

        let mut generated = Generated::default();
        let secret = match &config.auth.secret {
            Some(s) => s.clone(),
            None => generated.secret.insert(Secret::new(random_key())).clone(),
        };
        let api_key = match &config.auth.api_key {
            Some(s) => s.clone(),
            None => generated.api_key.insert(Secret::new(random_key())).clone(),
        };
        let admin_secret = match (&config.admin.secret, config.admin.enabled) {
            (_, false) => None,
            (Some(s), true) => Some(s.clone()),
            (None, true) => Some(
                generated
                    .admin_secret
                    .insert(Secret::new(random_key()))
                    .clone(),
            ),
        };
        let signer = TokenSigner::new(
            secret.expose().as_bytes(),
            config.auth.token_ttl,
            config.limits.max_metadata_bytes,
        )?;
        let topics = Topics::new(&ctx.prefix);
        // Before the node: the offline events of a previous run (below) are hooks too.
        let webhooks = Webhooks::start(&config.webhooks, &config.node.id, metrics.clone())?;

        let (node, inboxes, lanes) = Node::new(NodeParts {
            id: config.node.id.clone(),
            cluster: cluster.clone(),
            topics,
            broker: broker.clone(),
            presence: presence.clone(),
            limits: config.limits.clone(),
            persist_channels: config.channels.persist,
            linger: config.channels.linger,
            metrics,
            webhooks,
            cluster_config: config.cluster.clone(),
            history: config.history.clone(),
            offline: offline.map(|store| OfflineInbox {
                store,
                require_ack: config.offline.require_ack,
                max_per_client: config.offline.max_per_client,
            }),
        });
        // Connections left by an earlier run of this node that died without a goodbye: the
        // business hears they are gone before this run accepts anything.
        let stale = presence
            .clear_node(&config.node.id, node.clear_channels_now())
            .await?;
        if !stale.is_empty() {
            tracing::warn!(
                connections = stale.len(),
                "clearing connections left by a previous run of this node"
            );
            node.linger(Node::gone_clients(&stale));
            node.announce_dropped(stale).await;
        }
        // Subscribe before accepting anything, so nothing published after `start` returns is missed.
        let inbox = node.subscribe(Feed::Inbox).await?;
        let all = node.subscribe(Feed::All).await?;

        let shutdown = CancellationToken::new();
        let receipts_stop = CancellationToken::new();
        let loops = TaskTracker::new();
        loops.spawn(node.clone().run_feed(Feed::Inbox, inbox, shutdown.clone()));
        loops.spawn(node.clone().run_feed(Feed::All, all, shutdown.clone()));
        loops.spawn(
            node.clone()
                .run_upkeep(config.cluster.node_lease, shutdown.clone()),
        );
        loops.spawn(node.clone().run_receipts(inboxes, receipts_stop.clone()));
        if let Some(lanes) = lanes {
            node.run_lanes(lanes, &shutdown, &loops);
        }

        let helper = ImHelper::new(HelperParts {
            cluster,
            signer: signer.clone(),
            broker,
            presence,
            prefix: ctx.prefix.clone(),
            history: config.history.enabled(),
        });
        let event_groups = EventGroups::new(
            config.limits.max_event_groups,
            config.limits.event_group_idle,
            node.metrics.clone(),
        );
        let app = Arc::new(App {
            nonces: NonceCache::new(config.node.id.clone(), config.limits.max_pending_tokens),
            node,
            signer,
            shutdown: shutdown.clone(),
            streams: CancellationToken::new(),
            sessions: TaskTracker::new(),
            helper: helper.clone(),
            api_key,
            sse_keep_alive: config.limits.sse_keep_alive,
            event_groups,
            drain_requested: CancellationToken::new(),
            throttle: crate::throttle::ConnectThrottle::new(
                config.limits.connect_rate,
                config.limits.connect_rate_per_ip,
            ),
        });
        let admin = crate::admin::Admin::start(app.clone(), &config.admin, admin_secret)?;
        let router = http::router(app.clone(), admin.router());
        let serve = tokio::spawn(edge::serve(
            listener,
            router,
            EdgeLimits::new(&config.limits),
            app.node.metrics.clone(),
            app.streams.clone(),
        ));
        tracing::info!(node = %config.node.id, %local_addr, broker = config.broker.kind(), presence = config.presence.kind(), "impush node started");
        Ok(ImServer {
            app,
            helper,
            local_addr,
            generated,
            serve,
            loops,
            receipts_stop,
        })
    }
}

impl ImServer {
    /// A builder for a node with `config`.
    pub fn builder(config: Config) -> ImServerBuilder {
        ImServerBuilder {
            config,
            backends: Backends::with_defaults(),
            broker: None,
            presence: None,
            offline: None,
            partitioner: None,
        }
    }

    /// Starts a node with the built-in backend kinds its configuration names.
    ///
    /// # Errors
    /// As [`ImServerBuilder::start`].
    pub async fn start(config: Config) -> Result<Self> {
        Self::builder(config).start().await
    }

    /// Starts a node with backends you provide (a custom broker, or memory backends shared with
    /// other parts of your process).
    ///
    /// # Errors
    /// As [`ImServerBuilder::start`].
    pub async fn start_with(
        config: Config,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
    ) -> Result<Self> {
        Self::builder(config)
            .broker(broker)
            .presence(presence)
            .start()
            .await
    }

    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A helper sharing this node's backends and cluster view.
    pub fn helper(&self) -> ImHelper {
        self.helper.clone()
    }

    /// Credentials generated at start because the configuration lacked them.
    pub fn generated(&self) -> &Generated {
        &self.generated
    }

    /// The HTTP API key in force (configured or generated).
    pub fn api_key(&self) -> &str {
        self.app.api_key.expose()
    }

    /// This node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.app.node.metrics
    }

    /// Resolves when the node stops serving on its own (the listener failed).
    pub async fn closed(&mut self) {
        let _ = (&mut self.serve).await;
    }

    /// Drains the node for a rolling deploy (`docs/design.md` section 16): it is marked
    /// draining in presence (no longer handed out, new connects refused with 503), and its
    /// clients are moved to their next node, closed with 1012 spread over
    /// `cluster.drain_period`; returns once they are gone and their moves settled (at most
    /// the drain period plus `cluster.move_grace` and a second). Returns `false` at once when
    /// no other node is live to take them. Follow it with [`ImServer::shutdown`].
    pub async fn drain(&self) -> bool {
        let node = &self.app.node;
        if !node.drain().await {
            return false;
        }
        let c = &node.cluster_config();
        node.drained(c.drain_period + c.move_grace + std::time::Duration::from_secs(1))
            .await;
        // (The drain itself waited a third of a lease for the others' views first.)
        true
    }

    /// Resolves once a drain was asked for over the HTTP API (`POST /api/v1/node/drain`):
    /// an embedding program then calls [`ImServer::drain`] and [`ImServer::shutdown`], as the
    /// `impush` binary does.
    pub fn drain_requested(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.app.drain_requested.clone().cancelled_owned()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.app.node.state() == impush_core::NodeState::Draining
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001 (publishing offline
    /// events), wait up to `limits.shutdown_grace`, then flush and close the broker.
    ///
    /// # Errors
    /// Broker errors while flushing.
    pub async fn shutdown(self) -> Result<()> {
        let grace = self.app.node.limits.shutdown_grace;
        self.app.shutdown.cancel();
        self.app.node.close_sessions();
        self.app.sessions.close();
        if tokio::time::timeout(grace, self.app.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "connections still open after the grace period");
        }
        // Sessions are gone, so every message they held is settled: let its acks out.
        self.receipts_stop.cancel();
        // Let SSE readers forward the offline events just published before their streams end.
        tokio::time::sleep(STREAM_DRAIN).await;
        self.app.streams.cancel();
        self.loops.close();
        let _ = tokio::time::timeout(grace, self.loops.wait()).await;
        self.serve.abort();
        let node = &self.app.node;
        // Best effort: if the store is unreachable now, the node's lease runs out and live
        // nodes (or this one, restarted) clean up instead.
        let _ = tokio::time::timeout(grace, node.end_lingering()).await;
        if let Err(e) = node
            .presence
            .clear_node(&node.id, !node.persist_channels)
            .await
        {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not clear this node's presence; its lease will expire"
            );
        }
        // The offline events of the closed sessions are queued by now: send them, and what
        // else is queued, for up to the grace.
        node.webhooks.shutdown(grace).await;
        node.broker.shutdown().await?;
        tracing::info!(node = %node.id, "impush node stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::extract::State;

    use super::*;

    /// Once shutdown began, a request still in flight on an open connection (new ones are no
    /// longer accepted) hears 503 `shutting_down` from `/readyz`, so a load balancer drains.
    #[tokio::test]
    async fn readyz_says_503_once_shutdown_began() {
        let mut config = Config::default();
        config.node.listen = "127.0.0.1:0".parse().unwrap();
        let server = ImServer::start(config).await.unwrap();
        let ready = http::readyz(State(server.app.clone())).await;
        assert_eq!(ready.status(), 200);
        server.app.shutdown.cancel();
        let ready = http::readyz(State(server.app.clone())).await;
        assert_eq!(ready.status(), 503);
        let body = axum::body::to_bytes(ready.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "shutting_down");
        server.shutdown().await.unwrap();
    }
}
