//! Memberships merge by stamp: changes and copies give the same result in any order, and a
//! remembered leave stops an older copy.

use std::time::Duration;

use impush_core::{ChannelName, ClientId};

use super::Memberships;
use crate::{state::View, wire::Record};

fn c(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}
fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

/// A holder that saw every change of `a` in order.
fn with_history() -> Memberships {
    let mut m = Memberships::default();
    m.join(&ch("r1"), &[c("a"), c("b")], 10);
    m.join(&ch("r2"), &[c("a")], 20);
    m.leave(&ch("r1"), &[c("a")], 30, 30);
    m.join(&ch("r3"), &[c("a")], 40);
    m
}

#[test]
fn copies_merge_to_the_same_result_in_any_order() {
    let full = with_history();
    let want = full.channels_of(&c("a"));
    assert_eq!(want, vec![ch("r2"), ch("r3")]);
    // Snapshots of another holder at different points of the same history.
    let mut early = Memberships::default();
    early.join(&ch("r1"), &[c("a")], 10);
    let early = early.record(&c("a")).unwrap();
    let late = full.record(&c("a")).unwrap();
    for order in [[&early, &late], [&late, &early]] {
        let mut m = Memberships::default();
        for r in order {
            m.merge(r, 50);
        }
        assert_eq!(m.channels_of(&c("a")), want, "{order:?}");
        assert_eq!(m.members(&ch("r1")), Vec::<ClientId>::new());
        m.merge(&late, 60);
        assert_eq!(
            m.channels_of(&c("a")),
            want,
            "merging twice changes nothing"
        );
    }
}

#[test]
fn a_remembered_leave_stops_an_older_copy_and_a_newer_join_wins() {
    let mut m = Memberships::default();
    m.leave(&ch("r"), &[c("a")], 100, 100);
    let copy = |s| Record {
        client: c("a"),
        joined: vec![(ch("r"), s)],
        left: vec![],
        left_all: None,
    };
    m.merge(&copy(90), 101);
    assert!(m.channels_of(&c("a")).is_empty(), "the copy is older");
    m.merge(&copy(110), 111);
    assert_eq!(m.channels_of(&c("a")), vec![ch("r")], "a later join");
    // A copy with a later leave ends it; a copy with an older one does not.
    let left = |s| Record {
        client: c("a"),
        joined: vec![],
        left: vec![(ch("r"), s)],
        left_all: None,
    };
    m.merge(&left(105), 112);
    assert_eq!(m.channels_of(&c("a")), vec![ch("r")]);
    m.merge(&left(120), 121);
    assert!(m.channels_of(&c("a")).is_empty());
}

#[test]
fn a_change_asked_directly_applies_in_arrival_order_and_then_wins_everywhere() {
    let mut m = Memberships::default();
    m.leave(&ch("r"), &[c("a")], 200, 200);
    // A join whose requester's clock is behind still applies (it arrived after the leave)
    // and is stamped after it, so its copy wins on another holder that saw the leave.
    m.join(&ch("r"), &[c("a")], 150);
    assert_eq!(m.channels_of(&c("a")), vec![ch("r")]);
    let copy = m.record(&c("a")).unwrap();
    let mut other = Memberships::default();
    other.leave(&ch("r"), &[c("a")], 200, 200);
    other.merge(&copy, 201);
    assert_eq!(other.channels_of(&c("a")), vec![ch("r")]);
}

#[test]
fn leaving_everything_ends_older_memberships_on_every_copy() {
    let mut m = Memberships::default();
    m.join(&ch("r1"), &[c("a")], 10);
    m.join(&ch("r2"), &[c("a")], 20);
    assert!(m.leave_all(&c("a"), 30, 30));
    assert!(!m.leave_all(&c("a"), 31, 31), "nothing left");
    let stale = Record {
        client: c("a"),
        joined: vec![(ch("r1"), 10), (ch("r3"), 25)],
        left: vec![],
        left_all: None,
    };
    m.merge(&stale, 32);
    assert!(m.channels_of(&c("a")).is_empty());
    // Its copy ends them on a holder that missed it, but not a later join there.
    let mut other = Memberships::default();
    other.join(&ch("r1"), &[c("a")], 10);
    other.join(&ch("r4"), &[c("a")], 40);
    other.merge(&m.record(&c("a")).unwrap(), 41);
    assert_eq!(other.channels_of(&c("a")), vec![ch("r4")]);
}

#[test]
fn leaves_are_forgotten_after_the_horizon_or_past_the_cap() {
    let mut m = Memberships::default();
    m.leave(&ch("r"), &[c("a")], 100, 100);
    m.leave(&ch("r"), &[c("b")], 200, 200);
    assert!(m.holds(&c("a")) && m.holds(&c("b")));
    m.prune(250, 200, 10);
    assert!(m.holds(&c("a")) && m.holds(&c("b")), "within the horizon");
    m.prune(250, 100, 10);
    assert!(
        !m.holds(&c("a")) && m.holds(&c("b")),
        "a's leave is older than it"
    );
    // Forgotten, a leave no longer stops an older copy: that is what the horizon bounds.
    m.merge(
        &Record {
            client: c("a"),
            joined: vec![(ch("r"), 90)],
            left: vec![],
            left_all: None,
        },
        260,
    );
    assert_eq!(m.channels_of(&c("a")), vec![ch("r")]);
    for i in 0..20 {
        m.leave(&ch("r"), &[c(&format!("x{i}"))], 300, 300);
    }
    m.prune(300, 1000, 5);
    let kept = (0..20).filter(|i| m.holds(&c(&format!("x{i}")))).count();
    assert_eq!(kept, 5, "the newest within the cap");
}

#[test]
fn counts_keep_only_the_clients_asked_for() {
    let mut m = Memberships::default();
    m.join(&ch("r1"), &[c("a"), c("b")], 1);
    m.join(&ch("r2"), &[c("b")], 1);
    let view = View::new(Duration::from_secs(1));
    assert_eq!(
        m.counts(&view, |c| c.as_str() == "a"),
        vec![(ch("r1"), 1, 0)]
    );
    m.remove(&c("a"));
    assert_eq!(m.members(&ch("r1")), vec![c("b")]);
    assert!(!m.holds(&c("a")));
}
