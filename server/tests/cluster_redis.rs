//! Real `impush` processes forming a cluster over a real Redis: cross-node delivery, receipts,
//! channels, broadcast, events seen by a helper in another process, kicks; a node killed with
//! SIGKILL; Redis restarted under running nodes.
//!
//! Needs `IMPUSH_TEST_REDIS_URL` (`scripts/brokers.sh up`) and, for the restart test,
//! `redis-server` on the PATH. Without them the tests print SKIPPED (or fail when
//! `IMPUSH_REQUIRE_BROKERS` is set, as in CI).

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use impush_core::{ChannelName, ClientId, Event};
use impush_helper::{EventStream, HelperConfig, ImHelper};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_impush");
const WAIT: Duration = Duration::from_secs(15);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// A cluster of `impush` processes sharing one config file layout.
struct Cluster {
    dir: PathBuf,
    addrs: Vec<SocketAddr>,
    nodes: Vec<Option<Child>>,
    helper_config: PathBuf,
}

impl Cluster {
    fn config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.toml", i + 1))
    }

    /// Starts `n` nodes and waits for each to listen (blocking: call via `block_in_place`).
    fn start(redis_url: &str, n: usize, lease: &str) -> Cluster {
        let prefix = impush_tests::unique_ns();
        let dir = std::env::temp_dir().join(format!("impush-cluster-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let addrs = free_addrs(n);
        let nodes_toml: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = \"n{}\", url = \"ws://{a}\" }}", i + 1))
            .collect();
        let common = format!(
            "[cluster]\nnodes = [{}]\nnode_lease = \"{lease}\"\n\
             [auth]\nsecret = \"cluster-secret\"\napi_key = \"k\"\n\
             [broker]\nkind = \"redis\"\nurl = \"{redis_url}\"\nprefix = \"{prefix}\"\ncommand_timeout = \"1s\"\n\
             [presence]\nkind = \"redis\"\n",
            nodes_toml.join(", ")
        );
        let mut cluster = Cluster {
            helper_config: dir.join("helper.toml"),
            dir,
            addrs: addrs.clone(),
            nodes: Vec::new(),
        };
        std::fs::write(&cluster.helper_config, &common).unwrap();
        for (i, a) in addrs.iter().enumerate() {
            let toml = format!(
                "[node]\nid = \"n{}\"\nlisten = \"{a}\"\n{common}[limits]\nshutdown_grace = \"3s\"\n",
                i + 1
            );
            std::fs::write(cluster.config(i), toml).unwrap();
        }
        for i in 0..n {
            let child = spawn_node(&cluster.config(i));
            cluster.nodes.push(Some(child));
        }
        cluster
    }

    async fn helper(&self) -> ImHelper {
        let cfg = HelperConfig::load(Some(&self.helper_config)).unwrap();
        ImHelper::connect(&cfg).await.unwrap()
    }

    fn kill9(&mut self, i: usize) {
        let mut child = self.nodes[i].take().unwrap();
        child.kill().unwrap(); // SIGKILL: no goodbye, no cleanup
        child.wait().unwrap();
    }

    fn assert_running(&mut self) {
        for (i, c) in self.nodes.iter_mut().enumerate() {
            if let Some(c) = c {
                assert!(c.try_wait().unwrap().is_none(), "node n{} exited", i + 1);
            }
        }
    }

    fn http(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in self.nodes.iter_mut().flatten() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `impush --config path` and waits for its "listening" line.
fn spawn_node(config: &Path) -> Child {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {} // keep draining so the node never blocks on stdout
    });
    let first = rx
        .recv_timeout(WAIT)
        .expect("node printed its listening line");
    assert!(first.starts_with("impush listening on"), "{first}");
    child
}

fn id(s: &str) -> ClientId {
    s.parse().unwrap()
}

/// A client id the partitioner assigns to node `n{i+1}`.
fn client_on(h: &ImHelper, i: usize, tag: &str) -> ClientId {
    let want = format!("n{}", i + 1);
    (0..)
        .map(|k| id(&format!("{tag}{k}")))
        .find(|c| h.cluster().owner(c).id.as_str() == want)
        .unwrap()
}

