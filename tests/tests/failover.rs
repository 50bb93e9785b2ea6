//! Live ownership, drain and return home (`docs/design.md` section 16) on in-process clusters
//! (memory broker and presence): a client's owner is the first live node in its order; a
//! draining node moves its clients with 1012 without them ever looking offline; they come home
//! when their node is back; connect storms are refused with `Retry-After`. The multi-process
//! cases (kill -9, every backbone) are in the cluster suite.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use impush_core::{
    Broker, ClientId, Event, MemoryBroker, MemoryPresenceStore, NodeEntry, NodeStatus,
    PresenceStore,
};
use impush_helper::ImHelper;
use impush_server::{Config, ImServer};
use serde_json::Value;
use support::{config, eventually, free_addrs, id, Client};

/// The pair's broker as each node holds it: a node's shutdown flushes and closes its broker,
/// which here the other node still uses. Counts publishes per topic.
#[derive(Debug)]
struct Shared(Arc<dyn Broker>, Publishes);

/// Publishes per topic so far.
type Publishes = Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

#[async_trait::async_trait]
impl Broker for Shared {
    async fn publish(&self, topic: &str, payload: bytes::Bytes) -> impush_core::Result<()> {
        *self.1.lock().unwrap().entry(topic.to_owned()).or_default() += 1;
        self.0.publish(topic, payload).await
    }
    async fn subscribe(
        &self,
        topic: &str,
        mode: impush_core::SubscribeMode,
    ) -> impush_core::Result<impush_core::Subscription> {
        self.0.subscribe(topic, mode).await
    }
    async fn ping(&self) -> impush_core::Result<()> {
        self.0.ping().await
    }
    async fn shutdown(&self) -> impush_core::Result<()> {
        Ok(())
    }
}

/// A two-node cluster in this process whose nodes can be stopped and started again.
struct Pair {
    broker: Arc<dyn Broker>,
    publishes: Publishes,
    presence: Arc<dyn PresenceStore>,
    configs: Vec<Config>,
    nodes: Vec<Option<ImServer>>,
}

impl Pair {
    async fn start(tune: impl Fn(&mut Config)) -> Pair {
        let addrs = free_addrs(2);
        let entries: Vec<NodeEntry> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| NodeEntry {
                id: format!("n{}", i + 1).parse().unwrap(),
                url: format!("ws://{a}"),
            })
            .collect();
        let publishes = Publishes::default();
        let mut pair = Pair {
            broker: Arc::new(Shared(Arc::new(MemoryBroker::default()), publishes.clone())),
            publishes,
            presence: Arc::new(MemoryPresenceStore::new()),
            configs: Vec::new(),
            nodes: Vec::new(),
        };
        for (i, a) in addrs.iter().enumerate() {
            let mut c = config();
            c.node.id = entries[i].id.clone();
            c.node.listen = *a;
            c.cluster.nodes = entries.clone();
            c.cluster.node_lease = Duration::from_millis(900);
            c.cluster.drain_period = Duration::from_secs(1);
            c.cluster.rebalance_period = Duration::from_secs(1);
            c.cluster.move_grace = Duration::from_secs(2);
            tune(&mut c);
            pair.configs.push(c);
            pair.nodes.push(None);
            pair.up(i).await;
        }
        // Every node sees every other live before a case starts.
        for i in 0..2 {
            let h = pair.helper(i);
            eventually(|| async {
                h.cluster()
                    .statuses()
                    .iter()
                    .all(|(_, s)| *s == NodeStatus::Live)
            })
            .await;
        }
        pair
    }

    async fn up(&mut self, i: usize) {
        let server = ImServer::start_with(
            self.configs[i].clone(),
            self.broker.clone(),
            self.presence.clone(),
        )
        .await
        .expect("node starts");
        self.nodes[i] = Some(server);
    }

    fn node(&self, i: usize) -> &ImServer {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn helper(&self, i: usize) -> ImHelper {
        self.node(i).helper()
    }

    async fn stop(&mut self, i: usize) {
        let server = self.nodes[i].take().expect("node is running");
        server.shutdown().await.unwrap();
    }
}

/// A client id whose home is node `n{i+1}`.
fn homed_on(h: &ImHelper, i: usize, tag: &str) -> ClientId {
    id(&support::homed_on(h, i, tag))
}

fn node_of_url(h: &ImHelper, c: &ClientId) -> String {
    h.prepare_connect(c, Value::Null).unwrap().node.to_string()
}

