//! What a [`KafkaBroker`](crate::KafkaBroker) shares with the subscription tasks it spawns: its
//! state ([`Inner`]: config, clients, the shutdown token and the task tracker) and the way
//! both run librdkafka's blocking calls ([`blocking`]). Kept apart from `broker` so that the
//! subscriptions depend on this state, not on the broker that uses them.

use std::sync::{atomic::AtomicBool, Arc, Mutex};

use impush_core::{envelope::Topics as ClusterTopics, NodeId, Result};
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
    /// For a node's broker: which queue members take over another node's inbox.
    pub(crate) takeovers: Option<Takeovers>,
}

/// Tells a node's takeover of another node's inbox (a queue member of group `{topic}:{owner}`
/// on the inbox topic of `owner`) from its own inbox.
///
/// A takeover member joins as a static member (`client::static_member`): it never sends a
/// LeaveGroup, and the coordinator evicts it once it stops heartbeating. tansu 0.6 keeps a
/// member that leaves while its group re-forms as the group's leader, refusing every other
/// member's sync, but clears a leader evicted for silence; a takeover lets go exactly when the
/// owner comes back and joins (README "Over Kafka").
#[derive(Debug, Clone)]
pub(crate) struct Takeovers {
    node: String,
    inbox_prefix: String,
}

impl Takeovers {
    pub(crate) fn new(node: &NodeId, topics: &ClusterTopics) -> Self {
        Self {
            node: node.to_string(),
            inbox_prefix: topics.inbox_prefix(),
        }
    }

    /// Whether Kafka group `group_id` on `topic` is another node's inbox read by this node.
    pub(crate) fn is_takeover(&self, topic: &str, group_id: &str) -> bool {
        topic
            .strip_prefix(self.inbox_prefix.as_str())
            .is_some_and(|owner| owner != self.node && group_id == format!("{topic}:{owner}"))
    }
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
    /// purges and flushes, threads are joined), so it happens on a thread of its own.
    fn drop(&mut self) {
        let clients = self
            .clients
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(clients) = clients {
            drop_detached(clients);
        }
    }
}

/// Runs a blocking librdkafka call on a thread of its own, not on the runtime's blocking pool:
/// a call that does not return (closing a consumer whose cluster had gone for good blocked for
/// minutes in a test) would hold up the runtime's shutdown as long, and with it a node's exit
/// or a test's end. A detached thread is left behind instead, and ends with the process.
pub(crate) async fn blocking<T, F>(bootstrap: &str, op: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let stuck = || {
        Err(Error::Stuck {
            bootstrap: bootstrap.to_owned(),
            op,
        }
        .into())
    };
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("impush-kafka".into())
        .spawn(move || {
            let _ = done.send(f());
        });
    if spawned.is_err() {
        return stuck();
    }
    result.await.unwrap_or_else(|_| stuck())
}

/// Drops a librdkafka client (its drop blocks until it has closed) on a thread of its own, for
/// the reason [`blocking`] gives.
pub(crate) fn drop_detached<T: Send + 'static>(client: T) {
    let _ = std::thread::Builder::new()
        .name("impush-kafka".into())
        .spawn(move || drop(client));
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_takeover_is_another_nodes_inbox_group() {
        let node = NodeId::new("n1").expect("a node id");
        let t = Takeovers::new(&node, &ClusterTopics::new("app"));
        let cases = [
            (
                "app.inbox.n2",
                "app.inbox.n2:n2",
                true,
                "another node's inbox",
            ),
            ("app.inbox.n1", "app.inbox.n1:n1", false, "its own inbox"),
            ("app.events", "app.events:billing", false, "an event group"),
            (
                "app.inbox.n2",
                "app.inbox.n2:billing",
                false,
                "another group",
            ),
            (
                "app.inbox.n2",
                "app.inbox.n2:fanout-1f",
                false,
                "a fanout reader's own group",
            ),
            (
                "other.inbox.n2",
                "other.inbox.n2:n2",
                false,
                "another cluster",
            ),
        ];
        for (topic, group_id, want, what) in cases {
            assert_eq!(t.is_takeover(topic, group_id), want, "{what}");
        }
    }

    /// A blocking call still running does not hold up the runtime's shutdown (the blocking
    /// pool would: a runtime's drop waits for its blocking tasks).
    #[test]
    fn a_call_that_does_not_return_does_not_hold_up_the_runtime() {
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        let (_keep, never) = std::sync::mpsc::channel::<()>();
        rt.block_on(async {
            let call = blocking("kafka:9092", "close consumer", move || {
                let _ = never.recv_timeout(Duration::from_secs(30));
                Ok(())
            });
            let timed_out = tokio::time::timeout(Duration::from_millis(50), call).await;
            assert!(timed_out.is_err(), "the call is still running");
        });
        let t = Instant::now();
        drop(rt);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the runtime's drop waited {:?} for the call",
            t.elapsed()
        );
    }
}
