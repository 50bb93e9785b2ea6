//! Whole nodes: `clear_node`, `sync_node`, leases and reaping, `ping`.

use impush_core::{DroppedConnection, NodeLease, NodeState, PresenceStore};

use super::helpers::{dropped, info, my_channels, my_online_clients};
use crate::support::{call, channel, client, conn, node};

/// `clear_node` removes only that node's connections and returns them sorted, each client's
/// last one marked when the client went fully offline; with `clear_channels = false`
/// memberships stay.
pub async fn presence_clear_node_removes_only_that_node(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [dave, carol, bob, alice] = ["dave", "carol", "bob", "alice"].map(|n| client(ns, n));
    let ch = channel(ns, "room");
    // Connected in reverse order so that a sorted answer is not an accident of insertion order.
    call("connect", p.connect(&n1, &dave, &conn(ns, "d1"))).await;
    call("connect", p.connect(&n1, &dave, &conn(ns, "d2"))).await; // two on n1 only
    call("connect", p.connect(&n2, &carol, &conn(ns, "c1"))).await; // n2 only
    call("connect", p.connect(&n1, &bob, &conn(ns, "b1"))).await; // n1 and n2
    call("connect", p.connect(&n2, &bob, &conn(ns, "b2"))).await;
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await; // n1 only
    let everyone = [alice.clone(), bob.clone(), carol.clone(), dave.clone()];
    call("join", p.join_channel(&ch, &everyone)).await;

    let gone = call("clear_node n1", p.clear_node(&n1, false)).await;
    assert_eq!(
        gone,
        vec![
            dropped(&n1, &alice, conn(ns, "a1"), true),
            dropped(&n1, &bob, conn(ns, "b1"), false),
            dropped(&n1, &dave, conn(ns, "d1"), false),
            dropped(&n1, &dave, conn(ns, "d2"), true),
        ]
    );

    assert_eq!(
        call("online", p.online(&everyone)).await,
        vec![false, true, true, false]
    );
    assert_eq!(call("connections", p.connections(&bob)).await, 1);
    assert_eq!(call("connections", p.connections(&carol)).await, 1);
    assert_eq!(call("connections", p.connections(&dave)).await, 0);
    assert_eq!(
        my_online_clients(p, ns).await,
        vec![bob.clone(), carol.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        everyone.to_vec()
    );
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 2);
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );

    // Clearing it again, or a node that never held anything, finds nobody.
    assert!(call("clear_node n1 again", p.clear_node(&n1, false))
        .await
        .is_empty());
    assert!(
        call("clear_node unknown", p.clear_node(&node(ns, "n9"), true))
            .await
            .is_empty()
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        everyone.to_vec()
    );
}

/// `clear_node(.., clear_channels = true)`: the clients that went offline leave their channels;
/// clients still connected elsewhere keep theirs.
pub async fn presence_clear_node_clears_channels(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| client(ns, n));
    let (ch1, ch2) = (channel(ns, "ch1"), channel(ns, "ch2"));
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("connect", p.connect(&n1, &bob, &conn(ns, "b1"))).await;
    call("connect", p.connect(&n2, &bob, &conn(ns, "b2"))).await;
    // carol is a member but offline; clearing n1 must not touch her.
    call(
        "join",
        p.join_channel(&ch1, &[alice.clone(), bob.clone(), carol.clone()]),
    )
    .await;
    call("join", p.join_channel(&ch2, std::slice::from_ref(&alice))).await;

    let gone = call("clear_node n1", p.clear_node(&n1, true)).await;
    assert_eq!(
        gone,
        vec![
            dropped(&n1, &alice, conn(ns, "a1"), true),
            dropped(&n1, &bob, conn(ns, "b1"), false),
        ]
    );

    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    assert_eq!(
        call("client_channels", p.client_channels(&bob)).await,
        vec![ch1.clone()]
    );
    assert_eq!(
        call("client_channels", p.client_channels(&carol)).await,
        vec![ch1.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch1)).await,
        vec![bob.clone(), carol.clone()]
    );
    assert!(call("channel_members", p.channel_members(&ch2))
        .await
        .is_empty());
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "ch1", 2, 1)]);
    assert_eq!(my_online_clients(p, ns).await, vec![bob]);
}

