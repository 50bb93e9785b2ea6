//! Who holds a client's memberships as nodes come and go: the live owner and the next live
//! node, by the instance's own view of heartbeats.

use super::*;

fn holders_of(m: &Machine, client: &str) -> (NodeId, Option<NodeId>) {
    let h = m.holders(&c(client));
    (h.owner, h.backup)
}

#[test]
fn holders_are_the_live_owner_and_the_next_live_node() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    echo_until(&mut m, "n1", t0, 15);
    for s in (0..=15).step_by(5) {
        m.apply(beat("n2"), secs(t0, s));
        m.apply(beat("n3"), secs(t0, s));
    }
    assert_eq!(holders_of(&m, "n2-a"), (n("n2"), Some(n("n3"))));
    assert_eq!(m.memberships_owner(&c("n3-a")), n("n3"));
    // n2 goes silent; n1 has heard its own heartbeats for a lease, so it judges.
    for s in [20, 25, 30] {
        m.apply(beat("n1"), secs(t0, s));
        m.heartbeat_sent(&n("n1"), LEASE, secs(t0, s));
        m.apply(beat("n3"), secs(t0, s));
    }
    assert_eq!(holders_of(&m, "n2-a"), (n("n3"), Some(n("n1"))));
    assert_eq!(holders_of(&m, "n1-a"), (n("n1"), Some(n("n3"))));
    // n2 is back: its clients' holders are what they were.
    m.apply(beat("n2"), secs(t0, 31));
    assert_eq!(holders_of(&m, "n2-a"), (n("n2"), Some(n("n3"))));
    // A draining node holds nothing.
    m.apply(
        Wire::Heartbeat {
            node: n("n2"),
            lease_ms: LEASE.as_millis() as u64,
            count: 0,
            digest: 0,
            draining: true,
        },
        secs(t0, 32),
    );
    assert_eq!(holders_of(&m, "n2-a"), (n("n3"), Some(n("n1"))));
    assert_eq!(holders_of(&m, "n1-a"), (n("n1"), Some(n("n3"))));
}

#[test]
fn an_instance_that_cannot_judge_yet_declares_nobody_dead() {
    let t0 = Instant::now();
    // A node that never heard its own heartbeat come back (its feed may be stale).
    let mut m = node("n1", t0);
    m.heartbeat_sent(&n("n1"), LEASE, t0);
    m.apply(beat("n2"), t0);
    m.apply(beat("n3"), t0);
    m.apply(beat("n3"), secs(t0, 20));
    assert!(!m.refresh_live(secs(t0, 30)), "nothing changes");
    assert_eq!(holders_of(&m, "n2-a"), (n("n2"), Some(n("n3"))));
    // A helper judges once it has read the feed for a lease.
    let mut h = helper(t0);
    h.apply(beat("n1"), t0);
    h.apply(beat("n2"), t0);
    h.apply(beat("n3"), t0);
    h.apply(beat("n1"), secs(t0, 9));
    h.apply(beat("n3"), secs(t0, 9));
    assert_eq!(holders_of(&h, "n2-a").0, n("n2"), "not a lease old yet");
    h.apply(beat("n1"), secs(t0, 12));
    assert_eq!(holders_of(&h, "n2-a"), (n("n3"), Some(n("n1"))));
    assert_ne!(h.view_digest(), helper(t0).view_digest());
}

#[test]
fn a_change_goes_to_both_holders_of_each_client() {
    let t0 = Instant::now();
    let mut h = helper(t0);
    let routes = h.route(&[c("n1-a"), c("n2-b"), c("n1-c")], t0);
    let got: Vec<(&str, Vec<&str>, bool)> = routes
        .iter()
        .map(|r| {
            let clients = r.clients.iter().map(ClientId::as_str).collect();
            (r.node.as_str(), clients, r.owner)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("n1", vec!["n1-a", "n1-c"], true),
            ("n2", vec!["n1-a", "n2-b", "n1-c"], true),
            ("n3", vec!["n2-b"], false),
        ]
    );
}

#[test]
fn a_node_with_nobody_else_live_holds_alone() {
    let t0 = Instant::now();
    let mut m = node("n1", t0);
    echo_until(&mut m, "n1", t0, 15);
    m.apply(beat("n2"), t0);
    m.refresh_live(secs(t0, 15));
    assert_eq!(holders_of(&m, "n2-a"), (n("n1"), None));
    join_at(&mut m, "room", &["n2-a"], secs(t0, 15));
    assert_eq!(hand_over(&mut m, &mut [], secs(t0, 15)), 0);
    assert_eq!(counts(&mut m, secs(t0, 15)), vec![(ch("room"), 1, 0)]);
}
