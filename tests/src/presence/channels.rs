//! Channel membership: joins and leaves, listings and counts.

use impush_core::{ChannelName, PresenceStore};

use super::helpers::{info, my_channels, my_online_clients};
use crate::support::{call, channel, client, conn, node};

/// Joining and leaving are idempotent, duplicates in one call included; leaving an unknown
/// channel or as a non-member is harmless.
pub async fn presence_join_and_leave_are_idempotent(p: &dyn PresenceStore, ns: &str) {
    let ch = channel(ns, "room");
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| client(ns, n));
    call("join", p.join_channel(&ch, &[bob.clone(), alice.clone()])).await;
    call(
        "join again",
        p.join_channel(&ch, &[alice.clone(), bob.clone()]),
    )
    .await;
    call(
        "join with duplicates",
        p.join_channel(&ch, &[alice.clone(), alice.clone()]),
    )
    .await;
    call("join nobody", p.join_channel(&ch, &[])).await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![alice.clone(), bob.clone()]
    );
    assert_eq!(
        call("client_channels", p.client_channels(&alice)).await,
        vec![ch.clone()]
    );
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 2, 0)]);

    call("leave", p.leave_channel(&ch, std::slice::from_ref(&alice))).await;
    call(
        "leave again",
        p.leave_channel(&ch, std::slice::from_ref(&alice)),
    )
    .await;
    call(
        "leave as non-member",
        p.leave_channel(&ch, std::slice::from_ref(&carol)),
    )
    .await;
    call("leave nobody", p.leave_channel(&ch, &[])).await;
    call(
        "leave unknown channel",
        p.leave_channel(&channel(ns, "nowhere"), &[alice.clone(), bob.clone()]),
    )
    .await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![bob.clone()]
    );
    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    assert!(call("client_channels", p.client_channels(&carol))
        .await
        .is_empty());
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 0)]);
}

/// `channel_members`, `client_channels` and `channels` are sorted and `channels` carries the
/// right member and online counts. Names with spaces, `:` and non-ASCII are kept intact.
pub async fn presence_channel_listings_are_sorted_with_counts(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| client(ns, n));
    call("connect", p.connect(&n1, &carol, &conn(ns, "c1"))).await;
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    let names = ["zeta", "alpha", "room: 1", "聊天", "Beta"];
    let chans: Vec<ChannelName> = names.iter().map(|n| channel(ns, n)).collect();
    // zeta: dave, carol, alice (2 online) / alpha: bob (0 online) / "room: 1": alice, bob /
    // 聊天: carol / Beta: dave, bob.
    call(
        "join",
        p.join_channel(&chans[0], &[dave.clone(), carol.clone(), alice.clone()]),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[1], std::slice::from_ref(&bob)),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[2], &[bob.clone(), alice.clone()]),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[3], std::slice::from_ref(&carol)),
    )
    .await;
    call(
        "join",
        p.join_channel(&chans[4], &[dave.clone(), bob.clone()]),
    )
    .await;

    assert_eq!(
        call("channel_members zeta", p.channel_members(&chans[0])).await,
        vec![alice.clone(), carol.clone(), dave.clone()]
    );
    assert_eq!(
        call("channel_members Beta", p.channel_members(&chans[4])).await,
        vec![bob.clone(), dave.clone()]
    );
    let mut bobs = vec![chans[1].clone(), chans[2].clone(), chans[4].clone()];
    bobs.sort();
    assert_eq!(
        call("client_channels bob", p.client_channels(&bob)).await,
        bobs
    );
    let mut alices = vec![chans[0].clone(), chans[2].clone()];
    alices.sort();
    assert_eq!(
        call("client_channels alice", p.client_channels(&alice)).await,
        alices
    );

    let mut want = vec![
        info(ns, "zeta", 3, 2),
        info(ns, "alpha", 1, 0),
        info(ns, "room: 1", 2, 1),
        info(ns, "聊天", 1, 1),
        info(ns, "Beta", 2, 0),
    ];
    want.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(my_channels(p, ns).await, want);
    assert!(call(
        "unknown channel",
        p.channel_members(&channel(ns, "unknown"))
    )
    .await
    .is_empty());
    assert!(call(
        "client in no channel",
        p.client_channels(&client(ns, "nobody"))
    )
    .await
    .is_empty());
}

