//! Webhooks end to end (`docs/design.md` section 17): in-process nodes POST to a real HTTP
//! receiver in the test, which checks every signature with its own HMAC code. Every kind is
//! posted (once cluster-wide), batched, retried through an outage and past 500s, dropped and
//! counted when the queue is full (without slowing delivery), and flushed at shutdown.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use hmac::{Hmac, Mac};
use impush_core::{config::Secret, ChannelName, ClientId, NodeId};
use impush_server::{
    webhooks::{EndpointConfig, EventKind},
    Config, ImServer,
};
use serde_json::{json, Value};
use sha2::Sha256;
use support::{id, start, start_cluster, Client};
use tokio::sync::watch;

const SECRET: &str = "whsec-0123456789abcdef";
const ALL: [EventKind; 5] = [
    EventKind::Online,
    EventKind::Offline,
    EventKind::Stored,
    EventKind::Joined,
    EventKind::Left,
];

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Status(u16),
    /// Answers only once released (200 then).
    Hold,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Post {
    attempt: u32,
    body: Value,
    raw: Bytes,
}

#[derive(Debug)]
struct Shared {
    posts: Mutex<Vec<Post>>,
    mode: Mutex<Mode>,
    release: watch::Sender<bool>,
    /// Requests whose signature did not verify (they are answered 401 and not recorded).
    forged: Mutex<Vec<String>>,
}

/// A real HTTP server on loopback that records signed webhook POSTs.
#[derive(Debug, Clone)]
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// While set, every connection is closed as soon as it is accepted: the receiver is down
    /// but keeps its port (a port given back could be taken meanwhile).
    down: Arc<AtomicBool>,
}

/// The receiver's listener: drops connections while `down`.
struct Gate {
    inner: tokio::net::TcpListener,
    down: Arc<AtomicBool>,
}

