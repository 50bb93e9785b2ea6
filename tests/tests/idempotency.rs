//! Idempotent sends (`docs/design.md` section 7): a send whose broker publish fails part-way
//! answers 503; the retry with the same `Idempotency-Key` (or `id`, or ImHelper's
//! `send_message_with_id`) answers like a successful first call, on any node, and every
//! receiver gets the message exactly once.
//!
//! The faults are real: the nodes of an in-process cluster share one memory broker wrapped so
//! that one chosen publish fails, either before the broker has it (refused) or after (the
//! broker has it but the publisher is told it failed, as when a confirm is lost).

#![allow(clippy::unwrap_used)]

use crate::support;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use impush_core::{
    idempotency::IdempotencyKey, Broker, ChannelName, ClientId, Error, MemoryBroker,
    MemoryPresenceStore, MessageId, NodeEntry, PresenceStore, Result, SubscribeMode, Subscription,
    Topics,
};
use impush_server::{Config, ImServer};
use serde_json::{json, Value};
use support::{eventually, free_addrs, id, Client};

/// How the armed publish fails.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Not published; the publisher gets `Unavailable`.
    Refused,
    /// Published, but the publisher gets `Unavailable` (a lost confirm or reply).
    LostAck,
}

#[derive(Debug)]
struct Armed {
    topic: String,
    /// A text the payload must hold (the message id), so no other publish trips it.
    needle: String,
    fault: Fault,
}

/// The shared memory broker with one publish made to fail on demand.
#[derive(Debug, Default)]
struct FlakyBroker {
    inner: MemoryBroker,
    armed: Mutex<Option<Armed>>,
}

impl FlakyBroker {
    fn fail_next(&self, topic: &str, needle: &str, fault: Fault) {
        *self.armed.lock().unwrap() = Some(Armed {
            topic: topic.to_owned(),
            needle: needle.to_owned(),
            fault,
        });
    }

    fn tripped(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

#[async_trait]
impl Broker for FlakyBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let fault = {
            let mut armed = self.armed.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|a| {
                a.topic == topic
                    && std::str::from_utf8(&payload).is_ok_and(|p| p.contains(&a.needle))
            });
            if hit {
                armed.take().map(|a| a.fault)
            } else {
                None
            }
        };
        let failed = || Error::Unavailable {
            backend: "flaky",
            source: Some("the test made this publish fail".into()),
        };
        match fault {
            None => self.inner.publish(topic, payload).await,
            Some(Fault::Refused) => Err(failed()),
            Some(Fault::LostAck) => {
                self.inner.publish(topic, payload).await?;
                Err(failed())
            }
        }
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        self.inner.subscribe(topic, mode).await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}

/// Two nodes sharing one flaky memory broker and one presence store.
async fn cluster(f: impl Fn(&mut Config)) -> (Vec<ImServer>, Arc<FlakyBroker>) {
    let broker = Arc::new(FlakyBroker::default());
    let presence: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new());
    let addrs = free_addrs(2);
    let nodes: Vec<NodeEntry> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| NodeEntry {
            id: format!("n{}", i + 1).parse().unwrap(),
            url: format!("ws://{a}"),
        })
        .collect();
    let mut servers = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut c = support::config();
        c.node.id = nodes[i].id.clone();
        c.node.listen = *a;
        c.cluster.nodes = nodes.clone();
        f(&mut c);
        let b: Arc<dyn Broker> = broker.clone();
        servers.push(ImServer::start_with(c, b, presence.clone()).await.unwrap());
    }
    (servers, broker)
}

/// A client id the partitioner gives to `node` (tried in order: `{prefix}0`, `{prefix}1`, ...).
fn owned_by(server: &ImServer, node: &str, prefix: &str) -> ClientId {
    (0..1000)
        .map(|i| id(&format!("{prefix}{i}")))
        .find(|c| server.helper().cluster().owner(c).id.as_str() == node)
        .unwrap()
}

fn inbox(node: &str) -> String {
    Topics::new("impush").inbox(&node.parse().unwrap())
}

