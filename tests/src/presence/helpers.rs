//! Namespaced listings and expected values the presence cases share.

use std::fmt::Debug;

use impush_core::{
    ChannelInfo, ChannelName, ClientId, ConnectionId, DroppedConnection, NodeId, PresenceStore,
};

use crate::support::{call, channel};

pub(super) async fn my_online_clients(p: &dyn PresenceStore, ns: &str) -> Vec<ClientId> {
    let all = call("online_clients", p.online_clients()).await;
    assert!(
        all.is_complete(),
        "online_clients: partial {:?}",
        all.missing
    );
    assert_sorted(&all, "online_clients");
    let prefix = format!("{ns}-");
    all.into_value()
        .into_iter()
        .filter(|c| c.as_str().starts_with(&prefix))
        .collect()
}

pub(super) async fn my_channels(p: &dyn PresenceStore, ns: &str) -> Vec<ChannelInfo> {
    let all = call("channels", p.channels()).await;
    assert!(all.is_complete(), "channels: partial {:?}", all.missing);
    let names: Vec<&ChannelName> = all.iter().map(|c| &c.name).collect();
    assert_sorted(&names, "channels");
    let prefix = format!("{ns}-");
    all.into_value()
        .into_iter()
        .filter(|c| c.name.as_str().starts_with(&prefix))
        .collect()
}

#[track_caller]
pub(super) fn assert_sorted<T: Ord + Debug>(v: &[T], what: &str) {
    assert!(
        v.windows(2).all(|w| w[0] <= w[1]),
        "{what} is not sorted: {v:?}"
    );
}

pub(super) fn info(ns: &str, name: &str, members: usize, online: usize) -> ChannelInfo {
    ChannelInfo {
        name: channel(ns, name),
        members,
        online,
    }
}

pub(super) fn dropped(
    node: &NodeId,
    client: &ClientId,
    connection: ConnectionId,
    last: bool,
) -> DroppedConnection {
    DroppedConnection {
        node: node.clone(),
        client: client.clone(),
        connection,
        last,
    }
}