impl axum::serve::Listener for Gate {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((io, addr)) = self.inner.accept().await {
                if !self.down.load(Ordering::SeqCst) {
                    return (io, addr);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The receiver's own check of `Impush-Signature: t=..,v1=..` (HMAC-SHA256 of "t.body"),
/// written apart from the server's code so a bug in it cannot hide here.
fn signature_ok(header: &str, body: &[u8]) -> Result<(), String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => return Err(format!("unexpected part {part:?}")),
        }
    }
    let (t, v1) = (t.ok_or("no t")?, v1.ok_or("no v1")?);
    let ts: u64 = t.parse().map_err(|_| "t is not a number")?;
    if unix_now().abs_diff(ts) > 300 {
        return Err(format!("t={ts} outside the 5 min window"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let want = hex(&mac.finalize().into_bytes());
    if want == v1 {
        Ok(())
    } else {
        Err("v1 does not match".into())
    }
}

async fn hook(State(s): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let sig = headers
        .get("impush-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(e) = signature_ok(sig, &raw) {
        s.forged.lock().unwrap().push(e);
        return StatusCode::UNAUTHORIZED;
    }
    assert_eq!(headers["content-type"], "application/json");
    let attempt = headers["impush-attempt"].to_str().unwrap().parse().unwrap();
    let body = serde_json::from_slice(&raw).unwrap();
    s.posts.lock().unwrap().push(Post { attempt, body, raw });
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::Ok => StatusCode::OK,
        Mode::Status(code) => StatusCode::from_u16(code).unwrap(),
        Mode::Hold => {
            let mut rx = s.release.subscribe();
            let _ = rx.wait_for(|r| *r).await;
            StatusCode::OK
        }
    }
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let shared = Arc::new(Shared {
            posts: Mutex::new(Vec::new()),
            mode: Mutex::new(mode),
            release: watch::channel(false).0,
            forged: Mutex::new(Vec::new()),
        });
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let listener = Gate {
            inner,
            down: down.clone(),
        };
        let app = Router::new()
            .route("/hooks", post(hook))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, shared, down }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn release(&self) {
        self.shared.release.send_replace(true);
    }

    fn posts(&self) -> Vec<Post> {
        let forged = self.shared.forged.lock().unwrap().clone();
        assert!(forged.is_empty(), "badly signed requests: {forged:?}");
        self.shared.posts.lock().unwrap().clone()
    }

    /// Every event received, in order.
    fn events(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .flat_map(|p| p.body["events"].as_array().unwrap().clone())
            .collect()
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    async fn wait_for(&self, what: &str, within: Duration, cond: impl Fn(&[Value]) -> bool) {
        impush_tests::eventually_within(what, within, || async { cond(&self.events()) }).await;
    }
}

fn endpoint(url: String, events: &[EventKind]) -> EndpointConfig {
    EndpointConfig {
        url,
        events: events.to_vec(),
        secret: Secret::new(SECRET),
        include_data: false,
        first_last_only: false,
    }
}

/// One sample of the node's `/metrics` text, e.g. `impush_webhook_dropped_total` with
/// `reason="queue_full"`.
fn metric(server: &ImServer, name: &str, label: Option<(&str, &str)>) -> i64 {
    let node: NodeId = "n1".parse().unwrap();
    let series = match label {
        Some((k, v)) => format!("{name}{{node=\"n1\",{k}=\"{v}\"}} "),
        None => format!("{name}{{node=\"n1\"}} "),
    };
    let text = server.metrics().render(&node);
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .parse()
        .unwrap()
}

fn dropped(server: &ImServer, reason: &str) -> i64 {
    metric(
        server,
        "impush_webhook_dropped_total",
        Some(("reason", reason)),
    )
}

fn chan(s: &str) -> ChannelName {
    s.parse().unwrap()
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn every_kind_is_posted_signed_and_batched() {
    let all = Receiver::start(Mode::Ok).await;
    let users = Receiver::start(Mode::Ok).await;
    let (all_url, users_url) = (all.url(), users.url());
    let server = start(move |c| {
        c.offline.enabled = true;
        c.webhooks.linger = Duration::from_millis(200);
        c.webhooks.endpoints = vec![endpoint(all_url.clone(), &ALL), {
            // Users rather than sockets, and the data of stored messages.
            let mut e = endpoint(
                users_url.clone(),
                &[EventKind::Online, EventKind::Offline, EventKind::Stored],
            );
            e.first_last_only = true;
            e.include_data = true;
            e
        }];
    })
    .await;
    let h = server.helper();

    let mut a1 = Client::connect(&h, "alice", 1).await;
    let a2 = Client::connect(&h, "alice", 2).await;
    h.join_channel(&chan("room"), &[id("alice"), id("bob")])
        .await
        .unwrap();
    let sent = h
        .send_message(&id("alice"), &[id("bob")], &json!({"text": "hi"}), true)
        .await
        .unwrap();
    assert_eq!(a1.next_json().await["status"], "stored");
    h.leave_channel(&chan("room"), &[id("bob")]).await.unwrap();
    drop(a2);
    drop(a1);
    all.wait_for("every kind", LONG, |e| {
        e.iter().filter(|e| e["type"] == "offline").count() == 2
            && e.iter().any(|e| e["type"] == "left")
    })
    .await;

    let events = all.events();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for k in ["online", "offline", "stored", "joined", "left"] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    let online = all.events_of("online");
    assert_eq!(online.len(), 2);
    assert_eq!(online[0]["client_id"], "alice");
    assert_eq!(online[0]["node"], "n1");
    assert_eq!(online[0]["first"], true);
    assert_eq!(online[1]["first"], false);
    let offline = all.events_of("offline");
    assert_eq!(
        offline
            .iter()
            .map(|e| e["last"].clone())
            .collect::<Vec<_>>(),
        [json!(false), json!(true)]
    );
    assert!(offline.iter().all(|e| e["moved"] == false));
    let joined: HashSet<_> = all
        .events_of("joined")
        .iter()
        .map(|e| (e["channel"].clone(), e["client_id"].clone()))
        .collect();
    assert_eq!(
        joined,
        HashSet::from([
            (json!("room"), json!("alice")),
            (json!("room"), json!("bob"))
        ])
    );
    let left = all.events_of("left");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["client_id"], "bob");
    let stored = all.events_of("stored");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["client_id"], "bob");
    assert_eq!(stored[0]["from"], "alice");
    assert_eq!(stored[0]["message_id"], sent.id.as_str());
    assert!(stored[0]["message_ts"].as_u64().unwrap() > 0);
    assert!(stored[0].get("data").is_none(), "data is opt-in");

    // Ids are unique; each POST names its node; hooks that came together were batched.
    let ids: HashSet<_> = events.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), events.len());
    let posts = all.posts();
    assert!(posts
        .iter()
        .all(|p| p.body["node"] == "n1" && p.attempt == 1));
    assert!(
        posts.len() < events.len(),
        "{} events in {} POSTs: not batched",
        events.len(),
        posts.len()
    );
    assert!(posts
        .iter()
        .any(|p| p.body["events"].as_array().unwrap().len() >= 2));

    // The users endpoint: first online, last offline, stored with its data; nothing else.
    users
        .wait_for("the last offline", LONG, |e| {
            e.iter().any(|e| e["type"] == "offline")
        })
        .await;
    let got: Vec<(String, Value)> = users
        .events()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["online", "stored", "offline"], "{got:?}");
    assert_eq!(got[0].1["first"], true);
    assert_eq!(got[1].1["data"], json!({"text": "hi"}));
    assert_eq!(got[2].1["last"], true);
    // The same event has the same id on every endpoint.
    assert_eq!(got[1].1["id"], stored[0]["id"]);
    server.shutdown().await.unwrap();
}