/// `POST {path}` on `server`'s API with an optional `Idempotency-Key`: status and body.
async fn post(server: &ImServer, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{path}", server.local_addr()))
        .bearer_auth(server.api_key())
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Asserts that nothing is queued for `c` before the answer to a ping: call it once the node
/// dropped the duplicate (frames are queued synchronously, so one would be ahead of the pong).
async fn nothing_more(c: &mut Client, who: &str) {
    c.send_json(json!({"type": "ping"})).await;
    let next = c.next_json().await;
    assert_eq!(next["type"], "pong", "{who} got a second copy: {next}");
}

/// Waits until `server` has dropped `n` more duplicates than `before`, failing if `c` gets a
/// frame first (the defect this file is about: a second copy), then checks that nothing is
/// queued for `c` behind the drop.
async fn dropped_not_delivered(server: &ImServer, before: u64, n: u64, c: &mut Client, who: &str) {
    let dropped = eventually(|| async { server.metrics().duplicates_dropped() >= before + n });
    tokio::select! {
        f = c.next_json() => panic!("{who} got the message twice: {f}"),
        () = dropped => {}
    }
    nothing_more(c, who).await;
}

/// The three ways of naming a send: the header, the body's `id`, ImHelper.
#[derive(Debug, Clone, Copy)]
enum Way {
    Header,
    BodyId,
    Helper,
}

/// Sends a point-to-point message through `server` the `way` given: the status the caller
/// sees (ImHelper's transient errors as 503) and the answer.
async fn send_as(
    way: Way,
    server: &ImServer,
    header: Option<&str>,
    body: &Value,
    id_for_helper: MessageId,
    to: [ClientId; 2],
    data: Value,
) -> (u16, Value) {
    match way {
        Way::Header | Way::BodyId => post(server, "/api/v1/messages", header, body).await,
        Way::Helper => {
            let r = server
                .helper()
                .send_message_with_id(id_for_helper, &id("shop"), &to, &data, false)
                .await;
            match r {
                Ok(r) => (200, json!({ "id": r.id, "nodes": r.nodes })),
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    (503, Value::Null)
                }
            }
        }
    }
}

