//! Connections across nodes: counts, online lists, disconnects.

use impush_core::PresenceStore;

use super::helpers::{info, my_channels, my_online_clients};
use crate::support::{call, channel, client, clients, conn, node};

/// Connection counts are per client across nodes; a client is online while it has one.
pub async fn presence_counts_connections_across_nodes(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let (k1, k2, k3, k4) = (
        conn(ns, "k1"),
        conn(ns, "k2"),
        conn(ns, "k3"),
        conn(ns, "k4"),
    );

    assert_eq!(call("connections", p.connections(&alice)).await, 0);
    assert_eq!(call("connect k1", p.connect(&n1, &alice, &k1)).await, 1);
    assert_eq!(call("connect k2", p.connect(&n1, &alice, &k2)).await, 2);
    assert_eq!(call("connect k3", p.connect(&n2, &alice, &k3)).await, 3);
    assert_eq!(call("connect k4", p.connect(&n2, &bob, &k4)).await, 1);
    assert_eq!(call("connections", p.connections(&alice)).await, 3);
    assert_eq!(call("connections", p.connections(&bob)).await, 1);
    let both = [alice.clone(), bob.clone()];
    assert_eq!(call("online", p.online(&both)).await, vec![true, true]);

    assert_eq!(
        call("disconnect k2", p.disconnect(&n1, &alice, &k2, false)).await,
        2
    );
    assert_eq!(
        call("disconnect k3", p.disconnect(&n2, &alice, &k3, false)).await,
        1
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    assert_eq!(call("online", p.online(&both)).await, vec![true, true]);
    assert_eq!(
        call("disconnect k1", p.disconnect(&n1, &alice, &k1, false)).await,
        0
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 0);
    assert_eq!(call("online", p.online(&both)).await, vec![false, true]);
    assert_eq!(my_online_clients(p, ns).await, vec![bob.clone()]);
    assert_eq!(
        call("disconnect k4", p.disconnect(&n2, &bob, &k4, true)).await,
        0
    );
    assert_eq!(call("online", p.online(&both)).await, vec![false, false]);
    assert!(my_online_clients(p, ns).await.is_empty());
}

/// `online` answers in the order asked (duplicates and unknown ids included);
/// `online_clients` is sorted.
pub async fn presence_online_lists_are_sorted(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    // Connected in non-sorted order, including a non-ASCII id (sorted by bytes like `str`).
    for (i, name) in ["carol", "用户", "alice", "bob", "Zed"].iter().enumerate() {
        let k = conn(ns, &format!("k{i}"));
        call("connect", p.connect(&n1, &client(ns, name), &k)).await;
    }
    let mut want = clients(ns, &["carol", "用户", "alice", "bob", "Zed"]);
    want.sort();
    assert_eq!(my_online_clients(p, ns).await, want);

    let ask = clients(ns, &["bob", "nobody", "alice", "bob", "用户", "ghost"]);
    assert_eq!(
        call("online", p.online(&ask)).await,
        vec![true, false, true, true, true, false]
    );
    assert_eq!(
        call("online of nothing", p.online(&[])).await,
        Vec::<bool>::new()
    );
}

/// `disconnect(.., clear_channels = true)` removes channel memberships only when the client's
/// last connection goes.
pub async fn presence_disconnect_clears_channels_on_last_connection(
    p: &dyn PresenceStore,
    ns: &str,
) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let (ch1, ch2) = (channel(ns, "ch1"), channel(ns, "ch2"));
    let (k1, k2) = (conn(ns, "k1"), conn(ns, "k2"));
    call("connect", p.connect(&n1, &alice, &k1)).await;
    call("connect", p.connect(&n2, &alice, &k2)).await;
    call("join", p.join_channel(&ch1, &[alice.clone(), bob.clone()])).await;
    call("join", p.join_channel(&ch2, std::slice::from_ref(&alice))).await;

    assert_eq!(
        call("disconnect k1", p.disconnect(&n1, &alice, &k1, true)).await,
        1
    );
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch1.clone(), ch2.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch1)).await,
        vec![alice.clone(), bob.clone()]
    );

    assert_eq!(
        call("disconnect k2", p.disconnect(&n2, &alice, &k2, true)).await,
        0
    );
    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    assert_eq!(
        call("channel_members", p.channel_members(&ch1)).await,
        vec![bob.clone()]
    );
    assert!(call("channel_members", p.channel_members(&ch2))
        .await
        .is_empty());
    // ch2 lost its only member and disappears; ch1 keeps (offline) bob.
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "ch1", 1, 0)]);
    // Bob never connected; his membership is untouched.
    assert_eq!(
        call("client_channels", p.client_channels(&bob)).await,
        vec![ch1]
    );
}

/// `disconnect(.., clear_channels = false)` keeps the client's channel memberships.
pub async fn presence_disconnect_without_clear_keeps_channels(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let alice = client(ns, "alice");
    let ch = channel(ns, "room");
    let k1 = conn(ns, "k1");
    call("connect", p.connect(&n1, &alice, &k1)).await;
    call("join", p.join_channel(&ch, std::slice::from_ref(&alice))).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    assert_eq!(
        call("disconnect", p.disconnect(&n1, &alice, &k1, false)).await,
        0
    );

    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![alice.clone()]
    );
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 0)]);

    // Coming back online counts again.
    call("connect", p.connect(&n1, &alice, &conn(ns, "k2"))).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 1)]);
}

/// Disconnecting a connection the store does not know is harmless: unknown client, or a known
/// client with an unknown connection id (even with `clear_channels`).
pub async fn presence_disconnect_unknown_is_harmless(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let alice = client(ns, "alice");
    let ch = channel(ns, "room");
    let k1 = conn(ns, "k1");
    assert_eq!(
        call(
            "disconnect unknown client",
            p.disconnect(&n1, &client(ns, "nobody"), &conn(ns, "zz"), true)
        )
        .await,
        0
    );
    call("connect", p.connect(&n1, &alice, &k1)).await;
    call("join", p.join_channel(&ch, std::slice::from_ref(&alice))).await;
    assert_eq!(
        call(
            "disconnect unknown connection",
            p.disconnect(&n1, &alice, &conn(ns, "zz"), true)
        )
        .await,
        1
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );
    // The real disconnect, then the same one again.
    assert_eq!(
        call("disconnect", p.disconnect(&n1, &alice, &k1, false)).await,
        0
    );
    assert_eq!(
        call("disconnect twice", p.disconnect(&n1, &alice, &k1, true)).await,
        0
    );
    assert_eq!(call("connections", p.connections(&alice)).await, 0);
    assert!(my_online_clients(p, ns).await.is_empty());
    assert!(my_channels(p, ns).await.iter().all(|c| c.online == 0));
}
