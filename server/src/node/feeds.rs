//! The node's two broker feeds: subscribing, reading in order, resubscribing with backoff when
//! a stream ends, and handing each command to `delivery`.
//!
//! A gap on `.all` (the subscription lagged) means membership changes may have been lost, so
//! the local channel index is rebuilt from the presence store.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use impush_core::{
    envelope::{self, ClusterCommand, NodeCommand},
    Delivery, Error, SubscribeMode, Subscription,
};
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::metrics::Metrics;

/// The node's two broker feeds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Feed {
    /// `{prefix}.inbox.{node}`, read as `Queue{group = node id}`.
    Inbox,
    /// `{prefix}.all`, read `Fanout`.
    All,
}

impl Node {
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

    async fn dispatch(self: &Arc<Self>, feed: Feed, delivery: Delivery) {
        let (payload, acker) = delivery.into_parts();
        match feed {
            Feed::Inbox => match envelope::decode::<NodeCommand>("node command", &payload) {
                Ok(NodeCommand::Deliver(d)) => self.deliver(d, acker),
                Ok(NodeCommand::DeliverMany(batch)) => self.deliver_many(batch, acker),
                Ok(NodeCommand::Receipt {
                    id,
                    sender,
                    to,
                    status,
                }) => {
                    self.push_receipt(&id, &sender, &to, status);
                    acker.ack();
                }
                Ok(NodeCommand::Kick { client }) => {
                    self.kick(&client);
                    acker.ack();
                }
                // Awaited: a full lane holds this reader instead of queueing without bound.
                Ok(NodeCommand::Publish(p)) => self.sequence(p, acker).await,
                Ok(NodeCommand::Drain { client }) => {
                    acker.ack();
                    if self.registry.is_local(&client) {
                        let node = self.clone();
                        tokio::spawn(async move {
                            let _guard = node.client_lock(&client).lock().await;
                            node.drain_inbox(&client).await;
                        });
                    }
                }
                Err(e) => self.undecodable(&e, acker),
            },
            Feed::All => match envelope::decode::<ClusterCommand>("cluster command", &payload) {
                Ok(ClusterCommand::Reannounce { clients }) => {
                    acker.ack();
                    self.reannounce(clients);
                }
                Ok(cmd) => {
                    if self.first_publication(&cmd) {
                        self.on_cluster_command(cmd);
                    }
                    acker.ack();
                }
                Err(e) => self.undecodable(&e, acker),
            },
        }
    }

    /// Whether `cmd` is not an unnumbered channel message or broadcast seen within the
    /// window (without history, a retried publication reaches every node again). Numbered
    /// ones are deduplicated by position where they are kept (`history`).
    fn first_publication(&self, cmd: &ClusterCommand) -> bool {
        let id = match cmd {
            ClusterCommand::Channel { id, pos: None, .. }
            | ClusterCommand::Broadcast { id, pos: None, .. } => id,
            _ => return true,
        };
        if self.published.first_time(id) {
            return true;
        }
        Metrics::bump(&self.metrics.duplicates_dropped);
        false
    }

    fn undecodable(&self, e: &Error, acker: impush_core::Acker) {
        Metrics::bump(&self.metrics.undecodable);
        tracing::warn!(
            error = e as &dyn std::error::Error,
            "dropping undecodable broker message"
        );
        // Redelivering it would not make it decodable.
        acker.ack();
    }

    /// Consumes `feed` until `cancel`: items in order, lag reported (and repaired on `.all`),
    /// and a resubscribe with backoff whenever the stream ends (the broker restarted or
    /// dropped us).
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
                        Some(Ok(delivery)) => self.dispatch(feed, delivery).await,
                        Some(Err(Error::Lagged { dropped })) => self.lagged(feed, dropped),
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

    fn lagged(self: &Arc<Self>, feed: Feed, dropped: u64) {
        self.metrics
            .broker_lagged
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(?feed, dropped, "subscription lagged; messages were lost");
        if let Feed::All = feed {
            // Joins and leaves may be among the lost: rebuild the channel index.
            let node = self.clone();
            tokio::spawn(async move { node.rebuild_channel_index().await });
        }
    }

    /// Reloads every local client's channel memberships from the presence store.
    async fn rebuild_channel_index(&self) {
        Metrics::bump(&self.metrics.channel_index_rebuilds);
        for client in self.registry.local_clients() {
            let _guard = self.client_lock(&client).lock().await;
            if self.registry.is_local(&client) {
                self.registry.forget_channels(&client);
                self.load_channels(&client).await;
            }
        }
    }
}