async fn connect(h: &ImHelper, c: &ClientId) -> Ws {
    let url = h.prepare_connect(c, Value::Null).unwrap().url;
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

async fn next_json(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("frame in time")
}

async fn close_code(ws: &mut Ws) -> u16 {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close in time")
}

/// Waits for an event matching `pred`, skipping others.
async fn wait_event(events: &mut EventStream, pred: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = events
                .next()
                .await
                .expect("event stream open")
                .expect("event");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event in time")
}

async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_redis() {
    let Some(url) = impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL") else {
        return;
    };
    let cluster = tokio::task::block_in_place(|| Cluster::start(&url, 3, "10s"));
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
    assert_eq!(h.online_clients().await.unwrap().len(), 3);

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
    let mut st = vec![next_json(&mut ws[0]).await, next_json(&mut ws[0]).await];
    // The receivers are on two nodes: each node settles its own and sends one receipt frame.
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
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(online["clients"].as_array().unwrap().len(), 3, "{online}");

    // Kick a client of node 3 from this process.
    assert_eq!(h.force_offline(&cs[2]).await.unwrap(), 1);
    assert_eq!(close_code(&mut ws[2]).await, 4001);
    let c2 = cs[2].clone();
    wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, last: true, .. } if *client == c2),
    )
    .await;
    assert!(!h.is_online(&cs[2]).await.unwrap().value);
    assert_eq!(h.channel_members(&room).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_drops_its_clients_within_the_lease() {
    let Some(url) = impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL") else {
        return;
    };
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(&url, 2, "2s"));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let _wb = connect(&h, &b).await;
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .unwrap()
            .value
            == [true, true]
    })
    .await;
    let room: ChannelName = "lobby".parse().unwrap();
    h.join_channel(&room, &[a.clone(), b.clone()])
        .await
        .unwrap();

    let killed = Instant::now();
    cluster.kill9(1);
    let b2 = b.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, .. } if *client == b2),
    )
    .await;
    let took = killed.elapsed();
    let Event::Offline { node, last, .. } = ev else {
        unreachable!()
    };
    assert_eq!((node.as_str(), last), ("n2", true));
    assert!(!h.is_online(&b).await.unwrap().value);
    assert!(h.is_online(&a).await.unwrap().value);
    assert_eq!(h.channel_members(&room).await.unwrap(), vec![a.clone()]);
    eprintln!("offline event for the killed node's client after {took:?} (lease 2s)");
    cluster.assert_running();
}

/// A private redis-server on a free port, so this test can restart it without disturbing
/// the other tests.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Option<PrivateRedis> {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(_) if std::env::var_os("IMPUSH_REQUIRE_BROKERS").is_some() => {
                panic!("redis-server must be on the PATH (scripts/brokers.sh install)")
            }
            Err(_) => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED: redis-server is not installed");
                return None;
            }
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(PrivateRedis {
            port,
            child: Some(child),
        })
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn status(url: String, body: Option<Value>) -> u16 {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let req = match body {
        Some(b) => c.post(url).bearer_auth("k").json(&b),
        None => c.get(url),
    };
    req.send()
        .await
        .expect("an answer, not a hang")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_nodes_and_sockets_and_delivery_resumes() {
    let port = free_addrs(1)[0].port();
    let Some(mut redis) = PrivateRedis::start(port) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(&url, 2, "2s"));
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let mut wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .unwrap()
            .value
            == [true, true]
    })
    .await;
    let room: ChannelName = "survivors".parse().unwrap();
    h.join_channel(&room, &[a.clone(), b.clone()])
        .await
        .unwrap();

    redis.stop();
    for i in 0..2 {
        let ready = cluster.http(i) + "/readyz";
        eventually("readyz says 503", || {
            status(ready.clone(), None).map_eq(503)
        })
        .await;
    }
    let send = cluster.http(0) + "/api/v1/messages";
    let started = Instant::now();
    let s = status(
        send.clone(),
        Some(json!({"from": a.as_str(), "to": [b.as_str()], "data": 1})),
    )
    .await;
    assert_eq!(s, 503, "send while Redis is down");
    eprintln!("503 while Redis was down after {:?}", started.elapsed());

    let _redis = PrivateRedis::start(redis.port).unwrap();
    for i in 0..2 {
        let ready = cluster.http(i) + "/readyz";
        eventually("readyz back to 200", || {
            status(ready.clone(), None).map_eq(200)
        })
        .await;
    }
    cluster.assert_running();
    // Redis came back empty: the nodes register their connections and channels again.
    eventually("presence registered again", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .unwrap_or_default()
            .value
            == [true, true]
    })
    .await;
    eventually("channel registered again", || async {
        h.channel_members(&room).await.unwrap_or_default().len() == 2
    })
    .await;
    // The sockets were never closed; delivery works again across nodes and on the channel.
    eventually("message delivered after the restart", || async {
        h.send_message(&a, std::slice::from_ref(&b), &"after", false)
            .await
            .is_ok()
    })
    .await;
    assert_eq!(next_json(&mut wb).await["data"], "after");
    h.send_channel_message(&b, &room, &"room after")
        .await
        .unwrap();
    assert_eq!(next_json(&mut wa).await["data"], "room after");
    assert_eq!(next_json(&mut wb).await["data"], "room after");
    drop(cluster); // the nodes go before their Redis
}

trait MapEq {
    fn map_eq(self, want: u16)
        -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

impl<F: std::future::Future<Output = u16> + Send + 'static> MapEq for F {
    fn map_eq(
        self,
        want: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        Box::pin(async move { self.await == want })
    }
}
