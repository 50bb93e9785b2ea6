//! The state machine's rules, without a broker: messages go in, the view, the memberships and
//! what to publish come out. Time is passed in, so leases are tested at chosen instants.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

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

#[test]
fn deltas_and_states_of_other_nodes_update_the_view() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    m.apply(connected("n2", "n2-a", "1"), t0);
    m.apply(connected("n3", "n2-a", "2"), t0);
    assert_eq!(m.view().connections_of(&c("n2-a")), 2);
    m.apply(disconnected("n2", "n2-a", "1", false), t0);
    assert_eq!(m.view().connections_of(&c("n2-a")), 1);
    let state = Wire::NodeState {
        node: n("n3"),
        connections: vec![(c("n3-b"), k("3"))],
    };
    m.apply(state, t0);
    assert_eq!(m.view().online_clients(), vec![c("n3-b")]);
}

#[test]
fn a_nodes_own_deltas_read_back_change_nothing() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    let (count, msg) = m.connect(&n("n1"), &c("n1-a"), &k("1"), t0);
    assert_eq!(count, 1);
    m.apply(msg, t0);
    m.apply(disconnected("n1", "n1-a", "1", true), t0);
    m.apply(
        Wire::NodeState {
            node: n("n1"),
            connections: vec![],
        },
        t0,
    );
    assert_eq!(m.view().connections_of(&c("n1-a")), 1);
}

#[test]
fn a_heartbeat_whose_digest_differs_asks_for_the_state_once_a_lease() {
    let t0 = Instant::now();
    let mut n2 = node("n2", t0);
    let mut m = node("n1", t0);
    n2.connect(&n("n2"), &c("n2-a"), &k("1"), t0);
    m.apply(n2.state_message().unwrap(), t0);
    let hb = n2.heartbeat_message(&n("n2"), LEASE);
    assert_eq!(m.apply(hb, t0), None, "the view agrees with the node");
    // A delta the view never got: the next heartbeat shows the drift.
    n2.connect(&n("n2"), &c("n2-b"), &k("2"), t0);
    let hb = n2.heartbeat_message(&n("n2"), LEASE);
    assert_eq!(m.apply(hb.clone(), secs(t0, 1)), Some(n("n2")));
    assert_eq!(
        m.apply(hb.clone(), secs(t0, 5)),
        None,
        "asked within a lease"
    );
    assert_eq!(m.apply(hb.clone(), secs(t0, 12)), Some(n("n2")));
    m.apply(n2.state_message().unwrap(), secs(t0, 13));
    assert_eq!(m.apply(hb, secs(t0, 30)), None, "the state fixed the view");
}

#[test]
fn a_node_whose_state_never_came_is_asked_even_when_its_digest_matches() {
    let t0 = Instant::now();
    let mut m = Machine::new(None, cluster(), LEASE, t0);
    let hb = Wire::Heartbeat {
        node: n("n2"),
        lease_ms: 50,
        count: 0,
        digest: 0,
        draining: false,
    };
    assert_eq!(m.apply(hb.clone(), t0), Some(n("n2")));
    // A short lease still waits at least 200 ms between two asks.
    let at = |ms| t0 + Duration::from_millis(ms);
    assert_eq!(m.apply(hb.clone(), at(100)), None);
    assert_eq!(m.apply(hb, at(250)), Some(n("n2")));
}

#[test]
fn unsynced_names_live_or_starting_nodes_whose_state_never_came() {
    let t0 = Instant::now();
    let mut helper = Machine::new(None, cluster(), LEASE, t0);
    assert_eq!(helper.unsynced(t0), vec![n("n1"), n("n2"), n("n3")]);
    helper.apply(
        Wire::NodeState {
            node: n("n1"),
            connections: vec![],
        },
        t0,
    );
    helper.apply(beat("n2"), secs(t0, 5));
    assert_eq!(helper.unsynced(secs(t0, 1)), vec![n("n2"), n("n3")]);
    // Past a lease: n3 never spoke (not starting any more), n2 is alive and still unsynced.
    assert_eq!(helper.unsynced(secs(t0, 12)), vec![n("n2")]);
    assert_eq!(helper.unsynced(secs(t0, 30)), Vec::<NodeId>::new());
    let m = node("n1", t0);
    assert_eq!(
        m.unsynced(t0),
        vec![n("n2"), n("n3")],
        "a node never waits for itself"
    );
}

