//! How memberships reach their holders: both holders get every change, the next owner has
//! them when the owner dies, a restarted owner takes them back, and nobody counts a client
//! twice.

use std::collections::BTreeSet;

use super::*;

/// Three nodes that have heard each other (and themselves) for a lease, until `t0 + 15 s`.
fn three(t0: Instant) -> (Machine, Machine, Machine) {
    let (mut n1, mut n2, mut n3) = (node("n1", t0), node("n2", t0), node("n3", t0));
    for s in (0..=15).step_by(5) {
        beat_all(
            &mut [&mut n1, &mut n2, &mut n3],
            &["n1", "n2", "n3"],
            secs(t0, s),
        );
    }
    (n1, n2, n3)
}

fn total_members(counts: &[Vec<(ChannelName, usize, usize)>], channel: &str) -> usize {
    counts
        .iter()
        .flatten()
        .filter(|(name, _, _)| *name == ch(channel))
        .map(|(_, members, _)| members)
        .sum()
}

#[test]
fn a_client_keeps_its_rooms_across_its_owners_death_and_restart() {
    let t0 = Instant::now();
    let (mut n1, mut n2, mut n3) = three(t0);
    let mut h = helper(t0);
    let at = secs(t0, 15);
    change_via(
        &mut h,
        &mut [&mut n1, &mut n2, &mut n3],
        "room",
        &["n2-a"],
        true,
        at,
    );
    assert_eq!(channels_of(&mut n2, "n2-a"), vec![ch("room")]);
    assert_eq!(channels_of(&mut n3, "n2-a"), vec![ch("room")], "the backup");
    assert!(channels_of(&mut n1, "n2-a").is_empty());
    assert_eq!(hand_over(&mut n2, &mut [&mut n1, &mut n3], at), 0, "placed");

    // n2 is killed: n1 and n3 hear only each other; n3 owns n2-a next and has its rooms.
    for s in [20, 25, 30] {
        beat_all(&mut [&mut n1, &mut n3], &["n1", "n3"], secs(t0, s));
    }
    let at = secs(t0, 30);
    assert_eq!(n3.memberships_owner(&c("n2-a")), n("n3"));
    assert_eq!(channels_of(&mut n3, "n2-a"), vec![ch("room")]);
    // n1 is the new backup: n3 copies the record to it.
    assert_eq!(hand_over(&mut n3, &mut [&mut n1], at), 1);
    assert_eq!(channels_of(&mut n1, "n2-a"), vec![ch("room")]);
    assert_eq!(
        hand_over(&mut n1, &mut [&mut n3], at),
        0,
        "n1 received it placed"
    );
    // Listed once: both holders name it, the owner alone counts it.
    assert_eq!(members(&mut n1, "room", at), vec![c("n2-a")]);
    let all = vec![counts(&mut n1, at), counts(&mut n3, at)];
    assert_eq!(total_members(&all, "room"), 1);
    // A change while n2 is dead goes to n3 and n1.
    let mut h2 = helper(t0);
    for s in [20, 25, 30] {
        beat_all(&mut [&mut h2], &["n1", "n3"], secs(t0, s));
    }
    change_via(
        &mut h2,
        &mut [&mut n1, &mut n3],
        "room2",
        &["n2-a"],
        true,
        at,
    );

    // n2 restarts empty and takes its records back before it serves.
    let t1 = secs(t0, 40);
    let mut n2 = Machine::new(Some(n("n2")), cluster(), LEASE, t1, WALL + 40_000_000);
    n2.filling = true;
    assert_eq!(
        n2.answer(Query::ChannelCounts, t1).0,
        None,
        "no answer while filling"
    );
    for other in [&mut n1, &mut n3] {
        let page = other.answer(
            Query::Reclaim {
                node: n("n2"),
                after: None,
            },
            t1,
        );
        let Some(Reply::Records { records, next }) = page.0 else {
            panic!("{page:?}")
        };
        assert_eq!(next, None);
        n2.take_reclaimed(&records, t1);
    }
    n2.filling = false;
    n2.clear(&n("n2"), BTreeSet::new(), false, t1);
    assert_eq!(channels_of(&mut n2, "n2-a"), vec![ch("room"), ch("room2")]);

    // It is live again: n1 is no holder any more, hands the record over and forgets it.
    for s in [40, 45] {
        beat_all(
            &mut [&mut n1, &mut n2, &mut n3],
            &["n1", "n2", "n3"],
            secs(t0, s),
        );
    }
    let at = secs(t0, 45);
    assert_eq!(n1.memberships_owner(&c("n2-a")), n("n2"));
    assert_eq!(hand_over(&mut n1, &mut [&mut n2, &mut n3], at), 2);
    assert!(!n1.memberships.holds(&c("n2-a")), "n1 forgot it");
    hand_over(&mut n3, &mut [&mut n1, &mut n2], at);
    hand_over(&mut n2, &mut [&mut n1, &mut n3], at);
    for m in [&mut n2, &mut n3] {
        assert_eq!(channels_of(m, "n2-a"), vec![ch("room"), ch("room2")]);
    }
    let all = vec![
        counts(&mut n1, at),
        counts(&mut n2, at),
        counts(&mut n3, at),
    ];
    assert_eq!(total_members(&all, "room2"), 1);
    assert_eq!(
        counts(&mut n2, at),
        vec![(ch("room"), 1, 0), (ch("room2"), 1, 0)]
    );
}