/// A channel whose last member leaves disappears from `channels`.
pub async fn presence_empty_channel_disappears(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let [alice, bob] = ["alice", "bob"].map(|n| client(ns, n));
    let (ch, other) = (channel(ns, "room"), channel(ns, "other"));
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("join", p.join_channel(&ch, &[alice.clone(), bob.clone()])).await;
    call("join", p.join_channel(&other, std::slice::from_ref(&bob))).await;
    assert_eq!(
        my_channels(p, ns).await,
        vec![info(ns, "other", 1, 0), info(ns, "room", 2, 1)]
    );
    call("leave", p.leave_channel(&ch, &[alice.clone(), bob.clone()])).await;
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "other", 1, 0)]);
    assert!(call("channel_members", p.channel_members(&ch))
        .await
        .is_empty());
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    assert!(call("client_channels", p.client_channels(&alice))
        .await
        .is_empty());
    // Leaving a channel does not affect presence.
    assert_eq!(call("connections", p.connections(&alice)).await, 1);
    call("leave", p.leave_channel(&other, std::slice::from_ref(&bob))).await;
    assert!(my_channels(p, ns).await.is_empty());
}

/// Membership may be recorded for a client that is offline (never connected).
pub async fn presence_offline_client_can_join(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let ghost = client(ns, "ghost");
    let ch = channel(ns, "room");
    call("join", p.join_channel(&ch, std::slice::from_ref(&ghost))).await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![ghost.clone()]
    );
    assert_eq!(
        call("client_channels", p.client_channels(&ghost)).await,
        vec![ch.clone()]
    );
    assert_eq!(call("connections", p.connections(&ghost)).await, 0);
    assert_eq!(
        call("online", p.online(std::slice::from_ref(&ghost))).await,
        vec![false]
    );
    assert!(my_online_clients(p, ns).await.is_empty());
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 0)]);

    let k = conn(ns, "g1");
    call("connect", p.connect(&n1, &ghost, &k)).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 1, 1)]);
    call("disconnect", p.disconnect(&n1, &ghost, &k, false)).await;
    assert_eq!(
        call("channel_members", p.channel_members(&ch)).await,
        vec![ghost]
    );
}

/// `channel_online` counts only the online members, across nodes and connections.
pub async fn presence_channel_online_counts_online_members(p: &dyn PresenceStore, ns: &str) {
    let (n1, n2) = (node(ns, "n1"), node(ns, "n2"));
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| client(ns, n));
    let ch = channel(ns, "room");
    call(
        "join",
        p.join_channel(&ch, &[alice.clone(), bob.clone(), carol.clone()]),
    )
    .await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 0);
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call("connect", p.connect(&n2, &alice, &conn(ns, "a2"))).await; // counted once
    call("connect", p.connect(&n2, &bob, &conn(ns, "b1"))).await;
    call("connect", p.connect(&n1, &dave, &conn(ns, "d1"))).await; // online, not a member
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 2);
    assert_eq!(my_channels(p, ns).await, vec![info(ns, "room", 3, 2)]);

    call(
        "disconnect",
        p.disconnect(&n2, &bob, &conn(ns, "b1"), false),
    )
    .await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 1);
    call("connect", p.connect(&n1, &carol, &conn(ns, "c1"))).await;
    assert_eq!(call("channel_online", p.channel_online(&ch)).await, 2);
    assert_eq!(
        call("unknown channel", p.channel_online(&channel(ns, "nowhere"))).await,
        0
    );
}

/// `leave_all_if_offline` ends the memberships of a client with no connection, in one step,
/// and leaves an online client's alone.
pub async fn presence_leave_all_if_offline_spares_online_clients(p: &dyn PresenceStore, ns: &str) {
    let n1 = node(ns, "n1");
    let (alice, bob) = (client(ns, "alice"), client(ns, "bob"));
    let (room, hall) = (channel(ns, "room"), channel(ns, "hall"));
    call("connect", p.connect(&n1, &alice, &conn(ns, "a1"))).await;
    call(
        "join room",
        p.join_channel(&room, &[alice.clone(), bob.clone()]),
    )
    .await;
    call(
        "join hall",
        p.join_channel(&hall, std::slice::from_ref(&alice)),
    )
    .await;
    assert!(!call("online alice", p.leave_all_if_offline(&alice)).await);
    assert_eq!(
        call("alice's channels", p.client_channels(&alice)).await,
        vec![hall.clone(), room.clone()]
    );
    // bob never connected: an offline member.
    assert!(call("offline bob", p.leave_all_if_offline(&bob)).await);
    assert!(call("bob's channels", p.client_channels(&bob))
        .await
        .is_empty());
    assert!(
        !call("bob again", p.leave_all_if_offline(&bob)).await,
        "nothing left to end"
    );
    call(
        "disconnect",
        p.disconnect(&n1, &alice, &conn(ns, "a1"), false),
    )
    .await;
    assert_eq!(
        call("kept after the last connection", p.client_channels(&alice)).await,
        vec![hall.clone(), room.clone()]
    );
    assert!(call("alice gone", p.leave_all_if_offline(&alice)).await);
    assert!(call("alice's channels", p.client_channels(&alice))
        .await
        .is_empty());
    assert!(call("room", p.channel_members(&room)).await.is_empty());
    call("clear", p.clear_node(&n1, true)).await;
}