#[test]
fn requests_skip_nodes_known_to_be_dead_and_only_the_addressed_node_answers() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    m.apply(beat("n2"), t0);
    let (wait, dead) = m.split_dead(vec![n("n1"), n("n2"), n("n3")], secs(t0, 20));
    assert_eq!((wait, dead), (vec![n("n1"), n("n3")], vec![n("n2")]));
    assert_eq!(m.answerer(None), Some(n("n1")));
    assert_eq!(m.answerer(Some(&n("n1"))), Some(n("n1")));
    assert_eq!(m.answerer(Some(&n("n2"))), None);
    assert_eq!(
        Machine::new(None, cluster(), LEASE, t0).answerer(None),
        None
    );
}

#[test]
fn only_the_lowest_live_node_reaps_and_it_drops_what_the_dead_node_held() {
    let t0 = Instant::now();
    let (mut n1, mut n2) = (node("n1", t0), node("n2", t0));
    for (m, me) in [(&mut n1, "n1"), (&mut n2, "n2")] {
        echo_until(m, me, t0, 15);
        m.apply(connected("n3", "n1-a", "1"), t0);
        m.apply(connected("n3", "n2-b", "2"), t0);
        m.apply(connected("n2", "n2-b", "3"), t0);
        m.apply(beat("n3"), t0);
        m.apply(beat(if me == "n1" { "n2" } else { "n1" }), secs(t0, 15));
    }
    let at = secs(t0, 16); // n3's lease ran out at t0 + 10 s
    assert!(
        n2.reap(&n("n2"), true, at).is_empty(),
        "n1 is alive and lower"
    );
    let reaped = n1.reap(&n("n1"), true, at);
    assert_eq!(reaped.len(), 1);
    let (dead, dropped) = &reaped[0];
    assert_eq!(dead, &n("n3"));
    let lasts: Vec<(&str, bool)> = dropped
        .iter()
        .map(|d| (d.client.as_str(), d.last))
        .collect();
    assert_eq!(
        lasts,
        vec![("n1-a", true), ("n2-b", false)],
        "n2-b is still on n2"
    );
    assert_eq!(n1.view().online_clients(), vec![c("n2-b")]);
    assert!(n1.reap(&n("n1"), true, at).is_empty(), "reaped once");
}

#[test]
fn the_next_node_reaps_when_the_lowest_is_dead_too() {
    let t0 = Instant::now();
    let mut n2 = node("n2", t0);
    echo_until(&mut n2, "n2", t0, 15);
    n2.apply(beat("n1"), t0);
    n2.apply(connected("n1", "n1-a", "1"), t0);
    let reaped = n2.reap(&n("n2"), false, secs(t0, 16));
    assert_eq!(
        reaped.iter().map(|r| &r.0).collect::<Vec<_>>(),
        vec![&n("n1")]
    );
}