/// `sync_node` makes the store hold exactly the node's connections in one step: ghosts (the
/// store has them, the node does not) go, with `last` and channel clean-up for clients left
/// with none; missing connections come back, `first` where the client had none; other nodes'
/// connections and a client whose ghost is replaced by a live connection keep their channels.
pub async fn presence_sync_node_makes_the_store_match(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| client(ns, n));
    let room = channel(ns, "room");
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("connect", p.connect(&n1, &bob, &conn(ns, "b1"))).await; // ghost, bob also on n2
    call("connect", p.connect(&n2, &bob, &conn(ns, "b2"))).await;
    call("connect", p.connect(&n1, &carol, &conn(ns, "c1"))).await; // ghost, replaced by c2
    call("connect", p.connect(&n1, &dave, &conn(ns, "d1"))).await; // ghost, dave's only one
    let everyone = [alice.clone(), bob.clone(), carol.clone(), dave.clone()];
    call("join", p.join_channel(&room, &everyone)).await;

    let erin = client(ns, "erin"); // connected while a write failed: missing from the store
    let real = vec![
        (alice.clone(), conn(ns, "a1")),
        (carol.clone(), conn(ns, "c2")),
        (erin.clone(), conn(ns, "e1")),
    ];
    let sync = call("sync_node", p.sync_node(&n1, &real, true)).await;
    assert_eq!(
        sync.removed,
        vec![
            dropped(&n1, &bob, conn(ns, "b1"), false),
            dropped(&n1, &carol, conn(ns, "c1"), false),
            dropped(&n1, &dave, conn(ns, "d1"), true),
        ]
    );
    assert_eq!(
        sync.added,
        vec![
            impush_core::AddedConnection {
                client: carol.clone(),
                connection: conn(ns, "c2"),
                first: false,
            },
            impush_core::AddedConnection {
                client: erin.clone(),
                connection: conn(ns, "e1"),
                first: true,
            },
        ]
    );
    assert_eq!(
        my_online_clients(p, ns).await,
        vec![alice.clone(), bob.clone(), carol.clone(), erin.clone()]
    );
    assert_eq!(call("connections", p.connections(&bob)).await, 1);
    assert_eq!(
        call("channel_members", p.channel_members(&room)).await,
        vec![alice.clone(), bob.clone(), carol.clone()],
        "only dave, left with no connection, leaves the room"
    );

    // Already in sync: nothing changes.
    let again = call("sync_node again", p.sync_node(&n1, &real, true)).await;
    assert_eq!(again, impush_core::NodeSync::default());
    call("clear n1", p.clear_node(&n1, true)).await;
    call("clear n2", p.clear_node(&n2, true)).await;
}

