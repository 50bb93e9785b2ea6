//! The state machine's rules, without a broker: messages go in, the view, the memberships and
//! what to publish come out. Time is passed in, so leases are tested at chosen instants.
//!
//! Here: the helpers; `feed` tests what messages and requests do, `own` what the node's own
//! operations do (reaping, clearing, syncing) and who owns memberships.

mod feed;
mod own;

use std::{sync::Arc, time::Duration};

use impush_core::{ChannelName, ClientId, Cluster, ConnectionId, NodeEntry, NodeId, Partitioner};
use tokio::time::Instant;

use super::Machine;
use crate::wire::{Query, Reply, Wire};

const LEASE: Duration = Duration::from_secs(10);

/// Owner by name: client `n2-x` belongs to node `n2`, so each test says who owns whom.
#[derive(Debug)]
struct ByPrefix;

impl Partitioner for ByPrefix {
    fn node_for(&self, client: &ClientId, nodes: &[NodeId]) -> usize {
        let prefix = client.as_str().split('-').next().unwrap_or_default();
        nodes.iter().position(|n| n.as_str() == prefix).unwrap()
    }
}

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}
fn c(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}
fn k(s: &str) -> ConnectionId {
    ConnectionId::new(s).unwrap()
}
fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}
fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

fn cluster() -> Cluster {
    let nodes = ["n1", "n2", "n3"]
        .iter()
        .map(|id| NodeEntry {
            id: n(id),
            url: format!("ws://{id}:1"),
        })
        .collect();
    Cluster::with_partitioner(nodes, Arc::new(ByPrefix)).unwrap()
}

fn node(me: &str, t0: Instant) -> Machine {
    Machine::new(Some(n(me)), cluster(), LEASE, t0)
}

fn connected(node: &str, client: &str, conn: &str) -> Wire {
    Wire::Connected {
        node: n(node),
        client: c(client),
        connection: k(conn),
        seq: 0,
    }
}

fn disconnected(node: &str, client: &str, conn: &str, cleared: bool) -> Wire {
    Wire::Disconnected {
        node: n(node),
        client: c(client),
        connection: k(conn),
        cleared,
        seq: 0,
    }
}

/// A heartbeat of `node` saying it holds nothing (its digest of no connections is 0).
fn beat(node: &str) -> Wire {
    Wire::Heartbeat {
        node: n(node),
        lease_ms: LEASE.as_millis() as u64,
        count: 0,
        digest: 0,
        draining: false,
    }
}

/// `me` heartbeats at `t0` and its own heartbeats come back every 5 s until `until`.
fn echo_until(m: &mut Machine, me: &str, t0: Instant, until: u64) {
    m.heartbeat_sent(&n(me), LEASE, t0);
    for s in (0..=until).step_by(5) {
        m.apply(beat(me), secs(t0, s));
    }
}

fn join(m: &mut Machine, channel: &str, clients: &[&str]) {
    let clients = clients.iter().map(|s| c(s)).collect();
    let (reply, publish) = m.answer(Query::Join {
        channel: ch(channel),
        clients,
    });
    assert!(matches!(reply, Reply::Done) && publish.is_none());
}

fn channels_of(m: &mut Machine, client: &str) -> Vec<ChannelName> {
    match m.answer(Query::ClientChannels { client: c(client) }).0 {
        Reply::Channels { channels } => channels,
        other => panic!("{other:?}"),
    }
}
