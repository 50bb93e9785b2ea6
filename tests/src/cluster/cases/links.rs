//! Network links broken under a running cluster with a [`FaultProxy`]: a client's link to its
//! node, and a node's link to the broker. The first cases of the partition kind: they prove
//! the proxy wiring end to end.

#![allow(clippy::unwrap_used)] // a case is a test body: a failed step fails the test

use std::time::Duration;

use futures_util::StreamExt;
use impush_core::Event;

use crate::{
    cluster::{
        clients::{
            client_on, connect, connect_via, eventually, next_json, next_json_within, wait_event,
            wait_online,
        },
        harness::{Backend, Cluster, Spec},
    },
    proxy::{Direction, FaultProxy},
};

/// A client's link to its node is reset (RST, as when a phone's network drops): its node ends
/// the session at once and the business gets the client's `offline` event (`last`) and
/// queries agree; once the link heals the client connects again through the same proxy.
pub async fn client_link_reset_through_a_proxy_is_an_offline_event(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let mut cluster = Cluster::start(backend, &url, &Spec::new(2, "10s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let proxy = FaultProxy::start(cluster.addrs[1]).await.unwrap();
    let mut wb = connect_via(&h, &b, proxy.addr()).await;
    let b2 = b.clone();
    wait_event(
        &mut events,
        move |e| matches!(e, Event::Online { client, first: true, .. } if *client == b2),
    )
    .await;
    h.send_message(&a, std::slice::from_ref(&b), &"through the proxy", false)
        .await
        .unwrap();
    assert_eq!(next_json(&mut wb).await["data"], "through the proxy");
    assert_eq!(proxy.connections(), 1);

    proxy.reset();
    let b3 = b.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, .. } if *client == b3),
    )
    .await;
    assert!(
        matches!(ev, Event::Offline { last: true, ref node, .. } if node.as_str() == "n2"),
        "{ev:?}"
    );
    eventually("b offline in queries", || async {
        h.is_online(&b).await.is_ok_and(|o| !o.value)
    })
    .await;
    // The client's end saw the reset, not a close frame.
    let end = tokio::time::timeout(Duration::from_secs(5), wb.next())
        .await
        .expect("the client's socket ends");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");

    proxy.heal();
    let _wb = connect_via(&h, &b, proxy.addr()).await;
    let b4 = b.clone();
    wait_event(
        &mut events,
        move |e| matches!(e, Event::Online { client, first: true, .. } if *client == b4),
    )
    .await;
    cluster.assert_running();
}

/// Node 2 reaches the broker through a proxy (the others and the helper directly). With the
/// link from the broker to node 2 paused (a frozen link TCP survives), a message for node 2's
/// client does not arrive; once it heals, it does, and node 2 never went down.
pub async fn paused_broker_link_holds_delivery_until_healed(backend: &Backend) {
    let Some(link) = backend.proxied_broker(1).await else {
        return;
    };
    let proxy = &link.proxy;
    let spec = link.spec(Spec::new(2, "10s"));
    let mut cluster = Cluster::start(backend, &link.url, &spec);
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    wait_online(&h, &[a.clone(), b.clone()]).await;
    h.send_message(&a, std::slice::from_ref(&b), &"before", false)
        .await
        .unwrap();
    assert_eq!(next_json(&mut wb).await["data"], "before");
    assert!(
        proxy.connections() > 0,
        "node 2 reaches the broker through the proxy"
    );

    proxy.pause(Direction::ToClient);
    h.send_message(&a, std::slice::from_ref(&b), &"held", false)
        .await
        .unwrap();
    // Shorter than the broker clients' timeouts: a stall, not an outage.
    let early = next_json_within(&mut wb, Duration::from_millis(500)).await;
    assert!(early.is_none(), "arrived over a paused link: {early:?}");
    proxy.heal();
    assert_eq!(next_json(&mut wb).await["data"], "held");
    cluster.assert_running();
}
