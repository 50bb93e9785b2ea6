//! Nothing lost on the way to the device (`docs/design.md` section 15): the loss probe.
//! Receivers whose links are reset or frozen at random moments while messages flow to each,
//! reconnecting after random pauses (and, in one variant, a node killed mid-run): every
//! message the API accepted reaches every receiver exactly once by id, in order per sender.

use impush_core::ClientId;
use serde_json::json;

use crate::cluster::{
    clients::{clients_on, wait_online},
    harness::{Backend, Cluster, Spec},
    loss::{self, LIVELY, RECEIVERS, RUN},
    probe::Probe,
};

/// The loss probe without node faults.
pub async fn loss_probe_links_reset_and_frozen(backend: &Backend) {
    loss_probe(backend, false).await;
}

/// The loss probe with the receivers' busiest node killed (`kill -9`) mid-run and restarted.
pub async fn loss_probe_with_a_node_killed(backend: &Backend) {
    loss_probe(backend, true).await;
}

async fn loss_probe(backend: &Backend, kill: bool) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let spec = Spec::new(2, "2s").with_offline().limits(LIVELY);
    let mut cluster = Cluster::start(backend, &url, &spec);
    let h = cluster.helper().await;
    // Half the receivers on each node.
    let mut receivers: Vec<ClientId> = clients_on(&h, 0, "rx", RECEIVERS / 2);
    receivers.extend(clients_on(&h, 1, "ry", RECEIVERS / 2));
    let probes: Vec<Probe> = receivers
        .iter()
        .map(|c| Probe::start(h.clone(), c.clone()))
        .collect();
    wait_online(&h, &receivers).await;

    let chaos = loss::chaos(&probes, RUN);
    // Each message goes to every receiver, from one sender through node 1's API.
    let send = cluster.http(0) + "/api/v1/messages";
    let (mut killed, mut restarted) = (false, false);
    let sent = loss::send_to_all(&send, &receivers, RUN, |elapsed| {
        if kill && !killed && elapsed >= RUN / 3 {
            cluster.kill9(1);
            killed = true;
        }
        if kill && !restarted && elapsed >= RUN * 2 / 3 {
            cluster.restart(1);
            restarted = true;
        }
    })
    .await;
    chaos.await.expect("chaos task");

    // Order per sender is checked with links reset and frozen (a client back before its node
    // saw its old link die names it, and gets what it held first). Across a node crash, what
    // waited in the dead node's inbox arrives after newer messages sent to the client's next
    // node meanwhile (`docs/design.md` section 15): there order is counted and printed. Loss
    // and duplicates are checked everywhere.
    let label = format!(
        "{}{}",
        backend.name(),
        if kill { ", node killed" } else { "" }
    );
    let ordered = !kill;
    loss::check_every_receiver(&probes, &sent, ordered, &label).await;
}

/// Connects `client` with a `resume=` request built from `positions` (stream -> epoch ->
/// offset).
async fn connect_resuming(
    h: &impush_helper::ImHelper,
    client: &ClientId,
    positions: &serde_json::Value,
) -> crate::cluster::clients::Ws {
    let url = h
        .prepare_connect(client, serde_json::Value::Null)
        .expect("a connect URL")
        .url;
    let encoded: String = positions
        .to_string()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    tokio_tungstenite::connect_async(format!("{url}&resume={encoded}"))
        .await
        .expect("connects")
        .0
}

/// Channel resume across processes: a member away for a moment gets exactly the publications
/// it missed, in order, then `recovered: true`; away past the window, `recovered: false`.
pub async fn channel_resume_after_a_short_absence_and_past_the_window(backend: &Backend) {
    use crate::cluster::clients::{client_on, connect, next_json};
    let Some(url) = backend.shared_url() else {
        return;
    };
    let spec = Spec::new(2, "3s");
    let mut spec = spec;
    spec.extra.push_str("[history]\nsize = 20\n");
    let cluster = Cluster::start(backend, &url, &spec);
    let h = cluster.helper().await;
    let room: impush_core::ChannelName = "resumed".parse().expect("a channel name");
    // The member sits on n1; publications go through n2's helper-side API too, so they cross
    // nodes (and reach the stream's sequencer, wherever it is).
    let alice = client_on(&h, 0, "alice");
    // An observer on the same node: once it has a publication, alice's node has it too.
    let watcher = client_on(&h, 0, "watcher");
    let mut ws = connect(&h, &alice).await;
    let mut watch = connect(&h, &watcher).await;
    wait_online(&h, &[alice.clone(), watcher.clone()]).await;
    h.join_channel(&room, &[alice.clone(), watcher.clone()])
        .await
        .expect("join");
    let publish = |tag: &'static str, n: usize| {
        let h = h.clone();
        let room = room.clone();
        async move {
            for i in 0..n {
                h.send_channel_message(&"bob".parse().expect("id"), &room, &format!("{tag}{i}"))
                    .await
                    .expect("publish");
            }
        }
    };
    publish("seen", 3).await;
    let mut last = None;
    for _ in 0..3 {
        let f = next_json(&mut ws).await;
        last = Some((
            f["epoch"].as_str().expect("an epoch").to_owned(),
            f["offset"].as_u64().expect("an offset"),
        ));
    }
    let (epoch, offset) = last.expect("three frames");
    drop(ws);

    // Away for a moment: exactly what was missed, in order.
    publish("missed", 5).await;
    while next_json(&mut watch).await["data"] != "missed4" {}
    let positions = json!({ "channels": { "resumed": { epoch.clone(): offset } } });
    let mut ws = connect_resuming(&h, &alice, &positions).await;
    let mut data = Vec::new();
    let answer = loop {
        let f = next_json(&mut ws).await;
        if f["type"] == "resume" {
            break f;
        }
        data.push(f["data"].as_str().unwrap_or_default().to_owned());
    };
    assert_eq!(answer["recovered"], true, "{}: {answer}", backend.name());
    assert_eq!(
        data,
        ["missed0", "missed1", "missed2", "missed3", "missed4"]
    );
    drop(ws);

    // Away past the window (20 kept): told so, nothing replayed.
    publish("lost", 30).await;
    while next_json(&mut watch).await["data"] != "lost29" {}
    let mut ws = connect_resuming(&h, &alice, &positions).await;
    let f = next_json(&mut ws).await;
    assert_eq!(
        (f["type"].as_str(), &f["recovered"], f["reason"].as_str()),
        (Some("resume"), &json!(false), Some("window")),
        "{}: {f}",
        backend.name()
    );
}