/// Leases: a node that stops heartbeating loses its connections to the next `reap_expired`,
/// which returns each of them once; live nodes and their connections are untouched.
pub async fn presence_leases_expire_and_reap_drops_connections(p: &dyn PresenceStore, ns: &str) {
    use std::time::Duration;
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let (k1, k2, k3) = (conn(ns, "k1"), conn(ns, "k2"), conn(ns, "k3"));
    let room = channel(ns, "room");
    let mine = |d: &Vec<DroppedConnection>| -> Vec<DroppedConnection> {
        d.iter()
            .filter(|x| x.node == n1 || x.node == n2)
            .cloned()
            .collect()
    };

    let short = Duration::from_secs(1);
    assert!(!call("first heartbeat", p.heartbeat(&n1, short, NodeState::Live)).await);
    assert!(
        call(
            "renewed heartbeat",
            p.heartbeat(&n1, short, NodeState::Live)
        )
        .await
    );
    assert!(
        !call(
            "heartbeat n2",
            p.heartbeat(&n2, Duration::from_secs(60), NodeState::Live)
        )
        .await
    );
    call("connect k1", p.connect(&n1, &alice, &k1)).await;
    call("connect k2", p.connect(&n2, &alice, &k2)).await;
    call("connect k3", p.connect(&n1, &bob, &k3)).await;
    call("join", p.join_channel(&room, &[alice.clone(), bob.clone()])).await;

    let early = call("reap before expiry", p.reap_expired(true)).await;
    assert!(mine(&early).is_empty(), "reaped live node: {early:?}");

    // Wait for the lease to run out by polling, not by a fixed sleep: n1's connections all go in
    // the one reap that first sees it expired.
    let deadline = tokio::time::Instant::now() + short + Duration::from_secs(5);
    let dropped = loop {
        let d = mine(&call("reap", p.reap_expired(true)).await);
        if !d.is_empty() {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1's lease of {short:?} never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        dropped,
        vec![
            DroppedConnection {
                node: n1.clone(),
                client: alice.clone(),
                connection: k1.clone(),
                last: false
            },
            DroppedConnection {
                node: n1.clone(),
                client: bob.clone(),
                connection: k3.clone(),
                last: true
            },
        ]
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    assert_eq!(
        call("online", p.online(&[alice.clone(), bob.clone()])).await,
        vec![true, false]
    );
    assert_eq!(
        call("members", p.channel_members(&room)).await,
        vec![alice.clone()]
    );

    let again = call("second reap", p.reap_expired(true)).await;
    assert!(mine(&again).is_empty(), "reaped twice: {again:?}");
    // The reaped node learns from its next heartbeat that it must register again.
    assert!(
        !call(
            "heartbeat after reap",
            p.heartbeat(&n1, short, NodeState::Live)
        )
        .await
    );
    assert!(
        call(
            "n2 still alive",
            p.heartbeat(&n2, Duration::from_secs(60), NodeState::Live)
        )
        .await
    );
    call("clear n2", p.clear_node(&n2, true)).await;
    call("clear n1", p.clear_node(&n1, true)).await;
}

/// A node whose lease ran out but was not reaped (the store stalled, nobody reaped) is still
/// known: it must not re-announce its connections as if it had been declared dead.
pub async fn presence_expired_lease_is_known_until_reaped(p: &dyn PresenceStore, ns: &str) {
    use std::time::Duration;
    let n = node(ns, "n1");
    assert!(
        !call(
            "first heartbeat",
            p.heartbeat(&n, Duration::from_millis(1), NodeState::Live)
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        call(
            "heartbeat after expiry",
            p.heartbeat(&n, Duration::from_secs(60), NodeState::Live)
        )
        .await,
        "an expired but unreaped lease was forgotten"
    );
    call("clear", p.clear_node(&n, true)).await;
    assert!(
        !call(
            "heartbeat after clear",
            p.heartbeat(&n, Duration::from_secs(60), NodeState::Live)
        )
        .await
    );
    call("clear again", p.clear_node(&n, true)).await;
}

/// `live_nodes` lists the nodes whose lease runs, each with the state its last heartbeat
/// gave; a lease that ran out, or a node that cleared itself, is not listed.
pub async fn presence_live_nodes_follow_leases_and_states(p: &dyn PresenceStore, ns: &str) {
    use std::time::Duration;
    let (n1, n2, n3) = (node(ns, "n1"), node(ns, "n2"), node(ns, "n3"));
    let long = Duration::from_secs(60);
    call("heartbeat n1", p.heartbeat(&n1, long, NodeState::Live)).await;
    call("heartbeat n2", p.heartbeat(&n2, long, NodeState::Draining)).await;
    call(
        "heartbeat n3",
        p.heartbeat(&n3, Duration::from_millis(300), NodeState::Live),
    )
    .await;
    // A node that clears itself says so to the others with the connections it drops.
    call("connect", p.connect(&n1, &client(ns, "a"), &conn(ns, "a1"))).await;
    let mine = |all: Vec<NodeLease>| -> Vec<NodeLease> {
        all.into_iter()
            .filter(|l| [&n1, &n2, &n3].contains(&&l.node))
            .collect()
    };
    let lease = |n: &impush_core::NodeId, state| NodeLease {
        node: n.clone(),
        state,
    };
    // n3's lease runs out by itself: poll for it instead of sleeping a fixed time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let live = mine(call("live_nodes", p.live_nodes()).await);
        if live == vec![lease(&n1, NodeState::Live), lease(&n2, NodeState::Draining)] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "live nodes never became n1 live and n2 draining: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call("n2 live again", p.heartbeat(&n2, long, NodeState::Live)).await;
    call("clear n1", p.clear_node(&n1, true)).await;
    assert_eq!(
        mine(call("live_nodes", p.live_nodes()).await),
        vec![lease(&n2, NodeState::Live)]
    );
    call("clear n2", p.clear_node(&n2, true)).await;
    call("clear n3", p.clear_node(&n3, true)).await;
}

/// `ping` succeeds on a working store.
pub async fn presence_ping_succeeds(p: &dyn PresenceStore, _ns: &str) {
    call("ping", p.ping()).await;
}