/// A message written to a socket whose link then drops before the ack goes back to the
/// inbox (`docs/design.md` section 15): it now waits for an offline client, so `stored` is
/// posted then, once, and not while the message was only pending on a live socket.
#[tokio::test]
async fn a_message_left_unacked_by_a_dropped_link_posts_stored() {
    let rx = Receiver::start(Mode::Ok).await;
    let url = rx.url();
    let server = start(move |c| {
        c.offline.enabled = true;
        c.webhooks.linger = Duration::ZERO;
        c.webhooks.endpoints = vec![endpoint(url.clone(), &[EventKind::Stored])];
    })
    .await;
    let h = server.helper();
    let mut alice = Client::connect(&h, "alice", 1).await;
    let sent = h
        .send_message(&id("bob"), &[id("alice")], &json!({"text": "hi"}), false)
        .await
        .unwrap();
    assert_eq!(alice.next_json().await["id"], sent.id.as_str());
    // Written, not acked: kept in the inbox as pending, which is no reason for a push.
    impush_tests::eventually_within("the pending keep", LONG, || async {
        support::inbox_count(&server, "alice").await == 1
    })
    .await;
    assert!(rx.events_of("stored").is_empty(), "{:?}", rx.events());
    alice.reset();
    rx.wait_for("the stored hook", LONG, |e| {
        e.iter().any(|e| e["type"] == "stored")
    })
    .await;
    let stored = rx.events_of("stored");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["client_id"], "alice");
    assert_eq!(stored[0]["from"], "bob");
    assert_eq!(stored[0]["message_id"], sent.id.as_str());
    server.shutdown().await.unwrap();
}