#[tokio::test]
async fn a_stopped_nodes_clients_are_handed_to_the_next_node() {
    let mut pair = Pair::start(|_| {}).await;
    let h1 = pair.helper(0);
    let alice = homed_on(&h1, 1, "alice");
    assert_eq!(node_of_url(&h1, &alice), "n2");
    pair.stop(1).await;
    // n2 cleared its lease on the way out: within a refresh n1 hands alice to itself.
    eventually(|| async { node_of_url(&h1, &alice) == "n1" }).await;
    let mut c = Client::connect(&h1, alice.as_str(), 1).await;
    h1.send_message(&id("bob"), std::slice::from_ref(&alice), &"hi", false)
        .await
        .unwrap();
    assert_eq!(c.next_json().await["data"], "hi");
    // n2 returns: alice is sent home gently (1012) and her next URL names n2 again.
    pair.up(1).await;
    assert_eq!(c.close_code().await, 1012);
    assert_eq!(node_of_url(&h1, &alice), "n2");
    let h2 = pair.helper(1);
    let mut c = Client::connect(&h2, alice.as_str(), 1).await;
    h1.send_message(&id("bob"), std::slice::from_ref(&alice), &"home", false)
        .await
        .unwrap();
    assert_eq!(c.next_json().await["data"], "home");
    pair.stop(0).await;
    pair.stop(1).await;
}

/// With a store each node keeps for itself (memory here, `disk` in production), what a node
/// kept for a client while the client's home was down is handed to the home once it is live
/// again (`docs/design.md` section 16): every message, as first sent, in order, in one publish
/// (a payload per message took a node over a minute to hand hundreds of inboxes over).
#[tokio::test]
async fn an_inbox_kept_while_its_owner_was_away_is_handed_home_in_one_payload() {
    let mut pair = Pair::start(|c| c.offline.enabled = true).await;
    let h1 = pair.helper(0);
    let alice = homed_on(&h1, 1, "alice");
    pair.stop(1).await;
    eventually(|| async { node_of_url(&h1, &alice) == "n1" }).await;
    let mut sent = Vec::new();
    for n in 0..5 {
        let s = h1
            .send_message(&id("bob"), std::slice::from_ref(&alice), &n, false)
            .await
            .unwrap();
        sent.push(s.id.to_string());
    }
    // alice is away: n1, her owner meanwhile, keeps them.
    eventually(|| async { support::inbox_count(pair.node(0), alice.as_str()).await == 5 }).await;
    let home = impush_core::Topics::new("impush").inbox(&"n2".parse().unwrap());
    let before = pair.publishes.lock().unwrap().get(&home).copied();
    pair.up(1).await;
    eventually(|| async { support::inbox_count(pair.node(1), alice.as_str()).await == 5 }).await;
    let after = pair.publishes.lock().unwrap().get(&home).copied();
    assert_eq!(
        after.unwrap_or(0) - before.unwrap_or(0),
        1,
        "one payload to her home"
    );
    let mut c = Client::connect(&pair.helper(1), alice.as_str(), 1).await;
    for want in &sent {
        let f = c.next_json().await;
        assert_eq!(f["id"], want.as_str(), "{f}");
        assert_eq!(f["stored"], true, "{f}");
    }
    pair.stop(0).await;
    pair.stop(1).await;
}

