//! [`RedisPresenceStore`]: presence and channel membership in Redis, with node leases.
//!
//! Every write that touches several keys runs in one Lua script (`presence.lua`, which also
//! documents the key layout), so it is atomic. Reads of a single key use plain commands.

use std::time::Duration;

use async_trait::async_trait;
use fred::{
    clients::Pool,
    interfaces::{ClientLike, HashesInterface, SetsInterface},
    types::Value,
};
use impush_core::{
    envelope::now_ms, AddedConnection, Answer, ChannelInfo, ChannelName, ClientId, ConnectionId,
    DroppedConnection, NodeId, NodeLease, NodeState, NodeSync, PresenceStore, Result,
};

use crate::{
    client,
    config::RedisConfig,
    error::{core, Error},
    script::Script,
};

const SCRIPT: &str = include_str!("presence.lua");

/// A [`PresenceStore`] in Redis, shared by every node and helper of a cluster.
#[derive(Debug)]
pub struct RedisPresenceStore {
    pool: Pool,
    prefix: String,
    script: Script,
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

fn parse<T: std::str::FromStr<Err = impush_core::Error>>(op: &'static str, s: String) -> Result<T> {
    s.parse().map_err(|_| {
        Error::Reply {
            op,
            detail: format!("`{s}` is not a valid id"),
        }
        .into()
    })
}

fn parse_sorted<T>(op: &'static str, items: Vec<String>) -> Result<Vec<T>>
where
    T: std::str::FromStr<Err = impush_core::Error> + Ord,
{
    let mut v = items
        .into_iter()
        .map(|s| parse(op, s))
        .collect::<Result<Vec<T>>>()?;
    v.sort();
    Ok(v)
}

impl RedisPresenceStore {
    /// Connects and loads the presence script. Keys live under `{prefix}:`.
    ///
    /// # Errors
    /// `Error::Unavailable` when Redis cannot be reached.
    pub async fn connect(cfg: &RedisConfig, prefix: &str) -> Result<Self> {
        let pool = client::pool(cfg).await?;
        let script = Script::load(&pool, SCRIPT, prefix).await?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            script,
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    async fn run(&self, op: &'static str, args: Vec<String>) -> Result<Value> {
        self.script.run(&self.pool, op, args).await
    }

    async fn run_as<T: fred::types::FromValue>(
        &self,
        op: &'static str,
        args: Vec<String>,
    ) -> Result<T> {
        self.script.run_as(&self.pool, op, args).await
    }

    async fn members(&self, op: &'static str, key: String) -> Result<Vec<String>> {
        self.pool.smembers(key).await.map_err(core(op))
    }
}

/// Turns flat `client, connection, offline` triples of one node into dropped connections, the
/// last one of each client that went offline marked `last`.
fn dropped_of(node: &NodeId, flat: &[String]) -> Result<Vec<DroppedConnection>> {
    let mut v = Vec::with_capacity(flat.len() / 3);
    for t in flat.chunks_exact(3) {
        v.push((
            parse::<ClientId>("reap", t[0].clone())?,
            parse::<ConnectionId>("reap", t[1].clone())?,
            t[2] == "1",
        ));
    }
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let last = v[i].2 && (i + 1 == n || v[i + 1].0 != v[i].0);
        out.push(DroppedConnection {
            node: node.clone(),
            client: v[i].0.clone(),
            connection: v[i].1.clone(),
            last,
        });
    }
    Ok(out)
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn connect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
    ) -> Result<usize> {
        let args = vec![node.to_string(), client.to_string(), connection.to_string()];
        self.run_as::<u64>("connect", args)
            .await
            .map(|n| n as usize)
    }

    async fn disconnect(
        &self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        clear_channels: bool,
    ) -> Result<usize> {
        let args = vec![
            node.to_string(),
            client.to_string(),
            connection.to_string(),
            flag(clear_channels),
        ];
        self.run_as::<u64>("disconnect", args)
            .await
            .map(|n| n as usize)
    }

    async fn clear_node(
        &self,
        node: &NodeId,
        clear_channels: bool,
    ) -> Result<Vec<DroppedConnection>> {
        let flat: Vec<String> = self
            .run_as("clear_node", vec![node.to_string(), flag(clear_channels)])
            .await?;
        dropped_of(node, &flat)
    }

    async fn sync_node(
        &self,
        node: &NodeId,
        connections: &[(ClientId, ConnectionId)],
        clear_channels: bool,
    ) -> Result<NodeSync> {
        let mut sorted: Vec<&(ClientId, ConnectionId)> = connections.iter().collect();
        sorted.sort();
        let mut args = Vec::with_capacity(2 + 2 * sorted.len());
        args.push(node.to_string());
        args.push(flag(clear_channels));
        for (client, connection) in sorted {
            args.push(client.to_string());
            args.push(connection.to_string());
        }
        let (removed, added): (Vec<String>, Vec<String>) = self.run_as("sync_node", args).await?;
        let mut added = added
            .chunks_exact(3)
            .map(|t| {
                Ok(AddedConnection {
                    client: parse("sync_node", t[0].clone())?,
                    connection: parse("sync_node", t[1].clone())?,
                    first: t[2] == "1",
                })
            })
            .collect::<Result<Vec<_>>>()?;
        added.sort_by(|a, b| (&a.client, &a.connection).cmp(&(&b.client, &b.connection)));
        Ok(NodeSync {
            removed: dropped_of(node, &removed)?,
            added,
        })
    }

    async fn heartbeat(&self, node: &NodeId, lease: Duration, state: NodeState) -> Result<bool> {
        let now = now_ms();
        let expiry = now.saturating_add(lease.as_millis() as u64);
        let state = match state {
            NodeState::Live => "live",
            NodeState::Draining => "draining",
        };
        let known: i64 = self
            .run_as(
                "heartbeat",
                vec![
                    node.to_string(),
                    now.to_string(),
                    expiry.to_string(),
                    state.to_owned(),
                ],
            )
            .await?;
        Ok(known == 1)
    }

    async fn live_nodes(&self) -> Result<Vec<NodeLease>> {
        let flat: Vec<String> = self
            .run_as("live_nodes", vec![now_ms().to_string()])
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            out.push(NodeLease {
                node: parse("live_nodes", pair[0].clone())?,
                state: if pair[1] == "draining" {
                    NodeState::Draining
                } else {
                    NodeState::Live
                },
            });
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    async fn reap_expired(&self, clear_channels: bool) -> Result<Vec<DroppedConnection>> {
        let flat: Vec<String> = self
            .run_as("reap", vec![now_ms().to_string(), flag(clear_channels)])
            .await?;
        // Group the node, client, connection, offline quadruples by node, in node order.
        let mut by_node: Vec<(NodeId, Vec<String>)> = Vec::new();
        for q in flat.chunks_exact(4) {
            let node: NodeId = parse("reap", q[0].clone())?;
            match by_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, v)) => v.extend_from_slice(&q[1..]),
                None => by_node.push((node, q[1..].to_vec())),
            }
        }
        by_node.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (node, flat) in &by_node {
            out.extend(dropped_of(node, flat)?);
        }
        Ok(out)
    }

    async fn connections(&self, client: &ClientId) -> Result<Answer<usize>> {
        let n: u64 = self
            .pool
            .hlen(self.key("conns", client))
            .await
            .map_err(core("HLEN"))?;
        Ok(Answer::complete(n as usize))
    }

    async fn online(&self, clients: &[ClientId]) -> Result<Answer<Vec<bool>>> {
        if clients.is_empty() {
            return Ok(Answer::complete(Vec::new()));
        }
        let flags: Vec<i64> = self
            .run_as("online", clients.iter().map(ToString::to_string).collect())
            .await?;
        Ok(Answer::complete(
            flags.into_iter().map(|f| f == 1).collect(),
        ))
    }

    async fn online_clients(&self) -> Result<Answer<Vec<ClientId>>> {
        let items = self
            .members("SMEMBERS online", format!("{}:online", self.prefix))
            .await?;
        parse_sorted("online_clients", items).map(Answer::complete)
    }

    async fn leave_all_if_offline(&self, client: &ClientId) -> Result<bool> {
        let left: i64 = self
            .run_as("leave_if_offline", vec![client.to_string()])
            .await?;
        Ok(left == 1)
    }

    async fn join_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        let mut args = vec![channel.to_string()];
        args.extend(clients.iter().map(ToString::to_string));
        self.run("join", args).await.map(drop)
    }

    async fn leave_channel(&self, channel: &ChannelName, clients: &[ClientId]) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        let mut args = vec![channel.to_string()];
        args.extend(clients.iter().map(ToString::to_string));
        self.run("leave", args).await.map(drop)
    }

    async fn channel_members(&self, channel: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        let items = self
            .members("SMEMBERS chan", self.key("chan", channel))
            .await?;
        parse_sorted("channel_members", items).map(Answer::complete)
    }

    async fn channel_online(&self, channel: &ChannelName) -> Result<Answer<usize>> {
        self.run_as::<u64>("channel_online", vec![channel.to_string()])
            .await
            .map(|n| Answer::complete(n as usize))
    }

    async fn client_channels(&self, client: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        let items = self
            .members("SMEMBERS cchans", self.key("cchans", client))
            .await?;
        parse_sorted("client_channels", items).map(Answer::complete)
    }

    async fn channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        let flat: Vec<Value> = self.run_as("channels", Vec::new()).await?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        for t in flat.chunks_exact(3) {
            let name: String = t[0].clone().convert().map_err(core("channels"))?;
            let members: u64 = t[1].clone().convert().map_err(core("channels"))?;
            let online: u64 = t[2].clone().convert().map_err(core("channels"))?;
            out.push(ChannelInfo {
                name: parse("channels", name)?,
                members: members as usize,
                online: online as usize,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Answer::complete(out))
    }

    async fn ping(&self) -> Result<()> {
        self.pool
            .ping::<Value>(None)
            .await
            .map(drop)
            .map_err(core("PING"))
    }
}