#[test]
fn a_node_reaps_only_after_its_own_heartbeats_came_back_for_a_lease() {
    let t0 = Instant::now();
    let setup = |m: &mut Machine| {
        m.heartbeat_sent(&n("n1"), LEASE, t0);
        m.apply(beat("n2"), t0);
        m.apply(connected("n2", "n2-a", "1"), t0);
    };
    // Never heard its own heartbeat: no judgement at all.
    let mut m = node("n1", t0);
    setup(&mut m);
    assert!(m.reap(&n("n1"), true, secs(t0, 30)).is_empty());
    // Echoing since 4 s only (the feed was away for longer than a lease before).
    let mut m = node("n1", t0);
    setup(&mut m);
    m.apply(beat("n1"), t0);
    m.apply(beat("n1"), secs(t0, 12));
    assert!(m.reap(&n("n1"), true, secs(t0, 16)).is_empty());
    // Echoing without a gap for a lease, but the last echo is older than a lease: frozen.
    m.apply(beat("n1"), secs(t0, 17));
    m.apply(beat("n1"), secs(t0, 22));
    assert!(m.reap(&n("n1"), true, secs(t0, 33)).is_empty());
    // Back after the gap: judges again only once its heartbeats came back for a lease.
    m.apply(beat("n1"), secs(t0, 34));
    m.apply(beat("n1"), secs(t0, 39));
    assert!(m.reap(&n("n1"), true, secs(t0, 40)).is_empty());
    m.apply(beat("n1"), secs(t0, 44));
    assert_eq!(m.reap(&n("n1"), true, secs(t0, 45)).len(), 1);
}

#[test]
fn a_node_reaped_while_alive_forgets_and_then_announces_its_connections_again() {
    let t0 = Instant::now();
    let me = n("n2");
    let mut m = node("n2", t0);
    m.connect(&me, &c("n2-a"), &k("1"), t0);
    m.connect(&me, &c("n2-b"), &k("2"), t0);
    assert!(
        !m.heartbeat_sent(&me, LEASE, t0),
        "first heartbeat: not known yet"
    );
    assert!(m.heartbeat_sent(&me, LEASE, secs(t0, 3)));
    let reaped = Wire::Dropped {
        node: me.clone(),
        by: n("n1"),
        dropped: m.view().mark_last(&me, vec![(c("n2-a"), k("1"))]),
        clear: false,
    };
    m.apply(reaped, secs(t0, 4));
    assert_eq!(m.view().connections_of(&c("n2-a")), 0);
    assert!(
        !m.heartbeat_sent(&me, LEASE, secs(t0, 6)),
        "tells the node to register again"
    );
    let want = [(c("n2-a"), k("1")), (c("n2-b"), k("2"))];
    let (sync, msgs) = m.sync(&me, &want, true, secs(t0, 6));
    assert_eq!(sync.added.len(), 1);
    assert_eq!(
        (sync.added[0].connection.as_str(), sync.added[0].first),
        ("1", true)
    );
    assert!(sync.removed.is_empty());
    assert!(
        matches!(&msgs[..], [Wire::NodeState { connections, .. }] if connections == &want),
        "{msgs:?}"
    );
    assert!(m.heartbeat_sent(&me, LEASE, secs(t0, 9)));
}

#[test]
fn a_sync_drops_ghosts_and_announces_them_before_the_state() {
    let t0 = Instant::now();
    let me = n("n1");
    let mut m = node("n1", t0);
    m.connect(&me, &c("n1-a"), &k("1"), t0);
    m.connect(&me, &c("n1-b"), &k("2"), t0);
    join(&mut m, "room", &["n1-b"]);
    let (sync, msgs) = m.sync(&me, &[(c("n1-a"), k("1")), (c("n1-c"), k("3"))], true, t0);
    let removed: Vec<(&str, bool)> = sync
        .removed
        .iter()
        .map(|d| (d.client.as_str(), d.last))
        .collect();
    assert_eq!(removed, vec![("n1-b", true)]);
    assert_eq!(sync.added.len(), 1);
    assert!(
        matches!(&msgs[..], [Wire::Dropped { by, .. }, Wire::NodeState { connections, .. }]
            if by == &me && connections.len() == 2),
        "{msgs:?}"
    );
    assert!(
        channels_of(&mut m, "n1-b").is_empty(),
        "its last connection went"
    );
}