/// A node sends its guests home only once the readers of the live view (helpers and the other
/// nodes read it every third of a lease) can have seen their owner live: a client closed before
/// that would be handed this node's URL again, and moved twice. So no guest is closed within
/// half a lease of its owner's first heartbeat (which the presence store is watched for).
#[tokio::test]
async fn guests_wait_until_readers_of_the_view_can_see_their_owner_live() {
    let mut pair = Pair::start(|_| {}).await;
    let lease = pair.configs[0].cluster.node_lease;
    let h1 = pair.helper(0);
    pair.stop(1).await;
    let guests: Vec<ClientId> = (0..10)
        .map(|k| homed_on(&h1, 1, &format!("guest{k}x")))
        .collect();
    for g in &guests {
        eventually(|| async { node_of_url(&h1, g) == "n1" }).await;
    }
    let mut sockets = Vec::new();
    for g in &guests {
        sockets.push(Client::connect(&h1, g.as_str(), 1).await);
    }
    let n2: impush_core::NodeId = "n2".parse().unwrap();
    let live_at = tokio::spawn({
        let presence = pair.presence.clone();
        async move {
            loop {
                let live = presence.live_nodes().await.unwrap();
                if live.iter().any(|l| l.node == n2) {
                    return tokio::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let closed_at: Vec<_> = sockets
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.close_code().await;
                (code, tokio::time::Instant::now())
            })
        })
        .collect();
    pair.up(1).await;
    let live_at = live_at.await.unwrap();
    let mut first_close = None;
    for c in closed_at {
        let (code, at) = c.await.unwrap();
        assert_eq!(code, 1012, "sent home with 1012");
        first_close = Some(first_close.map_or(at, |f: tokio::time::Instant| f.min(at)));
    }
    let after = first_close.unwrap().saturating_duration_since(live_at);
    // A reader's next read comes within a third of a lease; half as much again is the margin
    // (sent at once, the first guest went ~350 ms after the heartbeat here, lease 900 ms).
    assert!(
        after >= lease / 3 + lease / 6,
        "the first guest was sent home {after:?} after its owner's first heartbeat; readers of \
         the view read it every {:?}",
        lease / 3
    );
    pair.stop(0).await;
    pair.stop(1).await;
}

#[tokio::test]
async fn a_drain_moves_clients_without_a_logout() {
    let mut pair = Pair::start(|_| {}).await;
    let h1 = pair.helper(0);
    let h2 = pair.helper(1);
    let alice = homed_on(&h1, 0, "alice");
    let room: impush_core::ChannelName = "room".parse().unwrap();
    let mut c = Client::connect(&h1, alice.as_str(), 1).await;
    h1.join_channel(&room, std::slice::from_ref(&alice))
        .await
        .unwrap();
    let mut events = h2.events().await.unwrap();

    let drained = tokio::spawn({
        let presence = pair.presence.clone();
        let alice = alice.clone();
        async move {
            // Watches presence throughout the move: alice never looks offline, and never
            // leaves her room.
            let start = tokio::time::Instant::now();
            let mut samples = 0;
            while start.elapsed() < Duration::from_secs(4) {
                assert!(
                    presence.online(std::slice::from_ref(&alice)).await.unwrap()[0],
                    "alice offline"
                );
                assert_eq!(
                    presence.client_channels(&alice).await.unwrap().value,
                    vec!["room".parse::<impush_core::ChannelName>().unwrap()]
                );
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        }
    });
    let node1 = pair.nodes[0].take().unwrap();
    let drain = tokio::spawn(async move {
        let moved = node1.drain().await;
        (moved, node1)
    });
    assert_eq!(c.close_code().await, 1012, "moved with 1012");
    // While n1 drains it is not handed out: alice's new URL names n2.
    eventually(|| async { node_of_url(&h2, &alice) == "n2" }).await;
    let mut c = Client::connect(&h2, alice.as_str(), 1).await;
    h2.send_channel_message(&id("bob"), &room, &"still here")
        .await
        .unwrap();
    assert_eq!(
        c.next_json().await["data"],
        "still here",
        "rooms moved along"
    );

    let (moved, node1) = drain.await.unwrap();
    assert!(moved);
    assert!(drained.await.unwrap() > 50);
    // Events: the new connection first (not the first: the old one still counted), then the
    // old one's offline, flagged as a move and not the last.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev.client() == &alice {
            seen.push(ev);
        }
    }
    assert!(
        matches!(&seen[0], Event::Online { first: false, node, .. } if node.as_str() == "n2"),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], Event::Offline { last: false, moved: true, node, .. } if node.as_str() == "n1"),
        "{seen:?}"
    );
    assert!(node1.metrics().moved() >= 1);
    node1.shutdown().await.unwrap();
    pair.stop(1).await;
}

#[tokio::test]
async fn a_draining_node_refuses_new_connects_and_is_not_ready() {
    let mut pair = Pair::start(|c| c.cluster.drain_period = Duration::from_secs(3)).await;
    let h1 = pair.helper(0);
    let alice = homed_on(&h1, 0, "alice");
    let _c = Client::connect(&h1, alice.as_str(), 1).await;
    let url = h1.prepare_connect(&alice, Value::Null).unwrap().url;
    let base = format!("http://{}", pair.node(0).local_addr());
    let node1 = pair.nodes[0].take().unwrap();
    let drain = tokio::spawn(async move {
        node1.drain().await;
        node1
    });
    eventually(|| async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    let (status, body) = support::refused_status(&url).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("draining")));
    drain.await.unwrap().shutdown().await.unwrap();
    pair.stop(1).await;
}