#[test]
fn a_copy_in_flight_does_not_undo_a_later_leave() {
    let t0 = Instant::now();
    let (mut n1, mut n2, mut n3) = three(t0);
    let mut h = helper(t0);
    let at = secs(t0, 15);
    change_via(
        &mut h,
        &mut [&mut n1, &mut n2, &mut n3],
        "room",
        &["n2-a"],
        true,
        at,
    );
    // n3 copies what it has of n2-a (say, to a holder it just saw come back) ...
    let stale = n3.memberships.record(&c("n2-a")).unwrap();
    // ... and the client leaves before that copy arrives at n2.
    change_via(
        &mut h,
        &mut [&mut n1, &mut n2, &mut n3],
        "room",
        &["n2-a"],
        false,
        secs(t0, 16),
    );
    let view = n3.view_digest();
    n2.answer(
        Query::Copies {
            records: vec![stale],
            view,
        },
        secs(t0, 17),
    );
    assert!(channels_of(&mut n2, "n2-a").is_empty());
    assert!(members(&mut n2, "room", secs(t0, 17)).is_empty());
}

#[test]
fn a_change_from_a_requester_that_saw_another_live_set_is_passed_on() {
    let t0 = Instant::now();
    let (mut n1, _n2, mut n3) = three(t0);
    for s in [20, 25, 30] {
        beat_all(&mut [&mut n1, &mut n3], &["n1", "n3"], secs(t0, s));
    }
    let at = secs(t0, 30);
    // A requester that still has n2 alive sends n2-a's join to n2 (dead) and n3 only.
    let join = Query::Join {
        channel: ch("room"),
        clients: vec![c("n2-a")],
        at: n3.stamp(at),
        view: helper(t0).view_digest(),
    };
    n3.answer(join, at);
    assert_eq!(hand_over(&mut n3, &mut [&mut n1], at), 1, "n3 passes it on");
    assert_eq!(channels_of(&mut n1, "n2-a"), vec![ch("room")]);
    // The same change from a requester that sees what n3 sees is not copied again.
    join_at(&mut n3, "room2", &["n2-a"], at);
    assert_eq!(hand_over(&mut n3, &mut [&mut n1], at), 0);
}

#[test]
fn a_copy_that_failed_is_tried_again_at_the_next_tick() {
    let t0 = Instant::now();
    let (mut n1, mut n2, mut n3) = three(t0);
    let mut h = helper(t0);
    let at = secs(t0, 15);
    change_via(
        &mut h,
        &mut [&mut n1, &mut n2, &mut n3],
        "room",
        &["n2-a"],
        true,
        at,
    );
    for s in [20, 25, 30] {
        beat_all(&mut [&mut n1, &mut n3], &["n1", "n3"], secs(t0, s));
    }
    let at = secs(t0, 30);
    assert_eq!(hand_over(&mut n3, &mut [], at), 0, "n1 does not confirm");
    assert!(n3.next_handover(at).is_none(), "not before the tick");
    n3.retry_due();
    assert_eq!(hand_over(&mut n3, &mut [&mut n1], at), 1);
    assert_eq!(channels_of(&mut n1, "n2-a"), vec![ch("room")]);
}

#[test]
fn a_record_that_changed_while_it_was_handed_over_is_kept() {
    let t0 = Instant::now();
    let (mut n1, mut n2, mut n3) = three(t0);
    let at = secs(t0, 15);
    // n1 holds a record of n2-a without being one of its holders (n2, n3).
    join_at(&mut n1, "room", &["n2-a"], at);
    let mut batch = n1.next_handover(at).unwrap();
    let sends = std::mem::take(&mut batch.sends);
    assert_eq!(sends.keys().collect::<Vec<_>>(), vec![&n("n2"), &n("n3")]);
    // A late change arrives at n1 while its copies are out.
    join_at(&mut n1, "room2", &["n2-a"], secs(t0, 16));
    for (node, records) in sends {
        let m = if node == n("n2") { &mut n2 } else { &mut n3 };
        m.answer(Query::Copies { records, view: 0 }, at);
    }
    n1.handed_over(batch, &BTreeSet::new(), secs(t0, 16));
    assert_eq!(channels_of(&mut n1, "n2-a"), vec![ch("room"), ch("room2")]);
    // Its next batch copies the change too, then it lets go.
    hand_over(&mut n1, &mut [&mut n2, &mut n3], secs(t0, 16));
    assert!(!n1.memberships.holds(&c("n2-a")));
    assert_eq!(channels_of(&mut n3, "n2-a"), vec![ch("room"), ch("room2")]);
}

#[test]
fn a_starting_node_gets_its_records_page_by_page() {
    let t0 = Instant::now();
    let mut n3 = node("n3", t0);
    let clients: Vec<String> = (0..3000).map(|i| format!("n2-c{i:04}")).collect();
    let names: Vec<&str> = clients.iter().map(String::as_str).collect();
    join(&mut n3, "room", &names);
    join(&mut n3, "other", &["n3-x", "n1-y"]); // n3-x: (n3, n1); n1-y: (n1, n2)
    let mut got = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (records, next) = n3.reclaim_page(&n("n2"), after.as_ref());
        got.extend(records.into_iter().map(|r| r.client));
        pages += 1;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert!(pages > 1, "{pages}");
    let mut want: Vec<ClientId> = names.iter().map(|s| c(s)).collect();
    want.push(c("n1-y")); // n2 is its backup
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn a_filling_node_answers_changes_but_no_listing() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    m.filling = true;
    join(&mut m, "room", &["n1-a"]);
    for q in [
        Query::ChannelMembers {
            channel: ch("room"),
        },
        Query::ChannelCounts,
        Query::ClientChannels { client: c("n1-a") },
    ] {
        assert_eq!(m.answer(q, t0).0, None);
    }
    m.filling = false;
    assert_eq!(channels_of(&mut m, "n1-a"), vec![ch("room")]);
}
