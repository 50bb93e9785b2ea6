//! Webhooks (`[webhooks]`, `docs/design.md` section 17): online/offline, stored-for-offline and
//! channel join/leave, POSTed to the business as signed JSON batches.
//!
//! The node hands every hook to `Webhooks` without waiting: each endpoint has a bounded queue
//! filled with `try_send`, so delivery never blocks on a slow or dead receiver; a full queue
//! drops the hook and counts it (`impush_webhook_dropped_total{reason="queue_full"}`). Each
//! endpoint's task (`sender`) batches, signs (`sign`) and retries with backoff within the retry
//! window. Every hook is posted by one node: the one that publishes the online/offline event,
//! the one that stored the message, the owner of the client that joined or left.
//!
//! - `config`: the `[webhooks]` section and its checks;
//! - `hook`: one hook and the JSON body of a POST;
//! - `sign`: the `Impush-Signature` header, and [`verify`] for receivers written in Rust;
//! - `sender`: one endpoint's queue, batches and retries.

mod config;
mod hook;
mod sender;
mod sign;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use impush_core::{envelope, ChannelName, ClientId, Event, NodeId, StoredMessage};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::{EndpointConfig, EventKind, RetryConfig, WebhooksConfig};
pub use sign::{verify, VerifyError, SIGNATURE_HEADER};

use crate::metrics::{Metrics, WebhookDrop};
use hook::{Hook, What};

/// One endpoint as the node sees it: what it wants and where its queue is.
#[derive(Debug)]
struct Endpoint {
    kinds: Vec<EventKind>,
    first_last_only: bool,
    queue: mpsc::Sender<Arc<Hook>>,
}

impl Endpoint {
    fn wants(&self, what: &What) -> bool {
        self.kinds.contains(&what.kind()) && (!self.first_last_only || what.is_first_or_last())
    }
}

/// The node's side of webhooks: queues hooks for the endpoints that want them.
#[derive(Debug)]
pub(crate) struct Webhooks {
    endpoints: Vec<Endpoint>,
    node: NodeId,
    boot: u64,
    seq: AtomicU64,
    /// Some endpoint wants the data of stored messages.
    wants_data: bool,
    metrics: Arc<Metrics>,
    stop: sender::Stop,
    tasks: TaskTracker,
}

impl Webhooks {
    /// Starts one sender task per configured endpoint (none when there are none). Call inside
    /// a Tokio runtime.
    ///
    /// # Errors
    /// The HTTP client could not be built (no TLS roots could be loaded).
    pub(crate) fn start(
        config: &WebhooksConfig,
        node: &NodeId,
        metrics: Arc<Metrics>,
    ) -> impush_core::Result<Self> {
        let stop = sender::Stop {
            closing: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        let tasks = TaskTracker::new();
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        if config.enabled() {
            let client = reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("impush/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| impush_core::Error::Backend {
                    backend: "webhooks",
                    source: Box::new(e),
                })?;
            for (i, e) in config.endpoints.iter().enumerate() {
                let url = reqwest::Url::parse(&e.url).map_err(|err| {
                    impush_core::Error::Config(format!(
                        "config key `webhooks.endpoints.{i}.url`: {err}"
                    ))
                })?;
                let (tx, rx) = mpsc::channel(config.queue);
                let sender = sender::Sender {
                    name: format!("webhooks.endpoints.{i} ({})", url.host_str().unwrap_or("?")),
                    url,
                    secret: e.secret.clone(),
                    include_data: e.include_data,
                    node: node.clone(),
                    batch_size: config.batch_size,
                    linger: config.linger,
                    retry: config.retry.clone(),
                    client: client.clone(),
                    metrics: metrics.clone(),
                };
                tasks.spawn(sender.run(rx, stop.clone()));
                endpoints.push(Endpoint {
                    kinds: e.events.clone(),
                    first_last_only: e.first_last_only,
                    queue: tx,
                });
            }
        }
        Ok(Self {
            wants_data: config
                .endpoints
                .iter()
                .any(|e| e.include_data && e.events.contains(&EventKind::Stored)),
            endpoints,
            node: node.clone(),
            boot: envelope::now_ms(),
            seq: AtomicU64::new(0),
            metrics,
            stop,
            tasks,
        })
    }

    /// Whether some endpoint wants hooks of `kind` (cheap; callers skip building hooks
    /// otherwise).
    pub(crate) fn wants(&self, kind: EventKind) -> bool {
        self.endpoints.iter().any(|e| e.kinds.contains(&kind))
    }

    /// Queues `what` for every endpoint that wants it, without waiting.
    fn push(&self, what: What) {
        let targets: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.wants(&what)).collect();
        if targets.is_empty() {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let hook = Arc::new(Hook {
            id: format!("{}-{:x}-{seq:x}", self.node, self.boot),
            ts: envelope::now_ms(),
            queued: Instant::now(),
            what,
        });
        for e in targets {
            match e.queue.try_send(hook.clone()) {
                Ok(()) => self.metrics.webhook_queued(1),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.webhook_dropped(WebhookDrop::QueueFull, 1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.metrics.webhook_dropped(WebhookDrop::Shutdown, 1);
                }
            }
        }
    }

    /// An online or offline event this node publishes.
    pub(crate) fn event(&self, event: &Event) {
        let kind = match event {
            Event::Online { .. } => EventKind::Online,
            Event::Offline { .. } => EventKind::Offline,
        };
        if self.wants(kind) {
            self.push(What::Connection(event.clone()));
        }
    }

    /// `message` was kept in the offline inbox of each of `receivers`, none of them connected.
    pub(crate) fn stored(&self, receivers: &[ClientId], message: &StoredMessage) {
        if !self.wants(EventKind::Stored) {
            return;
        }
        for client in receivers {
            self.push(What::Stored {
                client: client.clone(),
                message: message.id.clone(),
                from: message.from.clone(),
                message_ts: message.ts,
                data: self.wants_data.then(|| message.data.clone()),
            });
        }
    }

    /// `clients` joined (`Joined`) or left (`Left`) `channel`.
    pub(crate) fn membership<'a>(
        &self,
        kind: EventKind,
        channel: &ChannelName,
        clients: impl IntoIterator<Item = &'a ClientId>,
    ) {
        if !self.wants(kind) {
            return;
        }
        for client in clients {
            self.push(What::Membership {
                kind,
                channel: channel.clone(),
                client: client.clone(),
            });
        }
    }

    /// Sends what is queued, for at most `grace`; what is still unsent then is dropped and
    /// counted (`reason="shutdown"`). Hooks queued after this call are refused the same way.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop.closing.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "webhooks still unsent after the grace period are dropped"
            );
            self.stop.abort.cancel();
            self.tasks.wait().await;
        }
    }
}
