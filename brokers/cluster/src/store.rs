//! [`ClusterPresence`]: the [`PresenceStore`] with no store.
//!
//! Every instance (one per node, one per helper) reads `{prefix}.presence` through its
//! [`Exchange`] and keeps a view of every node's connections; a node instance also answers
//! requests. Each operation here runs the [`Machine`]'s rule under its lock and publishes what
//! the rule says to. See the crate docs for who knows what and how stale each answer can be.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use impush_core::{
    Answer, Broker, ChannelInfo, ChannelName, ClientId, Cluster, ConnectionId, DroppedConnection,
    Error, NodeId, NodeLease, NodeState, NodeSync, PresenceStore, Result,
};
use tokio::time::Instant;
use tokio_util::sync::DropGuard;

use crate::{
    exchange::Exchange,
    keep,
    machine::Machine,
    wire::{Query, Reply, Wire},
    ClusterPresenceConfig,
};

/// Presence kept by the nodes themselves and exchanged over the broker.
///
/// Created once per process by the `cluster` presence factory, with the node id on a node and
/// without one in a helper.
#[derive(Debug)]
pub struct ClusterPresence {
    exchange: Arc<Exchange>,
    me: Option<NodeId>,
    _stop: DropGuard,
}

impl ClusterPresence {
    /// Joins the cluster's presence exchange on `{prefix}.presence`. `me` is this node (`None`
    /// in a helper); `cluster` says which node owns which client.
    ///
    /// # Errors
    /// Broker errors while subscribing.
    pub async fn start(
        broker: Arc<dyn Broker>,
        prefix: &str,
        me: Option<NodeId>,
        cluster: Cluster,
        lease: Duration,
        cfg: &ClusterPresenceConfig,
    ) -> Result<Self> {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let machine = Machine::new(me.clone(), cluster, lease, Instant::now())
            .counting_from(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX / 2));
        let (exchange, stop) = Exchange::start(broker, prefix, machine, cfg.query_timeout).await?;
        // Every node publishes its state for the newcomer; a helper waits for it (bounded),
        // so its first answers are complete.
        exchange.ask_all_state().await;
        if me.is_none() {
            let deadline = Instant::now() + exchange.timeout();
            while !exchange.machine().unsynced(Instant::now()).is_empty()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Self {
            exchange,
            me,
            _stop: stop,
        })
    }

    /// Waits until `reader` has seen every message this instance published so far (writes
    /// become visible to other instances asynchronously; tests and tools that need
    /// read-your-writes across instances use this).
    ///
    /// # Errors
    /// Broker errors; [`Error::Unavailable`] if `reader` did not see it within the query
    /// timeout.
    pub async fn barrier(&self, reader: &ClusterPresence) -> Result<()> {
        self.exchange.barrier(&reader.exchange).await
    }

    /// Publishes this node's connections to every instance (nodes do it by themselves when an
    /// instance asks; a tool that just started a reader can use it with [`Self::barrier`]).
    ///
    /// # Errors
    /// Broker errors; [`Error::InvalidArgument`] on a helper instance.
    pub async fn publish_state(&self) -> Result<()> {
        self.me()?;
        let msg = self.exchange.machine().state_message();
        match msg {
            Some(msg) => self.exchange.publish(&msg).await,
            None => Ok(()),
        }
    }

    fn me(&self) -> Result<&NodeId> {
        self.me.as_ref().ok_or_else(|| {
            Error::InvalidArgument("cluster presence: only a node records connections".into())
        })
    }

    fn mine(&self, node: &NodeId) -> Result<&NodeId> {
        let me = self.me()?;
        if node != me {
            return Err(Error::InvalidArgument(format!(
                "cluster presence on node {me} cannot record connections of node {node}"
            )));
        }
        Ok(me)
    }

    async fn publish_all(&self, msgs: Vec<Wire>) -> Result<()> {
        for msg in &msgs {
            self.exchange.publish(msg).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl PresenceStore for ClusterPresence {
    async fn connect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
    ) -> Result<usize> {
        let me = self.mine(node)?;
        let (n, msg) = self
            .exchange
            .machine()
            .connect(me, client, connection, Instant::now());
        self.exchange.publish(&msg).await?;
        Ok(n)
    }

    async fn disconnect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        clear_channels: bool,
    ) -> Result<usize> {
        let me = self.mine(node)?;
        let (left, msg) = self.exchange.machine().disconnect(
            me,
            client,
            connection,
            clear_channels,
            Instant::now(),
        );
        self.exchange.publish(&msg).await?;
        Ok(left)
    }

    async fn clear_node(
        &self,
        node: &NodeId,
        clear_channels: bool,
    ) -> Result<Vec<DroppedConnection>> {
        let me = self.mine(node)?;
        let had_local = self.exchange.machine().has_local();
        // A node starting after a crash remembers nothing: the others' views say what it had.
        let mut held: BTreeSet<(ClientId, ConnectionId)> = BTreeSet::new();
        if !had_local {
            let g = self
                .exchange
                .ask(None, Query::ConnectionsOf { node: me.clone() })
                .await?;
            for (_, reply) in g.replies {
                if let Reply::Connections { connections } = reply {
                    held.extend(connections);
                }
            }
        }
        let (dropped, msg) = self.exchange.machine().clear(me, held, clear_channels);
        if let Some(msg) = msg {
            self.exchange.publish(&msg).await?;
        }
        keep::take_now_and_later(&self.exchange, me).await;
        Ok(dropped)
    }

    async fn sync_node(
        &self,
        node: &NodeId,
        connections: &[(ClientId, ConnectionId)],
        clear_channels: bool,
    ) -> Result<NodeSync> {
        let me = self.mine(node)?;
        let (sync, msgs) =
            self.exchange
                .machine()
                .sync(me, connections, clear_channels, Instant::now());
        self.publish_all(msgs).await?;
        // Counted dead meanwhile: joins and leaves of the clients kept here went only to
        // their other keeper.
        keep::take_now_and_later(&self.exchange, me).await;
        Ok(sync)
    }

    async fn heartbeat(&self, node: &NodeId, lease: Duration, state: NodeState) -> Result<bool> {
        let me = self.mine(node)?;
        let msg = {
            let mut machine = self.exchange.machine();
            machine.draining = state == NodeState::Draining;
            machine.heartbeat_message(me, lease)
        };
        self.exchange.publish(&msg).await?;
        Ok(self
            .exchange
            .machine()
            .heartbeat_sent(me, lease, Instant::now()))
    }

    async fn live_nodes(&self) -> Result<Vec<NodeLease>> {
        let live = self.exchange.machine().view().live_nodes(Instant::now());
        Ok(live
            .into_iter()
            .map(|(node, draining)| NodeLease {
                node,
                state: if draining {
                    NodeState::Draining
                } else {
                    NodeState::Live
                },
            })
            .collect())
    }

    async fn reap_expired(&self, clear_channels: bool) -> Result<Vec<DroppedConnection>> {
        let Some(me) = &self.me else {
            return Ok(Vec::new());
        };
        let reaped = self
            .exchange
            .machine()
            .reap(me, clear_channels, Instant::now());
        let mut all = Vec::new();
        for (node, dropped) in reaped {
            self.exchange
                .publish(&Wire::Dropped {
                    node,
                    by: me.clone(),
                    dropped: dropped.clone(),
                    clear: clear_channels,
                })
                .await?;
            all.extend(dropped);
        }
        Ok(all)
    }

    async fn connections(&self, client: &ClientId) -> Result<Answer<usize>> {
        let m = self.exchange.machine();
        let missing = m.unsynced(Instant::now());
        let value = m.view().connections_of(client);
        Ok(Answer { value, missing })
    }

    async fn online(&self, clients: &[ClientId]) -> Result<Answer<Vec<bool>>> {
        let m = self.exchange.machine();
        let missing = m.unsynced(Instant::now());
        let value = clients
            .iter()
            .map(|c| m.view().connections_of(c) > 0)
            .collect();
        Ok(Answer { value, missing })
    }

    async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
        let m = self.exchange.machine();
        let missing = m.unsynced(Instant::now());
        let value = m.view().online_clients();
        Ok(Answer { value, missing })
    }

    async fn leave_all_if_offline(&self, client: &ClientId) -> Result<bool> {
        let replies = self
            .exchange
            .to_keepers(std::slice::from_ref(client), |_| Query::LeaveIfOffline {
                client: client.clone(),
            })
            .await?;
        Ok(replies
            .iter()
            .any(|r| matches!(r, Reply::Left { left: true })))
    }

    async fn join_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        self.exchange
            .to_keepers(clients, |group| Query::Join {
                channel: channel.clone(),
                clients: group,
            })
            .await
            .map(drop)
    }

    async fn leave_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        self.exchange
            .to_keepers(clients, |group| Query::Leave {
                channel: channel.clone(),
                clients: group,
            })
            .await
            .map(drop)
    }

    async fn channel_members(&self, channel: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        let g = self
            .exchange
            .ask(
                None,
                Query::ChannelMembers {
                    channel: channel.clone(),
                },
            )
            .await?;
        let mut members = BTreeSet::new();
        for (_, reply) in g.replies {
            if let Reply::Clients { clients } = reply {
                members.extend(clients);
            }
        }
        Ok(Answer {
            value: members.into_iter().collect(),
            missing: g.missing,
        })
    }

    async fn channel_online(&self, channel: &ChannelName) -> Result<Answer<usize>> {
        let members = self.channel_members(channel).await?;
        let m = self.exchange.machine();
        Ok(members.map(|c| c.iter().filter(|c| m.view().connections_of(c) > 0).count()))
    }

    /// Asks the first keeper alive; if it does not answer (its death not yet in the live
    /// view), the other keeper, which has the same memberships.
    async fn client_channels(&self, client: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        let keepers = {
            let m = self.exchange.machine();
            let first = m.memberships_owner(client);
            let mut keepers = m.keepers(client);
            keepers.sort_by_key(|k| *k != first);
            keepers
        };
        let mut missing = Vec::new();
        for keeper in keepers {
            let g = self
                .exchange
                .ask(
                    Some(&keeper),
                    Query::ClientChannels {
                        client: client.clone(),
                    },
                )
                .await?;
            let answer = g.replies.into_iter().find_map(|(n, r)| match r {
                Reply::Channels { channels } if n == keeper => Some(channels),
                _ => None,
            });
            match answer {
                Some(value) => {
                    return Ok(Answer {
                        value,
                        missing: Vec::new(),
                    })
                }
                None => missing.push(keeper),
            }
        }
        Ok(Answer {
            value: Vec::new(),
            missing,
        })
    }

    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        let g = self.exchange.ask(None, Query::ChannelCounts).await?;
        let mut merged: BTreeMap<ChannelName, (usize, usize)> = BTreeMap::new();
        for (_, reply) in g.replies {
            if let Reply::Counts { counts } = reply {
                for (name, members, online) in counts {
                    let e = merged.entry(name).or_default();
                    e.0 += members;
                    e.1 += online;
                }
            }
        }
        let value = merged
            .into_iter()
            .map(|(name, (members, online))| ChannelInfo {
                name,
                members,
                online,
            })
            .collect();
        Ok(Answer {
            value,
            missing: g.missing,
        })
    }

    async fn ping(&self) -> Result<()> {
        self.exchange.broker().ping().await
    }

    /// A barrier through the feed: every message published anywhere before it (another
    /// node's new connection included) is in this instance's view once it is read back.
    async fn catch_up(&self) -> Result<()> {
        self.exchange.barrier(&self.exchange).await
    }
}