#[test]
fn a_clear_drops_everything_the_node_held_and_others_forget_it() {
    let t0 = Instant::now();
    let me = n("n1");
    let mut m = node("n1", t0);
    m.connect(&me, &c("n1-a"), &k("1"), t0);
    m.heartbeat_sent(&me, LEASE, t0);
    assert!(m.heartbeat_sent(&me, LEASE, t0), "known before the clear");
    let from_others: BTreeSet<_> = [(c("n2-x"), k("9"))].into();
    let (dropped, msg) = m.clear(&me, from_others, true);
    let ids: Vec<&str> = dropped.iter().map(|d| d.connection.as_str()).collect();
    assert_eq!(ids, vec!["1", "9"]);
    assert!(!m.has_local());
    assert!(
        !m.heartbeat_sent(&me, LEASE, t0),
        "a cleared node is not known"
    );
    let Some(msg) = msg else {
        panic!("a clear with connections is announced")
    };
    let mut other = node("n2", t0);
    other.apply(connected("n1", "n1-a", "1"), t0);
    other.apply(msg, t0);
    assert!(other.view().online_clients().is_empty());
    // A node that has not settled its previous run keeps its (empty) state to itself; a clear
    // settles it, even with nothing to drop.
    let mut fresh = node("n3", t0);
    assert!(fresh.answer(Query::State).1.is_none());
    let (dropped, msg) = fresh.clear(&n("n3"), BTreeSet::new(), false);
    assert!(dropped.is_empty() && msg.is_none());
    assert!(matches!(
        fresh.answer(Query::State).1,
        Some(Wire::NodeState { .. })
    ));
}

#[test]
fn memberships_belong_to_one_owner_per_client() {
    let t0 = Instant::now();
    let m = node("n1", t0);
    assert_eq!(m.memberships_owner(&c("n2-a")), n("n2"));
    let clients = [c("n1-a"), c("n3-b"), c("n1-c")];
    let groups = m.by_owner(&clients);
    assert_eq!(groups.keys().collect::<Vec<_>>(), vec![&n("n1"), &n("n3")]);
    assert_eq!(groups[&n("n1")], vec![c("n1-a"), c("n1-c")]);
}

#[test]
fn the_owner_drops_memberships_once_its_client_has_no_connection_left() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    join(&mut m, "room", &["n1-a", "n2-b"]);
    m.apply(connected("n2", "n1-a", "1"), t0);
    m.apply(connected("n3", "n1-a", "2"), t0);
    m.apply(disconnected("n2", "n1-a", "1", true), t0);
    assert_eq!(
        channels_of(&mut m, "n1-a"),
        vec![ch("room")],
        "still online on n3"
    );
    m.apply(disconnected("n3", "n1-a", "2", true), t0);
    assert!(channels_of(&mut m, "n1-a").is_empty());
    // A membership this node holds but does not own is not its to drop.
    let (_, _) = m.connect(&n("n1"), &c("n2-b"), &k("3"), t0);
    m.disconnect(&n("n1"), &c("n2-b"), &k("3"), true);
    assert_eq!(channels_of(&mut m, "n2-b"), vec![ch("room")]);
}

#[test]
fn queries_answer_from_memberships_and_the_view() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    join(&mut m, "room", &["n1-a", "n1-b"]);
    m.apply(connected("n2", "n1-a", "1"), t0);
    let (reply, _) = m.answer(Query::ChannelCounts);
    assert!(matches!(reply, Reply::Counts { counts } if counts == vec![(ch("room"), 2, 1)]));
    let (reply, _) = m.answer(Query::ConnectionsOf { node: n("n2") });
    assert!(
        matches!(reply, Reply::Connections { connections } if connections == vec![(c("n1-a"), k("1"))])
    );
    m.answer(Query::Leave {
        channel: ch("room"),
        clients: vec![c("n1-a")],
    });
    let (reply, _) = m.answer(Query::ChannelMembers {
        channel: ch("room"),
    });
    assert!(matches!(reply, Reply::Clients { clients } if clients == vec![c("n1-b")]));
}