/// Memberships that end because their client did not come back (`[channels] linger`, or at
/// once with a linger of 0) are posted as `left`, like a leave through the API.
#[tokio::test]
async fn memberships_ended_by_the_linger_post_left() {
    for linger in [Duration::from_millis(300), Duration::ZERO] {
        let rx = Receiver::start(Mode::Ok).await;
        let url = rx.url();
        let server = start(move |c| {
            c.channels.linger = linger;
            c.webhooks.linger = Duration::ZERO;
            c.webhooks.endpoints = vec![endpoint(url.clone(), &[EventKind::Left])];
        })
        .await;
        let h = server.helper();
        let carol = Client::connect(&h, "carol", 1).await;
        for room in ["a", "b"] {
            h.join_channel(&chan(room), &[id("carol")]).await.unwrap();
        }
        drop(carol);
        rx.wait_for("a left hook per channel", LONG, |e| e.len() >= 2)
            .await;
        let left: HashSet<(Value, Value)> = rx
            .events_of("left")
            .iter()
            .map(|e| (e["channel"].clone(), e["client_id"].clone()))
            .collect();
        assert_eq!(
            left,
            HashSet::from([(json!("a"), json!("carol")), (json!("b"), json!("carol"))]),
            "linger {linger:?}"
        );
        assert_eq!(rx.events().len(), 2, "linger {linger:?}: {:?}", rx.events());
        let channels = h.client_channels(&id("carol")).await.unwrap().value;
        assert!(channels.is_empty(), "{channels:?}");
        server.shutdown().await.unwrap();
    }
}

