//! Batch sends (`POST /api/v1/messages/batch`, `ImHelper::send_messages`; `docs/design.md`
//! sections 6 and 7) against live nodes and real WebSocket clients: receipts, one broker
//! payload per node over a cluster with each sender's order kept, bounds and malformed items
//! refusing the whole batch by name, idempotent retries after a part-way failure, the broker
//! ack of a batch waiting for its last message to settle (and a redelivery when it never does),
//! and a dead node's batch re-routed by the node that takes its inbox over.
//!
//! The nodes of a test share one memory broker wrapped as a real broker would be seen: it
//! outlives a node's shutdown, counts the payloads published per topic, can refuse publishes
//! to chosen topics, and records which queue deliveries were acked.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{
    envelope::{self, Deliver, NodeCommand},
    Broker, ClientId, Delivery, Error, InboxLimits, InboxStats, MemoryBroker, MemoryOfflineStore,
    MemoryPresenceStore, MessageId, NodeEntry, NodeStatus, OfflineStore, PresenceStore, Result,
    Stored, StoredMessage, SubscribeMode, Subscription, Topics,
};
use impush_helper::OutgoingMessage;
use impush_server::{Config, ImServer};
use serde_json::{json, value::RawValue, Value};
use support::{eventually, free_addrs, id, Client};

// ------------------------------------------------------------------------------ the broker

/// The shared memory broker, observed (see the module docs).
#[derive(Debug, Default)]
struct Observed {
    inner: MemoryBroker,
    published: Mutex<HashMap<String, usize>>,
    refused: Mutex<HashSet<String>>,
    acked: Arc<Mutex<Vec<String>>>,
}

impl Observed {
    fn published(&self, topic: &str) -> usize {
        self.published
            .lock()
            .unwrap()
            .get(topic)
            .copied()
            .unwrap_or(0)
    }

    fn refuse(&self, topics: &[String]) {
        *self.refused.lock().unwrap() = topics.iter().cloned().collect();
    }

    /// How many acked queue deliveries contain `needle`.
    fn acked_with(&self, needle: &str) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.contains(needle))
            .count()
    }
}

/// Records the payload of a queue delivery when it is acked.
struct RecordAck {
    inner: impush_core::Acker,
    payload: Bytes,
    log: Arc<Mutex<Vec<String>>>,
}

impl impush_core::Acknowledge for RecordAck {
    fn ack(self: Box<Self>) {
        let text = String::from_utf8_lossy(&self.payload).into_owned();
        self.log.lock().unwrap().push(text);
        self.inner.ack();
    }
}

#[async_trait]
impl Broker for Observed {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        if self.refused.lock().unwrap().contains(topic) {
            return Err(Error::Unavailable {
                backend: "observed",
                source: Some("the test refuses publishes to this topic".into()),
            });
        }
        *self
            .published
            .lock()
            .unwrap()
            .entry(topic.to_owned())
            .or_default() += 1;
        self.inner.publish(topic, payload).await
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        let queue = matches!(mode, SubscribeMode::Queue { .. });
        let sub = self.inner.subscribe(topic, mode).await?;
        if !queue {
            return Ok(sub);
        }
        let log = self.acked.clone();
        Ok(sub
            .map(move |item| {
                item.map(|d| {
                    let (payload, inner) = d.into_parts();
                    let ack = RecordAck {
                        inner,
                        payload: payload.clone(),
                        log: log.clone(),
                    };
                    Delivery::with_ack(payload, ack)
                })
            })
            .boxed())
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    /// A node's shutdown closes its broker; this one outlives the node, as a real one does.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------------------ the nodes

/// Nodes `n1..=nN` in this process sharing one observed broker and one presence store.
struct Nodes {
    broker: Arc<Observed>,
    presence: Arc<dyn PresenceStore>,
    configs: Vec<Config>,
    servers: Vec<Option<ImServer>>,
}

impl Nodes {
    async fn start(n: usize, tune: impl Fn(&mut Config)) -> Nodes {
        let addrs = free_addrs(n);
        let entries: Vec<NodeEntry> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| NodeEntry {
                id: format!("n{}", i + 1).parse().unwrap(),
                url: format!("ws://{a}"),
            })
            .collect();
        let mut nodes = Nodes {
            broker: Arc::new(Observed::default()),
            presence: Arc::new(MemoryPresenceStore::new()),
            configs: Vec::new(),
            servers: Vec::new(),
        };
        for (i, a) in addrs.iter().enumerate() {
            let mut c = support::config();
            c.node.id = entries[i].id.clone();
            c.node.listen = *a;
            c.cluster.nodes = entries.clone();
            tune(&mut c);
            nodes.configs.push(c);
            nodes.servers.push(None);
            nodes.up(i, None).await;
        }
        // Every node sees every other live before a case starts (owners are computed from
        // the live view).
        for i in 0..n {
            let h = nodes.node(i).helper();
            eventually(|| async {
                h.cluster()
                    .statuses()
                    .iter()
                    .all(|(_, s)| *s == NodeStatus::Live)
            })
            .await;
        }
        nodes
    }

