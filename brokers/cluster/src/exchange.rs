//! The exchange: how one cluster presence instance talks with the others over
//! `{prefix}.presence` (one `Fanout` topic; every instance reads everything).
//!
//! It subscribes to the topic (again, with backoff, when the feed ends), reads the feed and
//! hands state messages to the [`Machine`], answers requests addressed to this node, routes
//! replies to the requests waiting for them, records barriers, and publishes what this
//! instance has to say. The rules of what a message does live in `machine`; this module only
//! moves messages.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::StreamExt;
use impush_core::{envelope, Broker, ClientId, Error, NodeId, Result, SubscribeMode, Subscription};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    machine::Machine,
    rpc::{BarrierKey, Barriers, Gathered, Pending},
    wire::{Query, Reply, Wire},
};

const BACKEND: &str = "cluster presence";
/// Replies being published at once. The reader hands replies off instead of awaiting each
/// publish: one round trip to the broker per request would cap a node at a few hundred
/// answers a second (every new connection asks its owner for its channels). Past this many
/// the reader waits, so a flood of requests cannot grow memory.
const REPLIES_IN_FLIGHT: usize = 256;
/// The request id of requests nobody waits an answer for.
const NO_REPLY: u64 = u64::MAX;

pub(crate) fn unavailable(why: String) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        source: Some(why.into()),
    }
}

/// One instance's end of the presence topic, and the state it keeps from it.
#[derive(Debug)]
pub(crate) struct Exchange {
    broker: Arc<dyn Broker>,
    topic: String,
    /// This instance's id on the topic (requests name it, replies are addressed to it).
    instance: String,
    timeout: Duration,
    machine: Mutex<Machine>,
    pending: Pending,
    barriers: Barriers,
    replies: Arc<Semaphore>,
}

impl Exchange {
    /// Subscribes to `{prefix}.presence` and starts reading it into `machine`; the reader stops
    /// when the returned guard is dropped.
    ///
    /// # Errors
    /// Broker errors while subscribing.
    pub(crate) async fn start(
        broker: Arc<dyn Broker>,
        prefix: &str,
        machine: Machine,
        timeout: Duration,
    ) -> Result<(Arc<Self>, DropGuard)> {
        let topic = format!("{prefix}.presence");
        let sub = broker.subscribe(&topic, SubscribeMode::Fanout).await?;
        let exchange = Arc::new(Self {
            broker,
            topic,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            timeout,
            machine: Mutex::new(machine),
            pending: Pending::default(),
            barriers: Barriers::default(),
            replies: Arc::new(Semaphore::new(REPLIES_IN_FLIGHT)),
        });
        let stop = CancellationToken::new();
        tokio::spawn(exchange.clone().run(sub, stop.clone()));
        Ok((exchange, stop.drop_guard()))
    }

