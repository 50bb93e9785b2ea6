//! What the node's own operations do (reaping, a clear, a sync) and who owns memberships.

use std::collections::BTreeSet;

use impush_core::NodeStatus;

use super::*;

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

/// Each client's memberships are kept by its home and the next node (`ByPrefix`: `n1-x` by
/// n1 and n2); writes go to both unless the view counts one dead, reads to the first alive.
#[test]
fn memberships_are_kept_by_two_nodes_per_client() {
    let t0 = Instant::now();
    let m = node("n1", t0);
    assert_eq!(m.keepers(&c("n3-a")), vec![n("n3"), n("n1")]);
    assert_eq!(m.memberships_owner(&c("n2-a")), n("n2"));
    let clients = [c("n1-a"), c("n3-b"), c("n1-c")];
    let groups = m.by_keeper(&clients);
    assert_eq!(
        groups.keys().collect::<Vec<_>>(),
        vec![&n("n1"), &n("n2"), &n("n3")]
    );
    assert_eq!(groups[&n("n1")], vec![c("n1-a"), c("n3-b"), c("n1-c")]);
    assert_eq!(groups[&n("n2")], vec![c("n1-a"), c("n1-c")]);
    assert_eq!(groups[&n("n3")], vec![c("n3-b")]);

    // n1 dead: its clients' writes go to n2 alone, which answers for them.
    m.cluster.set_status(&n("n1"), NodeStatus::Dead);
    let groups = m.by_keeper(&[c("n1-a")]);
    assert_eq!(groups.keys().collect::<Vec<_>>(), vec![&n("n2")]);
    assert_eq!(m.memberships_owner(&c("n1-a")), n("n2"));
    // Both dead: the write goes to the home, whose silence fails it.
    m.cluster.set_status(&n("n2"), NodeStatus::Dead);
    assert_eq!(
        m.by_keeper(&[c("n1-a")]).keys().collect::<Vec<_>>(),
        vec![&n("n1")]
    );
    assert_eq!(m.memberships_owner(&c("n1-a")), n("n1"));
}

/// A restarted keeper takes the other keeper's copy of what both keep: joins it missed come
/// in, memberships that ended meanwhile go, and clients the other does not keep with it are
/// left alone.
#[test]
fn a_keeper_takes_the_other_keepers_copy_of_what_both_keep() {
    let t0 = Instant::now();
    let mut alive = node("n2", t0);
    join(&mut alive, "room", &["n1-a", "n1-b", "n2-c"]);
    join(&mut alive, "hall", &["n1-a"]);
    let mut back = node("n1", t0);
    // What n1 had before it was away: n1-b in "old" (it left since), n3-d (kept with n3).
    join(&mut back, "old", &["n1-b", "n3-d"]);
    let kept = alive.kept_with(&n("n1"));
    assert_eq!(
        kept.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        vec!["n1-a", "n1-b"],
        "only the clients both keep ({kept:?})"
    );
    back.take_kept(&n("n2"), kept);
    assert_eq!(channels_of(&mut back, "n1-a"), vec![ch("hall"), ch("room")]);
    assert_eq!(channels_of(&mut back, "n1-b"), vec![ch("room")]);
    assert_eq!(channels_of(&mut back, "n3-d"), vec![ch("old")]);
    assert!(
        channels_of(&mut back, "n2-c").is_empty(),
        "not n1's to keep"
    );
}

/// Channel counts come from the node answering for each client, so a client kept twice is
/// counted once.
#[test]
fn counts_come_from_the_first_alive_keeper_only() {
    let t0 = Instant::now();
    let mut n1 = node("n1", t0);
    let mut n2 = node("n2", t0);
    for m in [&mut n1, &mut n2] {
        join(m, "room", &["n1-a"]);
    }
    let counts = |m: &mut Machine| match m.answer(Query::ChannelCounts).0 {
        Reply::Counts { counts } => counts,
        other => panic!("{other:?}"),
    };
    assert_eq!(counts(&mut n1), vec![(ch("room"), 1, 0)]);
    assert!(counts(&mut n2).is_empty());
    n2.cluster.set_status(&n("n1"), NodeStatus::Dead);
    assert_eq!(counts(&mut n2), vec![(ch("room"), 1, 0)]);
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
    m.disconnect(&n("n1"), &c("n2-b"), &k("3"), true, t0);
    assert_eq!(channels_of(&mut m, "n2-b"), vec![ch("room")]);
}

#[test]
fn a_connection_after_its_clients_node_died_is_its_first_though_not_yet_reaped() {
    let t0 = Instant::now();
    let mut n1 = node("n1", t0);
    echo_until(&mut n1, "n1", t0, 15);
    n1.apply(beat("n3"), t0);
    n1.apply(connected("n3", "n1-a", "1"), t0);
    // Within n3's lease the old connection counts: the new one is not the first.
    let (count, _) = n1.connect(&n("n1"), &c("n1-a"), &k("2"), secs(t0, 5));
    assert_eq!(count, 2);
    let (left, _) = n1.disconnect(&n("n1"), &c("n1-a"), &k("2"), false, secs(t0, 5));
    assert_eq!(left, 1);
    // n3's lease ran out (t0 + 10 s) and nobody reaped it yet: its connection ends with it,
    // so the client's new connection is its first and closing it leaves none.
    let (count, _) = n1.connect(&n("n1"), &c("n1-a"), &k("3"), secs(t0, 12));
    assert_eq!(count, 1, "the dead node's connection is not counted");
    let (left, _) = n1.disconnect(&n("n1"), &c("n1-a"), &k("3"), false, secs(t0, 12));
    assert_eq!(left, 0);
}