#[tokio::test]
async fn a_lone_node_does_not_drain() {
    let server = support::start(|_| {}).await;
    assert!(!server.drain().await, "nobody to take the clients");
    assert!(!server.is_draining());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connect_storms_are_refused_at_the_door_with_retry_after() {
    let server = support::start(|c| {
        c.limits.connect_rate = 3;
        c.limits.connect_rate_per_ip = 2;
    })
    .await;
    let h = server.helper();
    let _a = Client::connect(&h, "a", 1).await;
    let _b = Client::connect(&h, "b", 1).await;
    // The third connect from this address within the second is refused before its token is
    // looked at: the token stays usable.
    let url = h.prepare_connect(&id("c"), Value::Null).unwrap().url;
    let refused = match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    // A second later the same URL works: no token was spent on the refusal.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the refused URL still works");
    let text = support::scrape(&server).await;
    assert!(
        text.contains("impush_connects_throttled_total{node=\"n1\",scope=\"ip\"} 1"),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

/// A helper whose view lags (it still counts n2 as dead, as one that heard n1 come back
/// after a broker outage before n2) and the nodes, without an inbox: a message for a client
/// of n2, connected there, is published to n1. n1 holds no socket of it and sees n2 owning
/// it, so it sends it on, once: the receiver gets it and its sender's receipt says
/// `delivered`, not `offline` first. A message for a client connected nowhere, routed the
/// other way round (n1 dead in the lagging view), ends at its owner: one `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_routed_by_a_lagging_view_is_sent_on_to_its_owner() {
    let nodes = support::start_cluster(2, |_| {}).await;
    let h = nodes[0].helper();
    let (s, b) = (support::homed_on(&h, 0, "c"), support::homed_on(&h, 1, "c"));
    let absent = support::homed_on(&h, 0, "absent");
    let mut sender = Client::connect(&h, &s, 1).await;
    let mut receiver = Client::connect(&h, &b, 1).await;

    let n2_dead = support::helper_seeing_dead(&h, "n2");
    assert_eq!(n2_dead.cluster().owner(&id(&b)).id.as_str(), "n1");
    let sent = n2_dead
        .send_message(&id(&s), &[id(&b)], &"sent on", true)
        .await
        .unwrap();
    let got = receiver.next_json().await;
    assert_eq!(
        (got["id"].as_str(), &got["data"]),
        (Some(sent.id.as_str()), &Value::from("sent on"))
    );
    let receipt = sender.next_json().await;
    assert_eq!(receipt["type"], "receipt", "{receipt}");
    assert_eq!(receipt["status"], "delivered", "{receipt}");
    assert_eq!(receipt["to"], serde_json::json!([b]), "{receipt}");

    let n1_dead = support::helper_seeing_dead(&h, "n1");
    assert_eq!(n1_dead.cluster().owner(&id(&absent)).id.as_str(), "n2");
    n1_dead
        .send_message(&id(&s), &[id(&absent)], &"nobody there", true)
        .await
        .unwrap();
    let receipt = sender.next_json().await;
    assert_eq!(receipt["status"], "offline", "{receipt}");
    assert_eq!(receipt["to"], serde_json::json!([absent]), "{receipt}");
    sender.expect_silence(Duration::from_millis(300)).await;
    receiver.expect_silence(Duration::from_millis(100)).await;

    let text = support::scrape(&nodes[0]).await;
    assert!(
        text.contains("impush_messages_forwarded_total{node=\"n1\"} 1"),
        "{text}"
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A message another node already sent on (`forwarded`) goes no further: n1 holds no socket of
/// its receiver and sees n2 owning it, as in the case above, but a second hop could bounce a
/// message between two nodes whose views disagree. It ends at n1 (the sender hears `offline`)
/// and the receiver, connected at n2, does not get it; n1 forwards nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_on_once_is_not_sent_on_again() {
    use impush_core::envelope::{self, Deliver, NodeCommand};
    let nodes = support::start_cluster(2, |_| {}).await;
    let h = nodes[0].helper();
    let (s, b) = (support::homed_on(&h, 0, "c"), support::homed_on(&h, 1, "c"));
    let mut sender = Client::connect(&h, &s, 1).await;
    let mut receiver = Client::connect(&h, &b, 1).await;
    let message = impush_core::MessageId::generate();
    let cmd = NodeCommand::Deliver(Deliver {
        id: message.clone(),
        from: id(&s),
        to: vec![id(&b)],
        data: serde_json::value::RawValue::from_string("\"second hop\"".into()).unwrap(),
        ts: envelope::now_ms(),
        receipt: true,
        forwarded: true,
    });
    let inbox = impush_core::Topics::new("impush").inbox(&"n1".parse().unwrap());
    h.broker()
        .publish(&inbox, envelope::encode("command", &cmd).unwrap())
        .await
        .unwrap();
    let receipt = sender.next_json().await;
    assert_eq!(receipt["type"], "receipt", "{receipt}");
    assert_eq!(receipt["id"], message.to_string(), "{receipt}");
    assert_eq!(receipt["status"], "offline", "{receipt}");
    receiver.expect_silence(Duration::from_millis(300)).await;
    let text = support::scrape(&nodes[0]).await;
    assert!(
        text.contains("impush_messages_forwarded_total{node=\"n1\"} 0"),
        "{text}"
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