    /// How long a request waits for answers.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The state machine, locked (never across an await).
    pub(crate) fn machine(&self) -> MutexGuard<'_, Machine> {
        // A panic while holding it already failed a test or a request; the data (id sets) is
        // still usable.
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) async fn publish(&self, msg: &Wire) -> Result<()> {
        let payload = envelope::encode("presence message", msg)?;
        self.broker.publish(&self.topic, payload).await
    }

    /// Publishes a reply without waiting for the broker to take it (bounded by
    /// [`REPLIES_IN_FLIGHT`]). Replies need no order: each answers its own request id.
    async fn send_reply(&self, msg: &Wire) {
        let payload = match envelope::encode("presence message", msg) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot encode a presence reply"
                );
                return;
            }
        };
        // The semaphore is never closed, so this only waits for a free slot.
        let Ok(permit) = self.replies.clone().acquire_owned().await else {
            return;
        };
        let broker = self.broker.clone();
        let topic = self.topic.clone();
        tokio::spawn(async move {
            match broker.publish(&topic, payload).await {
                // The node is shutting down: nobody needs the answer.
                Ok(()) | Err(Error::Closed(_)) => {}
                Err(e) => tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot send a presence reply"
                ),
            }
            drop(permit);
        });
    }

    fn state_request(&self, to: Option<NodeId>) -> Wire {
        Wire::Request {
            rid: NO_REPLY,
            from: self.instance.clone(),
            to,
            query: Query::State,
        }
    }

    /// Asks every node to publish its state (the view is being built or rebuilt).
    pub(crate) async fn ask_all_state(&self) {
        if let Err(e) = self.publish(&self.state_request(None)).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot ask nodes for their presence state"
            );
        }
    }

    /// Asks `to` (one node, or every configured node) and gathers the answers; nodes known to
    /// be dead are reported missing at once instead of being waited for.
    pub(crate) async fn ask(&self, to: Option<&NodeId>, query: Query) -> Result<Gathered> {
        let (waitable, dead) = {
            let m = self.machine();
            let expected = match to {
                Some(n) => vec![n.clone()],
                None => m.nodes().to_vec(),
            };
            m.split_dead(expected, Instant::now())
        };
        let waiting = self.pending.open();
        self.publish(&Wire::Request {
            rid: waiting.rid,
            from: self.instance.clone(),
            to: to.cloned(),
            query,
        })
        .await?;
        let mut gathered = waiting.gather(&waitable, self.timeout).await;
        gathered.missing.extend(dead);
        gathered.missing.sort();
        Ok(gathered)
    }

    /// Sends `query` for `clients` to every keeper of each one's memberships the live view
    /// does not count dead (`Machine::by_keeper`); fails naming the keepers that did not
    /// confirm in time. Returns the replies.
    pub(crate) async fn to_keepers(
        &self,
        clients: &[ClientId],
        query: impl Fn(Vec<ClientId>) -> Query,
    ) -> Result<Vec<Reply>> {
        let by_keeper = self.machine().by_keeper(clients);
        let mut failed = Vec::new();
        let mut replies = Vec::new();
        for (keeper, group) in by_keeper {
            let g = self.ask(Some(&keeper), query(group)).await?;
            if !g.missing.is_empty() {
                failed.push(keeper);
            }
            replies.extend(g.replies.into_iter().map(|(_, r)| r));
        }
        if failed.is_empty() {
            return Ok(replies);
        }
        let names: Vec<String> = failed.iter().map(ToString::to_string).collect();
        Err(unavailable(format!(
            "node(s) {} did not confirm within {:?}",
            names.join(", "),
            self.timeout
        )))
    }

    /// Publishes a barrier and waits until `reader` has read it, so `reader` has seen every
    /// message this instance published before.
    pub(crate) async fn barrier(&self, reader: &Exchange) -> Result<()> {
        let key: BarrierKey = (self.instance.clone(), rand_token());
        self.publish(&Wire::Barrier {
            from: key.0.clone(),
            token: key.1,
        })
        .await?;
        if reader.barriers.wait(&key, reader.timeout).await {
            Ok(())
        } else {
            Err(unavailable(
                "barrier not seen within the query timeout".into(),
            ))
        }
    }

    /// The reader loop: hands each message to [`Self::on_message`]; resubscribes when the
    /// stream ends, and asks for every node's state after a gap in the feed.
    async fn run(self: Arc<Self>, first: Subscription, stop: CancellationToken) {
        let mut sub = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(mut stream) = sub.take() {
                loop {
                    let item = tokio::select! {
                        () = stop.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(d)) => match envelope::decode::<Wire>("presence message", &d.ack())
                        {
                            Ok(msg) => self.on_message(msg).await,
                            Err(e) => tracing::warn!(
                                error = &e as &dyn std::error::Error,
                                "dropping undecodable presence message"
                            ),
                        },
                        Some(Err(Error::Lagged { dropped })) => {
                            tracing::warn!(
                                dropped,
                                "presence feed lagged; asking every node for its state"
                            );
                            self.ask_all_state().await;
                        }
                        Some(Err(e)) => tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "presence feed error"
                        ),
                        None => break,
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match self
                .broker
                .subscribe(&self.topic, SubscribeMode::Fanout)
                .await
            {
                Ok(s) => {
                    sub = Some(s);
                    backoff = Duration::from_millis(100);
                    // Deltas published while we were away are lost: rebuild the view.
                    self.ask_all_state().await;
                }
                Err(e) => {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "presence resubscribe failed"
                    );
                }
            }
        }
    }

    /// One message from the feed.
    async fn on_message(&self, msg: Wire) {
        match msg {
            Wire::Request {
                rid,
                from,
                to,
                query,
            } => self.on_request(rid, from, to, query).await,
            Wire::Reply {
                rid,
                to,
                node,
                reply,
            } => {
                if to == self.instance {
                    self.pending.deliver(rid, node, reply);
                }
            }
            Wire::Barrier { from, token } => self.barriers.record((from, token)),
            state => {
                let ask = self.machine().apply(state, Instant::now());
                if let Some(node) = ask {
                    if let Err(e) = self.publish(&self.state_request(Some(node))).await {
                        tracing::debug!(
                            error = &e as &dyn std::error::Error,
                            "cannot ask a node for its state"
                        );
                    }
                }
            }
        }
    }

    /// A request: answered if it is addressed to this node (its state published first when
    /// that is what was asked), the reply sent unless nobody waits for it.
    async fn on_request(&self, rid: u64, from: String, to: Option<NodeId>, query: Query) {
        let (me, reply, publish) = {
            let mut m = self.machine();
            let Some(me) = m.answerer(to.as_ref()) else {
                return;
            };
            let (reply, publish) = m.answer(query);
            (me, reply, publish)
        };
        if let Some(msg) = publish {
            if let Err(e) = self.publish(&msg).await {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot publish this node's presence state"
                );
            }
        }
        if rid == NO_REPLY {
            return; // nobody waits
        }
        self.send_reply(&Wire::Reply {
            rid,
            to: from,
            node: me,
            reply,
        })
        .await;
    }
}

fn rand_token() -> u64 {
    let u = uuid::Uuid::new_v4();
    let (hi, lo) = u.as_u64_pair();
    hi ^ lo
}