#[tokio::test]
async fn a_send_that_failed_part_way_is_retried_without_duplicates() {
    let (servers, broker) = cluster(|_| {}).await;
    let (n1, n2) = (&servers[0], &servers[1]);
    let alice = owned_by(n1, "n1", "alice");
    let bob = owned_by(n1, "n2", "bob");
    let mut a = Client::connect(&n1.helper(), &alice, 1).await;
    let mut b = Client::connect(&n1.helper(), &bob, 1).await;

    for (round, way) in [Way::Header, Way::BodyId, Way::Helper]
        .into_iter()
        .enumerate()
    {
        let key = format!("order-{round}");
        let expected: MessageId = match way {
            Way::Header | Way::Helper => IdempotencyKey::new(key.as_str()).unwrap().message_id(),
            Way::BodyId => format!("caller-chosen-{round}").parse().unwrap(),
        };
        let data = json!({ "round": round });
        let mut body = json!({ "from": "shop", "to": [alice, bob], "data": data });
        let header = match way {
            Way::Header => Some(key.as_str()),
            Way::BodyId => {
                body["id"] = json!(expected);
                None
            }
            Way::Helper => None,
        };
        // alice (n1) is published to first and gets it; bob's node inbox refuses it.
        broker.fail_next(&inbox("n2"), &format!("\"round\":{round}"), Fault::Refused);
        let send = |server| {
            let to = [alice.clone(), bob.clone()];
            send_as(
                way,
                server,
                header,
                &body,
                expected.clone(),
                to,
                data.clone(),
            )
        };
        let (status, _) = send(n1).await;
        assert!(broker.tripped());
        assert_eq!(status, 503, "{way:?}: the first attempt fails part-way");
        let first = a.next_json().await;
        assert_eq!(first["data"], data);

        // The retry, on the other node's API: bob gets it and alice not again.
        let (before1, before2) = (
            n1.metrics().duplicates_dropped(),
            n2.metrics().duplicates_dropped(),
        );
        let (status, answer) = send(n2).await;
        assert_eq!(status, 200, "{way:?}: {answer}");
        let got = b.next_json().await;
        assert_eq!(got["data"], data);
        dropped_not_delivered(n1, before1, 1, &mut a, "alice").await;
        // Both got the id the key (or the caller) names, and the answer is a first call's.
        assert_eq!(
            (&first["id"], &got["id"]),
            (&json!(expected), &json!(expected))
        );
        assert_eq!(answer, json!({ "id": expected, "nodes": 2 }), "{way:?}");

        // Once more after it worked: the same answer, and nobody gets it again.
        let (status, again) = send(n1).await;
        assert_eq!((status, &again), (200, &answer), "{way:?}");
        dropped_not_delivered(n1, before1, 2, &mut a, "alice").await;
        dropped_not_delivered(n2, before2, 1, &mut b, "bob").await;
    }
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

fn room() -> ChannelName {
    "room".parse().unwrap()
}

/// A channel message whose publish reached the broker although the API answered 503 (history
/// on: it went to the stream's sequencer) is numbered once when retried.
#[tokio::test]
async fn a_channel_message_retried_after_a_lost_ack_is_numbered_once() {
    let (servers, broker) = cluster(|_| {}).await;
    let (n1, n2) = (&servers[0], &servers[1]);
    let h = n1.helper();
    let alice = owned_by(n1, "n1", "alice");
    let bob = owned_by(n1, "n2", "bob");
    let mut a = Client::connect(&h, &alice, 1).await;
    let mut b = Client::connect(&h, &bob, 1).await;
    h.join_channel(&room(), &[alice.clone(), bob.clone()])
        .await
        .unwrap();
    // Both nodes have the membership once a first message reaches both.
    h.send_channel_message(&id("shop"), &room(), &"warm-up")
        .await
        .unwrap();
    let first = a.next_json().await;
    assert_eq!(b.next_json().await["data"], "warm-up");

    let owner = h.cluster().stream_owner("room").id.clone();
    let sequencer = if owner.as_str() == "n1" { n1 } else { n2 };
    let key = "announcement-1";
    let expected = IdempotencyKey::new(key)
        .unwrap()
        .channel_message_id(&room());
    broker.fail_next(&inbox(owner.as_str()), "hello room", Fault::LostAck);
    let body = json!({ "from": "shop", "data": "hello room" });
    let (status, _) = post(n1, "/api/v1/channels/room/messages", Some(key), &body).await;
    assert!(broker.tripped());
    assert_eq!(status, 503);
    let got_a = a.next_json().await;
    let got_b = b.next_json().await;
    for got in [&got_a, &got_b] {
        assert_eq!(got["data"], "hello room");
        assert_eq!(got["offset"], first["offset"].as_u64().unwrap() + 1);
    }

    let before = sequencer.metrics().duplicates_dropped();
    let (status, answer) = post(n2, "/api/v1/channels/room/messages", Some(key), &body).await;
    assert_eq!(status, 200, "{answer}");
    dropped_not_delivered(sequencer, before, 1, &mut a, "alice").await;
    nothing_more(&mut b, "bob").await;
    assert_eq!(got_a["id"], json!(expected));
    assert_eq!(answer, json!({ "id": expected }));
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// Without history a broadcast goes to every node directly; a retry after a lost ack is
/// dropped by every node.
#[tokio::test]
async fn a_broadcast_retried_without_history_is_delivered_once() {
    let (servers, broker) = cluster(|c| c.history.size = 0).await;
    let (n1, n2) = (&servers[0], &servers[1]);
    let h = n1.helper();
    let alice = owned_by(n1, "n1", "alice");
    let bob = owned_by(n1, "n2", "bob");
    let mut a = Client::connect(&h, &alice, 1).await;
    let mut b = Client::connect(&h, &bob, 1).await;

    let key = "maintenance-tonight";
    let expected = IdempotencyKey::new(key).unwrap().broadcast_id();
    broker.fail_next("impush.all", "down at 2am", Fault::LostAck);
    let body = json!({ "data": {"text": "down at 2am"} });
    let (status, _) = post(n2, "/api/v1/broadcast", Some(key), &body).await;
    assert!(broker.tripped());
    assert_eq!(status, 503);
    for c in [&mut a, &mut b] {
        let got = c.next_json().await;
        assert_eq!(got["data"]["text"], "down at 2am");
    }
    let (before1, before2) = (
        n1.metrics().duplicates_dropped(),
        n2.metrics().duplicates_dropped(),
    );
    let (status, answer) = post(n1, "/api/v1/broadcast", Some(key), &body).await;
    assert_eq!(status, 200, "{answer}");
    dropped_not_delivered(n1, before1, 1, &mut a, "alice").await;
    dropped_not_delivered(n2, before2, 1, &mut b, "bob").await;
    assert_eq!(answer, json!({ "id": expected }));
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn keys_and_ids_are_checked() {
    let (servers, _broker) = cluster(|_| {}).await;
    let n1 = &servers[0];
    let msg = json!({ "from": "shop", "to": ["alice"], "data": 1 });
    let long = "k".repeat(129);
    for bad in ["", long.as_str(), "tab\there"] {
        let (status, body) = post(n1, "/api/v1/messages", Some(bad), &msg).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_idempotency_key")),
            "{bad:?}: {body}"
        );
    }
    let mut with_id = msg.clone();
    with_id["id"] = json!("mine-1");
    let (status, body) = post(n1, "/api/v1/messages", None, &with_id).await;
    assert_eq!((status, &body["id"]), (200, &json!("mine-1")));
    // With a key too, the chosen id names the message.
    let (status, body) = post(n1, "/api/v1/messages", Some("k"), &with_id).await;
    assert_eq!((status, &body["id"]), (200, &json!("mine-1")));
    for bad in [json!("x".repeat(65)), json!(null), json!(7), json!("")] {
        with_id["id"] = bad.clone();
        let (status, body) = post(n1, "/api/v1/messages", None, &with_id).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_json")),
            "id {bad}: {body}"
        );
    }
    // The same key names different messages for different kinds of send.
    let (_, m) = post(n1, "/api/v1/messages", Some("same"), &msg).await;
    let (_, c) = post(
        n1,
        "/api/v1/channels/room/messages",
        Some("same"),
        &json!({ "from": "shop", "data": 1 }),
    )
    .await;
    let (_, b) = post(n1, "/api/v1/broadcast", Some("same"), &json!({ "data": 1 })).await;
    assert_ne!(m["id"], c["id"]);
    assert_ne!(c["id"], b["id"]);
    assert_eq!(
        m["id"],
        json!(IdempotencyKey::new("same").unwrap().message_id())
    );
    for s in servers {
        s.shutdown().await.unwrap();
    }
}
