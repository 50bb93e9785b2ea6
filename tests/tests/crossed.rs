//! A `last` that a new connection crossed (`docs/design.md` section 16, "A `last` crossed by a
//! new connection is repaired"): a client's last connection closes on one node while it
//! connects on another, and the new connection's online event reaches the business before the
//! old one's offline (`last: true`). Replayed in order, those two would leave a connected
//! client offline; the node that published the `last` finds the client connected after it and
//! has its connection announced again.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_util::StreamExt;
use impush_core::{
    Broker, Event, MemoryBroker, MemoryPresenceStore, NodeEntry, PresenceStore, Result,
    SubscribeMode, Subscription,
};
use impush_helper::ImHelper;
use impush_server::ImServer;
use impush_tests::online_after_replay;
use support::{config, id, start_cluster_over, Client};
use tokio::sync::watch;

/// A broker whose offline events wait, published, until the test lets them through (a busy
/// broker or node holding one event while another goes out).
#[derive(Debug)]
struct HeldOfflines {
    inner: Arc<dyn Broker>,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Broker for HeldOfflines {
    async fn publish(&self, topic: &str, payload: bytes::Bytes) -> Result<()> {
        if support::is_offline_event(topic, &payload) {
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
        }
        self.inner.publish(topic, payload).await
    }
    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        self.inner.subscribe(topic, mode).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

/// Two nodes over one memory broker and presence store; offline events wait until the
/// returned sender says `true` (`open` at once when `true`).
async fn two_nodes(open: bool) -> (watch::Sender<bool>, Vec<ImServer>) {
    let (gate, held) = watch::channel(open);
    let broker: Arc<dyn Broker> = Arc::new(HeldOfflines {
        inner: Arc::new(MemoryBroker::default()),
        open: held,
    });
    let presence: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new());
    let nodes = start_cluster_over(broker, vec![presence.clone(), presence], |_| {}).await;
    (gate, nodes)
}

/// The next event (within 10 s), kept in `seen`.
async fn next(events: &mut impush_helper::EventStream, seen: &mut Vec<Event>) -> Event {
    let e = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap_or_else(|_| panic!("no event within 10 s after {seen:?}"))
        .unwrap()
        .unwrap();
    seen.push(e.clone());
    e
}

/// Two nodes. `x`'s only connection, on n1, closes; its offline (`last: true`) is held on its
/// way while `x` connects on n2, whose online (`first: true`) goes out first; then the offline
/// goes out. n1 finds `x` connected after its `last`, and n2 announces the connection again:
/// the events end with `x` online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_crossed_by_a_new_connection_is_followed_by_its_online_again() {
    let (open, nodes) = two_nodes(false).await;
    let h = nodes[0].helper();
    let x = support::homed_on(&h, 0, "x");
    let cx = id(&x);
    // A helper that knows only n2: it hands out n2's URL for any client.
    let mut only_n2 = config().helper_config();
    only_n2.cluster.nodes = vec![NodeEntry {
        id: "n2".parse().unwrap(),
        url: format!("ws://{}", nodes[1].local_addr()),
    }];
    let h2 = ImHelper::connect(&only_n2).await.unwrap();

    let mut events = h.events().await.unwrap();
    let mut seen = Vec::new();
    let on_n1 = Client::connect(&h, &x, 1).await;
    assert!(matches!(
        next(&mut events, &mut seen).await,
        Event::Online { first: true, .. }
    ));
    drop(on_n1);
    // n1 has counted the close (the store has no connection of x) and holds its offline.
    support::eventually(|| async { !h.is_online(&cx).await.unwrap().value }).await;
    let on_n2 = Client::connect_with(&h2, &x, serde_json::json!({"on": "n2"})).await;
    let e = next(&mut events, &mut seen).await;
    assert!(
        matches!(&e, Event::Online { node, first: true, .. } if node.as_str() == "n2"),
        "{e:?}"
    );
    open.send_replace(true);
    let e = next(&mut events, &mut seen).await;
    assert!(
        matches!(&e, Event::Offline { node, last: true, .. } if node.as_str() == "n1"),
        "the crossing `last`: {e:?}"
    );
    // The business would now think x offline; the repair follows.
    let again = next(&mut events, &mut seen).await;
    assert!(
        matches!(&again, Event::Online { node, first: true, metadata, .. }
            if node.as_str() == "n2" && metadata["on"] == "n2"),
        "n2 announces x's connection again: {again:?}"
    );
    assert!(online_after_replay(&seen, &cx, false), "{seen:?}");
    assert_eq!(nodes[0].metrics().lasts_crossed(), 1);
    drop(on_n2);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A `last` nothing crossed is not followed by anything: the client stays offline and no
/// online event is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_nothing_crossed_stays_the_last_word() {
    let (_open, nodes) = two_nodes(true).await;
    let h = nodes[0].helper();
    let mut events = h.events().await.unwrap();
    let alone = Client::connect(&h, "alone", 1).await;
    drop(alone);
    let mut got = Vec::new();
    while !matches!(got.last(), Some(Event::Offline { .. })) {
        next(&mut events, &mut got).await;
    }
    // A repeat would follow within a catch-up and a publish; the memory store answers at once.
    let more = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(more.is_err(), "an event after the last: {more:?}");
    let lasts = nodes
        .iter()
        .map(|n| n.metrics().lasts_crossed())
        .sum::<u64>();
    assert_eq!(lasts, 0);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