/// A membership change is read by every node and posted by the client's owner only; a
/// connection's events by its node only.
#[tokio::test]
async fn each_hook_is_posted_once_across_a_cluster() {
    let rx = Receiver::start(Mode::Ok).await;
    let url = rx.url();
    let servers = start_cluster(2, move |c| {
        c.webhooks.endpoints = vec![endpoint(url.clone(), &ALL)];
    })
    .await;
    let h = servers[0].helper();
    let users: Vec<ClientId> = (0..20).map(|i| id(&format!("u{i}"))).collect();
    let owner = |c: &ClientId| h.cluster().owner(c).id.to_string();
    assert!(
        users.iter().any(|c| owner(c) == "n1") && users.iter().any(|c| owner(c) == "n2"),
        "both nodes own some of the users"
    );
    h.join_channel(&chan("room"), &users).await.unwrap();
    h.leave_channel(&chan("room"), &users).await.unwrap();
    let _u0 = Client::connect(&h, "u0", 1).await;
    let _u1 = Client::connect(&h, "u1", 1).await;
    // A last join per node: each node posts in order, so once both arrived, everything
    // before them did too, and any duplicate would have shown.
    let sentinels: Vec<ClientId> = ["n1", "n2"]
        .iter()
        .map(|n| {
            (0..)
                .map(|i| id(&format!("s{i}")))
                .find(|c| owner(c) == *n)
                .unwrap()
        })
        .collect();
    h.join_channel(&chan("end"), &sentinels).await.unwrap();
    rx.wait_for("both sentinels", LONG, |e| {
        e.iter().filter(|e| e["channel"] == "end").count() == 2
    })
    .await;

    let mut seen: HashMap<(String, String), Vec<String>> = HashMap::new();
    for p in rx.posts() {
        for e in p.body["events"].as_array().unwrap() {
            seen.entry((
                e["type"].as_str().unwrap().to_owned(),
                e["client_id"].as_str().unwrap().to_owned(),
            ))
            .or_default()
            .push(p.body["node"].as_str().unwrap().to_owned());
        }
    }
    for c in &users {
        for kind in ["joined", "left"] {
            let by = &seen[&(kind.to_owned(), c.to_string())];
            assert_eq!(by, &[owner(c)], "{kind} {c} posted by {by:?}");
        }
    }
    for c in ["u0", "u1"] {
        let by = &seen[&("online".to_owned(), c.to_owned())];
        assert_eq!(by, &[owner(&id(c))], "online {c} posted by {by:?}");
    }
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// A drain moves a client: its new connection's online (`first: false`) comes from the new
/// node, the old connection's offline says `moved: true` and `last: false`.
#[tokio::test]
async fn a_planned_move_is_posted_as_moved() {
    let rx = Receiver::start(Mode::Ok).await;
    let url = rx.url();
    let servers = start_cluster(2, move |c| {
        c.webhooks.endpoints = vec![endpoint(
            url.clone(),
            &[EventKind::Online, EventKind::Offline],
        )];
        c.webhooks.linger = Duration::ZERO;
        c.cluster.node_lease = Duration::from_millis(900);
        c.cluster.drain_period = Duration::from_millis(500);
        c.cluster.move_grace = Duration::from_secs(1);
    })
    .await;
    let (h1, h2) = (servers[0].helper(), servers[1].helper());
    for h in [&h1, &h2] {
        impush_tests::eventually_within("both nodes live", LONG, || async {
            h.cluster()
                .statuses()
                .iter()
                .all(|(_, s)| *s == impush_core::NodeStatus::Live)
        })
        .await;
    }
    let alice = (0..)
        .map(|k| id(&format!("alice{k}")))
        .find(|c| h1.cluster().owner(c).id.as_str() == "n1")
        .unwrap();
    let mut c = Client::connect(&h1, alice.as_str(), 1).await;
    let (drained, _c) = tokio::join!(servers[0].drain(), async {
        assert_eq!(c.close_code().await, 1012);
        impush_tests::eventually_within("alice handed to n2", LONG, || async {
            h2.prepare_connect(&alice, Value::Null)
                .unwrap()
                .node
                .as_str()
                == "n2"
        })
        .await;
        Client::connect(&h2, alice.as_str(), 1).await
    });
    assert!(drained);
    rx.wait_for("the moved offline", LONG, |e| {
        e.iter().any(|e| e["type"] == "offline")
    })
    .await;
    let mine: Vec<(String, Value)> = rx
        .posts()
        .iter()
        .flat_map(|p| {
            let node = p.body["node"].as_str().unwrap().to_owned();
            p.body["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["client_id"] == alice.as_str())
                .map(move |e| (node.clone(), e.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let summary: Vec<(&str, &str, &Value)> = mine
        .iter()
        .map(|(n, e)| (n.as_str(), e["type"].as_str().unwrap(), e))
        .collect();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!((summary[0].0, summary[0].1), ("n1", "online"));
    assert_eq!((summary[1].0, summary[1].1), ("n2", "online"));
    assert_eq!(summary[1].2["first"], false);
    assert_eq!((summary[2].0, summary[2].1), ("n1", "offline"));
    assert_eq!(summary[2].2["moved"], true);
    assert_eq!(summary[2].2["last"], false);
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// The receiver is down for 10 s (it closes every connection at once): every hook arrives
/// once it is back, within the retry window, each once, and nothing is dropped.
#[tokio::test]
async fn an_endpoint_down_for_10s_loses_nothing() {
    let rx = Receiver::start(Mode::Ok).await;
    rx.set_down(true);
    let url = rx.url();
    let down_at = tokio::time::Instant::now();
    let server = start(move |c| {
        c.webhooks.endpoints = vec![endpoint(url.clone(), &ALL)];
        c.webhooks.linger = Duration::from_millis(20);
        c.webhooks.batch_size = 8;
        c.webhooks.timeout = Duration::from_secs(2);
        c.webhooks.retry.initial_backoff = Duration::from_millis(200);
        c.webhooks.retry.max_backoff = Duration::from_secs(2);
        c.webhooks.retry.max_age = Duration::from_secs(60);
    })
    .await;
    let h = server.helper();
    let users: Vec<ClientId> = (0..20).map(|i| id(&format!("u{i}"))).collect();
    h.join_channel(&chan("room"), &users).await.unwrap();
    let _c = Client::connect(&h, "carol", 1).await;
    // It really is being retried against a receiver that is down.
    impush_tests::eventually_within("failed attempts", LONG, || async {
        metric(
            &server,
            "impush_webhook_posts_total",
            Some(("outcome", "no_response")),
        ) >= 3
    })
    .await;
    assert!(metric(&server, "impush_webhook_queued", None) >= 21);
    // The deliberate outage: the receiver comes up 10 s after it went missing.
    tokio::time::sleep_until(down_at + Duration::from_secs(10)).await;
    rx.set_down(false);
    rx.wait_for("all 21 hooks", LONG, |e| e.len() >= 21).await;

    let events = rx.events();
    let joined: HashSet<_> = rx
        .events_of("joined")
        .iter()
        .map(|e| e["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(joined.len(), 20);
    assert_eq!(rx.events_of("online").len(), 1);
    assert_eq!(events.len(), 21, "each once");
    assert!(
        rx.posts().iter().any(|p| p.attempt > 1),
        "delivered by retries"
    );
    for reason in ["queue_full", "refused", "retries_exhausted", "shutdown"] {
        assert_eq!(dropped(&server, reason), 0, "{reason}");
    }
    // The receiver records a post before it answers, and the node counts the post delivered
    // when the answer reaches it: the last batch may still be on its way back.
    impush_tests::eventually_within("21 counted delivered, queue empty", LONG, || async {
        metric(&server, "impush_webhook_delivered_total", None) == 21
            && metric(&server, "impush_webhook_queued", None) == 0
    })
    .await;
    server.shutdown().await.unwrap();
}

/// A receiver answering 500 gets the same body `max_attempts` times, then the hook is counted
/// as dropped; a 4xx is not retried; the endpoint then still works.
#[tokio::test]
async fn server_errors_are_retried_then_counted() {
    let rx = Receiver::start(Mode::Status(500)).await;
    let url = rx.url();
    let server = start(move |c| {
        c.webhooks.endpoints = vec![endpoint(url.clone(), &ALL)];
        c.webhooks.linger = Duration::ZERO;
        c.webhooks.retry.initial_backoff = Duration::from_millis(50);
        c.webhooks.retry.max_attempts = 3;
    })
    .await;
    let h = server.helper();
    h.join_channel(&chan("room"), &[id("a")]).await.unwrap();
    impush_tests::eventually_within("retries exhausted", LONG, || async {
        dropped(&server, "retries_exhausted") == 1
    })
    .await;
    let posts = rx.posts();
    assert_eq!(
        posts.iter().map(|p| p.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        posts.iter().all(|p| p.raw == posts[0].raw),
        "same body each time"
    );
    assert_eq!(
        metric(
            &server,
            "impush_webhook_posts_total",
            Some(("outcome", "error_status"))
        ),
        3
    );

    // A refusal is final at once.
    rx.set_mode(Mode::Status(400));
    h.join_channel(&chan("room"), &[id("b")]).await.unwrap();
    impush_tests::eventually_within("refused", LONG, || async {
        dropped(&server, "refused") == 1
    })
    .await;
    assert_eq!(rx.posts().len(), 4);

    rx.set_mode(Mode::Ok);
    h.join_channel(&chan("room"), &[id("c")]).await.unwrap();
    rx.wait_for("delivered after the failures", LONG, |e| {
        e.iter().any(|e| e["client_id"] == "c")
    })
    .await;
    // Counted when the answer reaches the node, after the receiver recorded the post.
    impush_tests::eventually_within("1 counted delivered, queue empty", LONG, || async {
        metric(&server, "impush_webhook_delivered_total", None) == 1
            && metric(&server, "impush_webhook_queued", None) == 0
    })
    .await;
    server.shutdown().await.unwrap();
}

/// With the receiver stuck on a POST, hooks beyond `webhooks.queue` are dropped and counted at
/// once, and messages still reach sockets without delay.
#[tokio::test]
async fn a_full_queue_drops_and_counts_without_slowing_delivery() {
    let rx = Receiver::start(Mode::Hold).await;
    let url = rx.url();
    let server = start(move |c| {
        c.webhooks.endpoints = vec![endpoint(url.clone(), &ALL)];
        c.webhooks.linger = Duration::ZERO;
        c.webhooks.batch_size = 1;
        c.webhooks.queue = 5;
        c.webhooks.timeout = Duration::from_secs(60);
    })
    .await;
    let h = server.helper();
    let mut c1 = Client::connect(&h, "c1", 1).await;
    // Its online hook is the POST the receiver holds.
    rx.wait_for("the held POST", LONG, |e| e.len() == 1).await;
    let users: Vec<ClientId> = (0..50).map(|i| id(&format!("u{i}"))).collect();
    h.join_channel(&chan("room"), &[id("c1")]).await.unwrap();
    h.join_channel(&chan("room"), &users).await.unwrap();
    impush_tests::eventually_within("drops counted", LONG, || async {
        dropped(&server, "queue_full") == 46
    })
    .await;
    assert_eq!(metric(&server, "impush_webhook_queued", None), 6);

    // Delivery does not wait for webhooks.
    h.send_message(&id("x"), &[id("c1")], &json!("p2p"), false)
        .await
        .unwrap();
    assert_eq!(c1.next_json().await["data"], "p2p");
    h.send_channel_message(&id("x"), &chan("room"), &json!("chan"))
        .await
        .unwrap();
    assert_eq!(c1.next_json().await["data"], "chan");

    rx.release();
    rx.wait_for("the queued hooks", LONG, |e| e.len() == 6)
        .await;
    impush_tests::eventually_within("delivered counted", LONG, || async {
        metric(&server, "impush_webhook_delivered_total", None) == 6
    })
    .await;
    assert_eq!(rx.events_of("joined")[0]["client_id"], "c1");
    assert_eq!(metric(&server, "impush_webhook_queued", None), 0);
    server.shutdown().await.unwrap();
}

/// Shutdown sends what is queued (the offline events of the closed sockets too) before it
/// returns, without waiting out the linger.
#[tokio::test]
async fn shutdown_flushes_the_queue() {
    let rx = Receiver::start(Mode::Ok).await;
    let url = rx.url();
    let server = start(move |c| {
        c.webhooks.endpoints = vec![endpoint(url.clone(), &ALL)];
        c.webhooks.linger = Duration::from_secs(30);
    })
    .await;
    let h = server.helper();
    let _alice = Client::connect(&h, "alice", 1).await;
    let began = tokio::time::Instant::now();
    server.shutdown().await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "linger cut short"
    );
    let kinds: Vec<Value> = rx.events().iter().map(|e| e["type"].clone()).collect();
    assert_eq!(kinds, [json!("online"), json!("offline")]);
}

#[test]
fn webhooks_config_loads_from_toml_and_errors_name_the_key() {
    let dir = std::env::temp_dir().join(format!("impush-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("impush.toml");
    let write = |events: &str, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[webhooks]\nbatch_size = 10\nlinger = \"50ms\"\n[webhooks.retry]\nmax_age = \"1m\"\n\
                 [[webhooks.endpoints]]\nurl = \"https://hooks.example.com/impush\"\n\
                 events = {events}\nsecret = \"{SECRET}\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write(
        r#"["online", "offline", "stored", "join", "left"]"#,
        "include_data = true\n",
    );
    let c = Config::load(Some(&file)).unwrap();
    assert_eq!(c.webhooks.batch_size, 10);
    assert_eq!(c.webhooks.retry.max_age, Duration::from_secs(60));
    assert_eq!(c.webhooks.endpoints[0].events[3], EventKind::Joined);
    assert!(c.webhooks.endpoints[0].include_data);
    assert!(
        !format!("{c:?}").contains(SECRET),
        "the secret stays out of Debug"
    );

    write(r#"["online", "typo"]"#, "");
    let e = Config::load(Some(&file)).unwrap_err().to_string();
    assert!(
        e.contains("webhooks") && e.contains("typo") && !e.contains('\n'),
        "{e}"
    );
    write(r#"["online"]"#, "colour = 1\n");
    let e = Config::load(Some(&file)).unwrap_err().to_string();
    assert!(e.contains("colour"), "{e}");
    write("[]", "");
    let e = Config::load(Some(&file)).unwrap_err().to_string();
    assert!(e.contains("webhooks.endpoints.0.events"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
