//! What a [`KafkaBroker`](crate::KafkaBroker) shares with the subscription tasks it spawns: its
//! state ([`Inner`]: config, clients, the shutdown token and the task tracker) and the way
//! both run librdkafka's blocking calls ([`blocking`]). Kept apart from `broker` so that the
//! subscriptions depend on this state, not on the broker that uses them.

use std::sync::{atomic::AtomicBool, Arc, Mutex};

use impush_core::Result;
use rdkafka::producer::FutureProducer;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    client::{Ctx, Health},
    config::KafkaConfig,
    error::Error,
    members::Members,
    topics::Topics,
};

/// The broker's state, shared (`Arc`) with every subscription task it spawns.
pub(crate) struct Inner {
    pub(crate) cfg: KafkaConfig,
    /// `host:port,...` as librdkafka takes it; named in every error.
    pub(crate) bootstrap: String,
    /// Taken out (and flushed) by `shutdown`.
    pub(crate) clients: Mutex<Option<Clients>>,
    pub(crate) closed: AtomicBool,
    /// Ends every subscription at shutdown.
    pub(crate) cancel: CancellationToken,
    /// The subscription tasks, so that shutdown waits for their last commits.
    pub(crate) tasks: TaskTracker,
    /// This process's queue-group members (a new one joins once those leaving are gone).
    pub(crate) members: Members,
}

/// The clients publishing and creating topics; replaced together when the producer is.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) producer: FutureProducer<Ctx>,
    /// Whether this producer lost every broker after it had reached the cluster.
    pub(crate) health: Arc<Health>,
    pub(crate) topics: Arc<Topics>,
}

impl Drop for Inner {
    /// Without a `shutdown`, the clients are still here; dropping them blocks (the producer
    /// purges and flushes, threads are joined), so it happens on the blocking pool when there
    /// is a runtime.
    fn drop(&mut self) {
        let clients = self
            .clients
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let (Some(clients), Ok(rt)) = (clients, tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || drop(clients));
        }
    }
}

/// Runs a blocking librdkafka call on the blocking pool.
pub(crate) async fn blocking<T, F>(bootstrap: &str, op: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| {
        Err(Error::Stuck {
            bootstrap: bootstrap.to_owned(),
            op,
        }
        .into())
    })
}
