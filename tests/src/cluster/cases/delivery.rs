//! Delivery across nodes on a healthy cluster: point to point with receipts and acks,
//! channels, broadcast, any node's HTTP API, a kick, and the events a helper sees.

#![allow(clippy::unwrap_used)] // a case is a test body: a failed step fails the test

use futures_util::SinkExt;
use impush_core::{ChannelName, ClientId, Event};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{
    clients::{client_on, close_code, connect, eventually, next_json, wait_event},
    harness::{Backend, Cluster, Spec, API_KEY},
};

/// Cross-node delivery with receipts and an ack, a channel on every node, broadcast, the HTTP
/// API of any node, a kick across nodes, and events seen by a helper in another process.
pub async fn cross_node_delivery_channels_kick_and_events(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let cluster = Cluster::start(backend, &url, &Spec::new(3, "10s").without_linger());
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let cs: Vec<ClientId> = (0..3).map(|i| client_on(&h, i, "u")).collect();
    let mut ws = Vec::new();
    for c in &cs {
        ws.push(connect(&h, c).await);
        let c2 = c.clone();
        wait_event(
            &mut events,
            move |e| matches!(e, Event::Online { client, first: true, .. } if *client == c2),
        )
        .await;
    }
    eventually("all online", || async {
        h.online_clients().await.unwrap().len() == 3
    })
    .await;

    // Point to point across nodes, with receipts and an ack.
    let r = h
        .send_message(&cs[0], &cs[1..], &json!({"hi": 1}), true)
        .await
        .unwrap();
    assert_eq!(r.nodes, 2);
    for w in &mut ws[1..] {
        let f = next_json(w).await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str()),
            (Some("message"), Some(r.id.as_str()))
        );
        assert_eq!(f["data"], json!({"hi": 1}));
    }
    // The receivers are on two nodes: each node settles its own and sends one receipt frame.
    let mut st = vec![next_json(&mut ws[0]).await, next_json(&mut ws[0]).await];
    st.sort_by_key(|v| v["to"][0].as_str().unwrap().to_owned());
    assert!(st.iter().all(|v| v["status"] == "delivered"), "{st:?}");
    let mut want = vec![json!([cs[1].as_str()]), json!([cs[2].as_str()])];
    want.sort_by_key(|v| v[0].as_str().unwrap().to_owned());
    assert_eq!(vec![st[0]["to"].clone(), st[1]["to"].clone()], want);
    ws[2]
        .send(Message::Text(
            json!({"type":"ack","id": r.id.as_str()}).to_string().into(),
        ))
        .await
        .unwrap();
    let acked = next_json(&mut ws[0]).await;
    assert_eq!(
        (acked["status"].as_str(), &acked["to"]),
        (Some("acked"), &json!([cs[2].as_str()]))
    );

    // A channel with members on all nodes; broadcast.
    let room: ChannelName = "everywhere".parse().unwrap();
    h.join_channel(&room, &cs).await.unwrap();
    assert_eq!(h.channel_online(&room).await.unwrap(), 3);
    h.send_channel_message(&cs[1], &room, &"to the room")
        .await
        .unwrap();
    for w in &mut ws {
        assert_eq!(next_json(w).await["data"], "to the room");
    }
    h.broadcast(&"to all").await.unwrap();
    for w in &mut ws {
        assert_eq!(next_json(w).await["type"], "broadcast");
    }

    // Any node's HTTP API sees the whole cluster.
    let online: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/clients/online", cluster.http(1)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(online["clients"].as_array().unwrap().len(), 3, "{online}");
    assert!(online.get("partial").is_none(), "{online}");

    // Kick a client of node 3 from this process.
    assert_eq!(h.force_offline(&cs[2]).await.unwrap(), 1);
    assert_eq!(close_code(&mut ws[2]).await, 4001);
    let c2 = cs[2].clone();
    wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, last: true, .. } if *client == c2),
    )
    .await;
    // Queries follow the events (immediately with a store, within milliseconds with cluster
    // presence, whose view is fed by its own topic).
    eventually("queries agree with the kick", || async {
        !h.is_online(&cs[2]).await.unwrap().value
            && h.channel_members(&room).await.unwrap().len() == 2
    })
    .await;
}
