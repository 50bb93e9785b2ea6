//! The state machine's rules, without a broker: messages go in, the view, the memberships and
//! what to publish come out. Time is passed in, so leases are tested at chosen instants.
//!
//! Here: the helpers; `feed` tests what messages and requests do, `own` what the node's own
//! operations do (reaping, clearing, syncing), `holders` who holds memberships as nodes come
//! and go, `handover` how memberships reach their holders.

mod feed;
mod handover;
mod holders;
mod own;

use std::{sync::Arc, time::Duration};

use impush_core::{ChannelName, ClientId, Cluster, ConnectionId, NodeEntry, NodeId, Partitioner};
use tokio::time::Instant;

use super::Machine;
use crate::wire::{Query, Reply, Wire};

const LEASE: Duration = Duration::from_secs(10);
/// The wall clock (µs) every test machine starts at.
const WALL: u64 = 1_700_000_000_000_000;

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
    Machine::new(Some(n(me)), cluster(), LEASE, t0, WALL)
}

fn helper(t0: Instant) -> Machine {
    Machine::new(None, cluster(), LEASE, t0, WALL)
}

fn connected(node: &str, client: &str, conn: &str) -> Wire {
    Wire::Connected {
        node: n(node),
        client: c(client),
        connection: k(conn),
    }
}

fn disconnected(node: &str, client: &str, conn: &str, cleared: bool) -> Wire {
    Wire::Disconnected {
        node: n(node),
        client: c(client),
        connection: k(conn),
        cleared,
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

/// A join of `clients` asked of `m` at its start, as a requester with `m`'s view would.
fn join(m: &mut Machine, channel: &str, clients: &[&str]) {
    let at = m.started;
    join_at(m, channel, clients, at);
}

fn join_at(m: &mut Machine, channel: &str, clients: &[&str], at: Instant) {
    let query = Query::Join {
        channel: ch(channel),
        clients: clients.iter().map(|s| c(s)).collect(),
        at: m.stamp(at),
        view: m.view_digest(),
    };
    let (reply, publish) = m.answer(query, at);
    assert!(matches!(reply, Some(Reply::Done)) && publish.is_none());
}

fn channels_of(m: &mut Machine, client: &str) -> Vec<ChannelName> {
    let at = m.started;
    match m.answer(Query::ClientChannels { client: c(client) }, at).0 {
        Some(Reply::Channels { channels }) => channels,
        other => panic!("{other:?}"),
    }
}

/// Every machine in `ms` hears the heartbeats of `alive` at `at` (its own as an echo).
fn beat_all(ms: &mut [&mut Machine], alive: &[&str], at: Instant) {
    for m in ms.iter_mut() {
        for a in alive {
            if m.me.as_ref() == Some(&n(a)) {
                m.heartbeat_sent(&n(a), LEASE, at);
            }
            m.apply(beat(a), at);
        }
    }
}

/// `requester` sends a change to each holder it routes `clients` to, among `nodes` (a
/// holder missing from `nodes` is dead and gets nothing).
fn change_via(
    requester: &mut Machine,
    nodes: &mut [&mut Machine],
    channel: &str,
    clients: &[&str],
    join: bool,
    at: Instant,
) {
    let clients: Vec<ClientId> = clients.iter().map(|s| c(s)).collect();
    let (stamp, view) = (requester.stamp(at), requester.view_digest());
    for route in requester.route(&clients, at) {
        let Some(m) = nodes
            .iter_mut()
            .find(|m| m.me.as_ref() == Some(&route.node))
        else {
            continue;
        };
        let (channel, clients) = (ch(channel), route.clients);
        let query = if join {
            Query::Join {
                channel,
                clients,
                at: stamp,
                view,
            }
        } else {
            Query::Leave {
                channel,
                clients,
                at: stamp,
                view,
            }
        };
        assert!(matches!(m.answer(query, at).0, Some(Reply::Done)));
    }
}

/// Runs `from`'s hand-over until it has nothing left to do, delivering its copies to the
/// machines in `to` (a target not among them fails); returns how many copies arrived.
fn hand_over(from: &mut Machine, to: &mut [&mut Machine], at: Instant) -> usize {
    let mut copied = 0;
    for _ in 0..100 {
        let Some(mut batch) = from.next_handover(at) else {
            return copied;
        };
        let view = from.view_digest();
        let mut failed = std::collections::BTreeSet::new();
        for (node, records) in std::mem::take(&mut batch.sends) {
            match to.iter_mut().find(|m| m.me.as_ref() == Some(&node)) {
                Some(m) => {
                    copied += records.len();
                    let (reply, _) = m.answer(Query::Copies { records, view }, at);
                    assert!(matches!(reply, Some(Reply::Done)));
                }
                None => {
                    failed.insert(node);
                }
            }
        }
        from.handed_over(batch, &failed, at);
    }
    panic!("the hand-over does not end");
}

fn counts(m: &mut Machine, at: Instant) -> Vec<(ChannelName, usize, usize)> {
    match m.answer(Query::ChannelCounts, at).0 {
        Some(Reply::Counts { counts }) => counts,
        other => panic!("{other:?}"),
    }
}

fn members(m: &mut Machine, channel: &str, at: Instant) -> Vec<ClientId> {
    match m
        .answer(
            Query::ChannelMembers {
                channel: ch(channel),
            },
            at,
        )
        .0
    {
        Some(Reply::Clients { clients }) => clients,
        other => panic!("{other:?}"),
    }
}
