//! What messages read from the feed and requests do to the state machine.

use super::*;

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
        seq: 0,
    };
    m.apply(state, t0);
    assert_eq!(m.view().online_clients(), vec![c("n3-b")]);
}

/// A node's full state is taken under its lock and published afterwards, by another task
/// than its changes: it can reach the feed after a change made after it was taken. Applied
/// then, it would undo that change (the connection vanishes from every view, and if the node
/// dies before its next heartbeat shows the drift, nobody ever announces it gone: the Kafka
/// failover case lost one offline event of 1,500 that way). It is dropped; a newer state is
/// applied, and still corrects what the deltas got wrong.
#[test]
fn a_state_older_than_a_change_already_read_does_not_undo_it() {
    let t0 = Instant::now();
    let mut n2 = node("n2", t0).counting_from(1_000);
    let mut m = node("n1", t0);
    let (_, first) = n2.connect(&n("n2"), &c("n2-a"), &k("1"), t0);
    m.apply(first, t0);
    let late = n2.state_message().unwrap(); // taken now, published after the next change
    let (_, second) = n2.connect(&n("n2"), &c("n2-b"), &k("2"), t0);
    m.apply(second, t0);
    m.apply(late, t0);
    assert_eq!(
        m.view().connections_of(&c("n2-b")),
        1,
        "a state older than the connect undid it"
    );
    assert_eq!(m.view().connections_of(&c("n2-a")), 1);

    // A state taken after every change this view applied replaces the node's view: a
    // connection it does not hold (here a delta of an older run, counter 0) goes.
    m.apply(connected("n2", "n2-ghost", "9"), t0);
    m.apply(n2.state_message().unwrap(), t0);
    assert_eq!(m.view().connections_of(&c("n2-ghost")), 0);
    assert_eq!(m.view().connections_of(&c("n2-b")), 1);

    // A disconnect read before a late state that still holds the connection stays applied.
    let late = n2.state_message().unwrap();
    let (_, gone) = n2.disconnect(&n("n2"), &c("n2-a"), &k("1"), false, t0);
    m.apply(gone, t0);
    m.apply(late, t0);
    assert_eq!(
        m.view().connections_of(&c("n2-a")),
        0,
        "a late state brought back a closed connection"
    );
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
            seq: 0,
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
            seq: 0,
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