    /// Starts node `i` (again, on its address: retried until the previous run let go of it),
    /// with `offline` as its offline store when given.
    async fn up(&mut self, i: usize, offline: Option<Arc<dyn OfflineStore>>) {
        let deadline = tokio::time::Instant::now() + support::WAIT;
        loop {
            let broker: Arc<dyn Broker> = self.broker.clone();
            let mut b = ImServer::builder(self.configs[i].clone())
                .broker(broker)
                .presence(self.presence.clone());
            if let Some(o) = &offline {
                b = b.offline(o.clone());
            }
            match b.start().await {
                Ok(server) => {
                    self.servers[i] = Some(server);
                    return;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    assert!(format!("{e:?}").contains("AddrInUse"), "node starts: {e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("node starts: {e:?}"),
            }
        }
    }

    async fn stop(&mut self, i: usize) {
        let server = self.servers[i].take().expect("node is running");
        server.shutdown().await.unwrap();
    }

    fn node(&self, i: usize) -> &ImServer {
        self.servers[i].as_ref().expect("node is running")
    }

    /// A client id (`{tag}0`, `{tag}1`, ...) whose owner is `n{i+1}`.
    fn owned_by(&self, i: usize, tag: &str) -> String {
        let want = format!("n{}", i + 1);
        let h = self.node(i).helper();
        (0..)
            .map(|k| format!("{tag}{k}"))
            .find(|c| h.cluster().owner(&id(c)).id.as_str() == want)
            .unwrap()
    }
}

fn inbox(node: &str) -> String {
    Topics::new("impush").inbox(&node.parse().unwrap())
}

/// `POST {path}` on `server` with the API key and an optional `Idempotency-Key`.
async fn post(server: &ImServer, path: &str, key: Option<&str>, body: String) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{path}", server.local_addr()))
        .bearer_auth(server.api_key())
        .body(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn batch(server: &ImServer, key: Option<&str>, messages: Value) -> (u16, Value) {
    post(
        server,
        "/api/v1/messages/batch",
        key,
        json!({ "messages": messages }).to_string(),
    )
    .await
}

/// The next `message` frame's `data` and `id`, skipping other frames.
async fn next_message(c: &mut Client) -> (Value, String) {
    loop {
        let f = c.next_json().await;
        if f["type"] == "message" {
            return (f["data"].clone(), f["id"].as_str().unwrap().to_owned());
        }
    }
}

/// Asserts that the next frame `c` gets is `marker` (sent after whatever must not arrive).
async fn next_is(c: &mut Client, marker: &str) {
    let (data, _) = next_message(c).await;
    assert_eq!(data, json!(marker), "something arrived before the marker");
}

async fn send_one(server: &ImServer, to: &str, data: &str) {
    let body = json!({"from": "test", "to": [to], "data": data}).to_string();
    let (status, v) = post(server, "/api/v1/messages", None, body).await;
    assert_eq!(status, 200, "{v}");
}

fn ids(results: &Value) -> Vec<String> {
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------------------ the cases

#[tokio::test]
async fn a_batch_reaches_every_receiver_with_receipts() {
    let nodes = Nodes::start(1, |_| {}).await;
    let server = nodes.node(0);
    let h = server.helper();
    let mut shop = Client::connect(&h, "shop", 1).await;
    let mut alice = Client::connect(&h, "alice", 1).await;
    let mut bob = Client::connect(&h, "bob", 1).await;
    let before = nodes.broker.published(&inbox("n1"));

    let (status, v) = batch(
        server,
        None,
        json!([
            {"from": "shop", "to": ["alice"], "data": {"n": 1}, "receipt": true},
            {"from": "shop", "to": ["bob"], "data": {"n": 2}, "receipt": true},
            {"from": "shop", "to": ["alice", "bob", "alice"], "data": null},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let results = &v["results"];
    assert_eq!(results.as_array().unwrap().len(), 3, "{v}");
    for r in results.as_array().unwrap() {
        assert_eq!(r["nodes"], 1, "{v}");
        assert!(r.get("error").is_none(), "{v}");
    }
    let ids = ids(results);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "{v}");
    assert_eq!(
        nodes.broker.published(&inbox("n1")) - before,
        1,
        "the batch is one payload"
    );

    assert_eq!(
        next_message(&mut alice).await,
        (json!({"n": 1}), ids[0].clone())
    );
    assert_eq!(
        next_message(&mut alice).await,
        (Value::Null, ids[2].clone())
    );
    assert_eq!(
        next_message(&mut bob).await,
        (json!({"n": 2}), ids[1].clone())
    );
    assert_eq!(next_message(&mut bob).await, (Value::Null, ids[2].clone()));

    // One `delivered` receipt for each message that asked, none for the third.
    let mut receipts = HashMap::new();
    for _ in 0..2 {
        let f = shop.next_json().await;
        assert_eq!(
            (&f["type"], &f["status"]),
            (&json!("receipt"), &json!("delivered")),
            "{f}"
        );
        receipts.insert(f["id"].as_str().unwrap().to_owned(), f["to"].clone());
    }
    assert_eq!(receipts[&ids[0]], json!(["alice"]));
    assert_eq!(receipts[&ids[1]], json!(["bob"]));
    alice.send_json(json!({"type": "ack", "id": ids[0]})).await;
    let f = shop.next_json().await;
    assert_eq!(
        (&f["id"], &f["status"], &f["to"]),
        (&json!(ids[0]), &json!("acked"), &json!(["alice"])),
        "{f}"
    );
    // Nothing else for the sender: no receipt for the message that asked for none.
    shop.send_json(json!({"type": "ping"})).await;
    assert_eq!(shop.next_json().await["type"], "pong");
}

#[tokio::test]
async fn a_batch_over_two_nodes_is_one_payload_per_node_in_order() {
    let nodes = Nodes::start(2, |_| {}).await;
    let (n1, n2) = (nodes.node(0), nodes.node(1));
    let (a, b) = (nodes.owned_by(0, "a"), nodes.owned_by(1, "b"));
    let h = n1.helper();
    let mut ca = Client::connect(&h, &a, 1).await;
    let mut cb = Client::connect(&h, &b, 1).await;
    let before = (
        nodes.broker.published(&inbox("n1")),
        nodes.broker.published(&inbox("n2")),
    );

    // 30 messages from one sender, alternating receivers, then one to both.
    let mut messages: Vec<Value> = (0..30)
        .map(|i| json!({"from": "shop", "to": [if i % 2 == 0 { &a } else { &b }], "data": i}))
        .collect();
    messages.push(json!({"from": "shop", "to": [&a, &b], "data": "both"}));
    let (status, v) = batch(n1, None, Value::Array(messages)).await;
    assert_eq!(status, 200, "{v}");
    let nodes_of: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["nodes"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes_of[..30], [1; 30]);
    assert_eq!(nodes_of[30], 2, "the last message goes to both nodes");
    let after = (
        nodes.broker.published(&inbox("n1")),
        nodes.broker.published(&inbox("n2")),
    );
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "one payload per node for the whole batch"
    );
    for i in (0..30).step_by(2) {
        assert_eq!(next_message(&mut ca).await.0, json!(i), "{a}'s order");
        assert_eq!(next_message(&mut cb).await.0, json!(i + 1), "{b}'s order");
    }
    assert_eq!(next_message(&mut ca).await.0, json!("both"));
    assert_eq!(next_message(&mut cb).await.0, json!("both"));

    // The same through ImHelper, from the other node's helper, with a chosen id.
    let chosen: MessageId = "chosen-1".parse().unwrap();
    let out = vec![
        OutgoingMessage::new(id("shop"), vec![id(&b)], &json!("via helper 1"))
            .unwrap()
            .with_id(chosen.clone()),
        OutgoingMessage::new(id("shop"), vec![id(&a), id(&b)], &json!("via helper 2")).unwrap(),
    ];
    let reports = n2.helper().send_messages(out).await.unwrap();
    let reports: Vec<_> = reports.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(reports[0].id, chosen);
    assert_eq!((reports[0].nodes, reports[1].nodes), (1, 2));
    assert_eq!(
        next_message(&mut cb).await,
        (json!("via helper 1"), "chosen-1".to_owned())
    );
    assert_eq!(next_message(&mut cb).await.0, json!("via helper 2"));
    assert_eq!(next_message(&mut ca).await.0, json!("via helper 2"));
    // An empty receiver list refuses the whole batch: nothing is published.
    let before = nodes.broker.published(&inbox("n1"));
    let bad = vec![
        OutgoingMessage::new(id("shop"), vec![id(&a)], &1).unwrap(),
        OutgoingMessage::new(id("shop"), vec![], &2).unwrap(),
    ];
    let err = n2.helper().send_messages(bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("message 1"), "{err}");
    assert_eq!(nodes.broker.published(&inbox("n1")), before);
}

#[tokio::test]
async fn bounds_and_malformed_items_refuse_the_whole_batch_by_name() {
    let nodes = Nodes::start(1, |c| {
        c.limits.max_batch_messages = 3;
        c.limits.max_receivers_per_message = 4;
        c.limits.max_body_bytes = 16 * 1024;
    })
    .await;
    let server = nodes.node(0);
    let mut alice = Client::connect(&server.helper(), "alice", 1).await;
    let ok = json!({"from": "s", "to": ["alice"], "data": "must not arrive"});
    let to = |n: usize| -> Value { (0..n).map(|i| format!("r{i}")).collect() };
    let with_to = |n: usize| json!({"from": "s", "to": to(n), "data": 1});
    let big = json!({"from": "s", "to": ["alice"], "data": "x".repeat(20_000)});
    let long_key = "k".repeat(129);
    let cases: Vec<(String, Option<&str>, u16, &str, &str)> = vec![
        (
            json!({"messages": []}).to_string(),
            None,
            422,
            "invalid_request",
            "messages",
        ),
        (
            json!({"messages": [&ok, &ok, &ok, &ok]}).to_string(),
            None,
            413,
            "too_many_messages",
            "messages",
        ),
        (
            json!({"messages": [&ok, with_to(5)]}).to_string(),
            None,
            413,
            "too_many_receivers",
            "messages[1].to",
        ),
        (
            // 2 + 2 + 1 receivers: over the 4 a whole batch may list, at the third message.
            json!({"messages": [with_to(2), with_to(2), &ok]}).to_string(),
            None,
            413,
            "too_many_receivers",
            "messages[2].to",
        ),
        (
            json!({"messages": [&ok, &ok, with_to(0)]}).to_string(),
            None,
            422,
            "invalid_request",
            "messages[2].to",
        ),
        (
            json!({"messages": [&ok, {"from": "", "to": ["alice"], "data": 1}]}).to_string(),
            None,
            400,
            "invalid_json",
            "messages[1].from",
        ),
        (
            json!({"messages": [&ok, {"from": "s", "to": ["alice", 5], "data": 1}]}).to_string(),
            None,
            400,
            "invalid_json",
            "messages[1].to[1]",
        ),
        (
            json!({"messages": [&ok, {"from": "s", "to": ["alice"]}]}).to_string(),
            None,
            400,
            "invalid_json",
            "messages[1].data",
        ),
        (
            json!({"messages": [&ok, {"from": "s", "to": ["alice"], "data": 1, "cc": []}]})
                .to_string(),
            None,
            400,
            "invalid_json",
            "messages[1].cc",
        ),
        (
            json!({"messages": [&ok, &big]}).to_string(),
            None,
            413,
            "body_too_large",
            "",
        ),
        (
            json!({"messages": [&ok]}).to_string(),
            Some(&long_key),
            400,
            "invalid_idempotency_key",
            "",
        ),
    ];
    let before = nodes.broker.published(&inbox("n1"));
    for (body, key, status, code, at) in cases {
        let (got, v) = post(server, "/api/v1/messages/batch", key, body.clone()).await;
        let what = format!("{}…", &body[..body.len().min(120)]);
        assert_eq!(
            (got, v["error"].as_str().unwrap_or("")),
            (status, code),
            "{what}: {v}"
        );
        if at.is_empty() {
            assert!(v.get("at").is_none(), "{what}: {v}");
        } else {
            assert_eq!(v["at"], at, "{what}: {v}");
            assert!(v["message"].as_str().unwrap().contains(at), "{what}: {v}");
        }
    }
    assert_eq!(
        nodes.broker.published(&inbox("n1")),
        before,
        "a refused batch publishes nothing"
    );
    let (status, v) = batch(
        server,
        None,
        json!([{"from": "s", "to": ["alice"], "data": "marker"}]),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    next_is(&mut alice, "marker").await;
}

#[tokio::test]
async fn a_batch_that_failed_part_way_is_retried_once_with_its_key() {
    let nodes = Nodes::start(2, |_| {}).await;
    let (n1, n2) = (nodes.node(0), nodes.node(1));
    let (a, b) = (nodes.owned_by(0, "a"), nodes.owned_by(1, "b"));
    let mut ca = Client::connect(&n1.helper(), &a, 1).await;
    let mut cb = Client::connect(&n1.helper(), &b, 1).await;
    let messages = json!([
        {"from": "shop", "to": [&a], "data": "x"},
        {"from": "shop", "to": [&b], "data": "y"},
        {"from": "shop", "to": [&a, &b], "data": "z"},
    ]);

    // n2's inbox refuses: x goes out, y does not, z reaches a only.
    nodes.broker.refuse(&[inbox("n2")]);
    let (status, first) = batch(n1, Some("order-7"), messages.clone()).await;
    assert_eq!(status, 200, "{first}");
    let r = &first["results"];
    assert_eq!(r[0]["nodes"], 1, "{first}");
    for i in [1, 2] {
        assert_eq!(r[i]["error"]["error"], "unavailable", "{first}");
        assert!(r[i].get("nodes").is_none(), "{first}");
    }
    let first_ids = ids(r);
    assert_eq!(next_message(&mut ca).await.0, json!("x"));
    assert_eq!(next_message(&mut ca).await.0, json!("z"));

    // Nothing went out at all: 503, as for a single send.
    nodes.broker.refuse(&[inbox("n1"), inbox("n2")]);
    let (status, v) = batch(n1, Some("order-7"), messages.clone()).await;
    assert_eq!((status, &v["error"]), (503, &json!("unavailable")), "{v}");

    // The retry, on the other node: the same ids, everything sent, nobody gets anything twice.
    nodes.broker.refuse(&[]);
    let dropped = n1.metrics().duplicates_dropped();
    let (status, again) = batch(n2, Some("order-7"), messages.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(ids(&again["results"]), first_ids);
    for (i, n) in [1, 1, 2].into_iter().enumerate() {
        assert_eq!(again["results"][i]["nodes"], n, "{again}");
    }
    assert_eq!(
        next_message(&mut cb).await,
        (json!("y"), first_ids[1].clone())
    );
    assert_eq!(
        next_message(&mut cb).await,
        (json!("z"), first_ids[2].clone())
    );
    eventually(|| async { n1.metrics().duplicates_dropped() >= dropped + 2 }).await;
    send_one(n1, &a, "marker").await;
    next_is(&mut ca, "marker").await;
    send_one(n1, &b, "marker").await;
    next_is(&mut cb, "marker").await;
}

/// A memory offline store whose `store` for one client waits until the test opens it.
#[derive(Debug)]
struct GatedStore {
    inner: MemoryOfflineStore,
    gated: ClientId,
    open: tokio::sync::watch::Sender<bool>,
}

impl GatedStore {
    fn new(gated: &str) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryOfflineStore::new(InboxLimits::default()),
            gated: id(gated),
            open: tokio::sync::watch::channel(false).0,
        })
    }
}

#[async_trait]
impl OfflineStore for GatedStore {
    async fn store(&self, client: &ClientId, message: StoredMessage) -> Result<Stored> {
        if *client == self.gated {
            let mut rx = self.open.subscribe();
            let _ = rx.wait_for(|open| *open).await;
        }
        self.inner.store(client, message).await
    }
    async fn fetch(&self, client: &ClientId, limit: usize) -> Result<Vec<StoredMessage>> {
        self.inner.fetch(client, limit).await
    }
    async fn remove(&self, client: &ClientId, ids: &[MessageId]) -> Result<()> {
        self.inner.remove(client, ids).await
    }
    async fn stats(&self, client: &ClientId) -> Result<InboxStats> {
        self.inner.stats(client).await
    }
    async fn clear(&self, client: &ClientId) -> Result<usize> {
        self.inner.clear(client).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn clients(&self, limit: usize) -> Result<Vec<ClientId>> {
        self.inner.clients(limit).await
    }
    fn is_shared(&self) -> bool {
        false
    }
}

/// One node with the offline inbox in a store that holds `bob`'s messages at the door, alice
/// and the sender connected, and a batch sent with a message to each of alice and bob: the
/// batch's ids, and alice's client after it got hers. Returns once alice's message settled
/// (its share of the batch's ack went out): a single message to alice sent afterwards was
/// acked, and the receipts task handles settled messages in order.
async fn batch_with_one_unsettled_message(
    nodes: &mut Nodes,
    store: Arc<GatedStore>,
) -> (Vec<String>, Client) {
    nodes.stop(0).await;
    nodes.up(0, Some(store)).await;
    let server = nodes.node(0);
    let h = server.helper();
    let mut shop = Client::connect(&h, "shop", 1).await;
    let mut alice = Client::connect(&h, "alice", 1).await;
    let (status, v) = batch(
        server,
        None,
        json!([
            {"from": "shop", "to": ["alice"], "data": "for alice", "receipt": true},
            {"from": "shop", "to": ["bob"], "data": "for bob"},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let ids = ids(&v["results"]);
    assert_eq!(next_message(&mut alice).await.0, json!("for alice"));
    let f = shop.next_json().await;
    assert_eq!(
        (&f["id"], &f["status"]),
        (&json!(ids[0]), &json!("delivered")),
        "{f}"
    );
    let marker = json!({"from": "test", "to": ["alice"], "data": "marker", "id": "marker-1"});
    let (status, v) = post(server, "/api/v1/messages", None, marker.to_string()).await;
    assert_eq!(status, 200, "{v}");
    next_is(&mut alice, "marker").await;
    let broker = nodes.broker.clone();
    eventually(|| async { broker.acked_with("marker-1") == 1 }).await;
    (ids, alice)
}

fn offline_on(c: &mut Config) {
    c.offline.enabled = true;
    // A written message settles at once (no pending copy kept until the device acks), so the
    // order of settlements is the order of writes.
    c.offline.require_ack = false;
}

#[tokio::test]
async fn the_broker_ack_of_a_batch_waits_for_its_last_message() {
    let mut nodes = Nodes::start(1, offline_on).await;
    let store = GatedStore::new("bob");
    let (ids, _alice) = batch_with_one_unsettled_message(&mut nodes, store.clone()).await;
    assert_eq!(
        nodes.broker.acked_with(&ids[1]),
        0,
        "the batch was acked while bob's message was not settled"
    );
    // bob's message is kept: the batch settles, and its delivery is acked once.
    let _ = store.open.send(true);
    let broker = nodes.broker.clone();
    eventually(|| async { broker.acked_with(&ids[1]) == 1 }).await;
    assert_eq!(nodes.broker.acked_with(&ids[0]), 1);
    let stats = store.inner.stats(&id("bob")).await.unwrap();
    assert_eq!(stats.count, 1);
}

#[tokio::test]
async fn a_batch_whose_node_stopped_before_it_settled_is_delivered_again() {
    let mut nodes = Nodes::start(1, offline_on).await;
    let (ids, _alice) = batch_with_one_unsettled_message(&mut nodes, GatedStore::new("bob")).await;
    assert_eq!(nodes.broker.acked_with(&ids[1]), 0);
    // The node stops with bob's message unsettled: its subscription ends with the batch
    // unacked, and the broker hands it to the node's next run, which keeps bob's message.
    nodes.stop(0).await;
    let store = Arc::new(MemoryOfflineStore::new(InboxLimits::default()));
    nodes.up(0, Some(store.clone())).await;
    eventually(|| async { store.stats(&id("bob")).await.unwrap().count == 1 }).await;
    let broker = nodes.broker.clone();
    eventually(|| async { broker.acked_with(&ids[1]) == 1 }).await;
    let mut bob = Client::connect(&nodes.node(0).helper(), "bob", 1).await;
    let (data, got) = next_message(&mut bob).await;
    assert_eq!((data, got), (json!("for bob"), ids[1].clone()));
}

#[tokio::test]
async fn a_dead_nodes_batch_is_rerouted_by_its_heir() {
    let mut nodes = Nodes::start(2, |c| {
        c.cluster.node_lease = Duration::from_millis(900);
        c.cluster.drain_period = Duration::from_secs(1);
        c.cluster.rebalance_period = Duration::from_secs(1);
        c.cluster.move_grace = Duration::from_secs(2);
    })
    .await;
    let (a, b) = (nodes.owned_by(0, "a"), nodes.owned_by(1, "b"));
    nodes.stop(1).await;
    let h = nodes.node(0).helper();
    eventually(|| async {
        h.cluster()
            .statuses()
            .iter()
            .any(|(n, s)| n.as_str() == "n2" && *s == NodeStatus::Dead)
    })
    .await;
    // b belongs to n1 now; a helper that had not seen n2 die published a batch to n2's inbox.
    let mut ca = Client::connect(&h, &a, 1).await;
    let mut cb = Client::connect(&h, &b, 1).await;
    let part = |to: &str, data: &str| Deliver {
        id: MessageId::generate(),
        from: id("shop"),
        to: vec![id(to)],
        data: RawValue::from_string(format!("\"{data}\"")).unwrap(),
        ts: envelope::now_ms(),
        receipt: false,
        forwarded: false,
    };
    let cmd = NodeCommand::DeliverMany(vec![
        part(&a, "to a"),
        part(&b, "to b 1"),
        part(&b, "to b 2"),
    ]);
    let payload = envelope::encode("command", &cmd).unwrap();
    nodes.broker.publish(&inbox("n2"), payload).await.unwrap();
    // n1 takes n2's inbox over once n2 was dead for a lease, and re-routes the batch.
    tokio::time::timeout(Duration::from_secs(15), async {
        assert_eq!(next_message(&mut ca).await.0, json!("to a"));
        assert_eq!(next_message(&mut cb).await.0, json!("to b 1"));
        assert_eq!(next_message(&mut cb).await.0, json!("to b 2"));
    })
    .await
    .expect("the batch was re-routed");
    let broker = nodes.broker.clone();
    eventually(|| async { broker.acked_with("to b 2") >= 1 }).await;
}
