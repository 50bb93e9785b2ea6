//! Two real `impush-nats` processes over a real NATS server (`IMPUSH_TEST_NATS_URL`), with
//! `[presence] kind = "cluster"` (the nodes keep presence among themselves over the broker: NATS
//! is the only service), a helper in this process built with the same registry, and WebSocket
//! clients on both nodes. Checks a message across nodes with its receipt, a channel message
//! reaching both nodes, the online/offline events the helper sees, and a kick across nodes.
//!
//! The process handling is a small copy of the lead engineer's `server/tests/cluster/harness.rs`.

#![allow(clippy::unwrap_used)]

use std::{
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use impush_core::{ChannelName, ClientId, Event};
use impush_helper::{Backends, EventStream, HelperConfig, ImHelper};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_impush-nats");
/// How long one step may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Two nodes and the helper's config file; SIGTERM (then SIGKILL) and clean-up on drop.
struct Cluster {
    dir: PathBuf,
    prefix: String,
    nodes: Vec<Child>,
}

impl Cluster {
    fn start(url: &str) -> Cluster {
        let prefix = impush_tests::unique_ns();
        let dir = std::env::temp_dir().join(format!("impush-nats-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let addrs = free_addrs(2);
        let nodes: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = \"n{}\", url = \"ws://{a}\" }}", i + 1))
            .collect();
        let common = format!(
            "[cluster]\nnodes = [{}]\nnode_lease = \"5s\"\n\
             [auth]\nsecret = \"cluster-secret\"\napi_key = \"k\"\n\
             [broker]\nkind = \"nats\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
             stream_max_age = \"10m\"\nstream_max_bytes = 67108864\nack_wait = \"5s\"\n\
             [presence]\nkind = \"cluster\"\nquery_timeout = \"2s\"\n",
            nodes.join(", ")
        );
        std::fs::write(dir.join("helper.toml"), &common).unwrap();
        let mut cluster = Cluster {
            dir,
            prefix,
            nodes: Vec::new(),
        };
        for (i, a) in addrs.iter().enumerate() {
            let path = cluster.dir.join(format!("n{}.toml", i + 1));
            let node = format!("[node]\nid = \"n{}\"\nlisten = \"{a}\"\n{common}", i + 1);
            std::fs::write(&path, node).unwrap();
            cluster.nodes.push(spawn_node(&path));
        }
        cluster
    }

    async fn helper(&self) -> ImHelper {
        let config = HelperConfig::load(Some(&self.dir.join("helper.toml"))).unwrap();
        // The same registrations as the nodes' binary (src/main.rs).
        let mut backends = Backends::with_defaults();
        impush_example_nats::register(&mut backends);
        ImHelper::builder(&config)
            .backends(backends)
            .connect()
            .await
            .unwrap()
    }

    /// Stops the nodes, then deletes the cluster's stream (named after the prefix, see the
    /// crate docs).
    async fn stop_and_clean(mut self, url: &str) {
        tokio::task::block_in_place(|| self.stop());
        let client = async_nats::connect(url).await.unwrap();
        async_nats::jetstream::new(client)
            .delete_stream(&self.prefix)
            .await
            .unwrap();
    }

    /// SIGTERM, then SIGKILL for a node still running after 10 s.
    fn stop(&mut self) {
        for c in &self.nodes {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Starts `impush-nats --config path` and waits for its "listening" line.
fn spawn_node(config: &Path) -> Child {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("IMPUSH_TEST_NODE_LOG").unwrap_or("warn".into()),
        )
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
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(first) if first.starts_with("impush listening on") => child,
        other => {
            let _ = child.kill();
            panic!("{} did not start: {other:?}", config.display());
        }
    }
}

/// A client id the partitioner assigns to node `n{i+1}`.
fn client_on(h: &ImHelper, i: usize, tag: &str) -> ClientId {
    let want = format!("n{}", i + 1);
    (0..)
        .map(|k| format!("{tag}{k}").parse::<ClientId>().unwrap())
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

/// The next text frame as JSON (control frames skipped).
async fn next_json(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Close(f))) => panic!("connection closed: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a frame in time")
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
    .expect("a close frame in time")
}

/// Waits until an event matching each of `preds` has arrived, in any order (events of
/// different nodes have no order), skipping others.
async fn wait_events(events: &mut EventStream, what: &str, preds: &[&dyn Fn(&Event) -> bool]) {
    let mut missing: Vec<_> = preds.iter().collect();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while !missing.is_empty() {
            let ev = events
                .next()
                .await
                .expect("event stream open")
                .expect("event");
            missing.retain(|p| !p(&ev));
            seen.push(ev);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{what}: not all within {WAIT:?}; got {seen:?}"
    );
}

/// Polls `cond` until it holds, failing after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_nats() {
    let Some(url) = impush_tests::env_or_skip("IMPUSH_TEST_NATS_URL") else {
        return;
    };
    let cluster = tokio::task::block_in_place(|| Cluster::start(&url));
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();

    // A client on each node; the helper sees both come online, and queries (answered by the
    // nodes over NATS) agree.
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let mut wa = connect(&h, &a).await;
    let mut wb = connect(&h, &b).await;
    wait_events(
        &mut events,
        "online events",
        &[
            &|e| matches!(e, Event::Online { client, .. } if *client == a),
            &|e| matches!(e, Event::Online { client, .. } if *client == b),
        ],
    )
    .await;
    eventually("both online in queries", || async {
        let online = h.online_clients().await.unwrap();
        online.is_complete() && online.len() == 2
    })
    .await;

    // Across nodes, with a receipt back to the sender's node.
    let r = h
        .send_message(&a, std::slice::from_ref(&b), &json!({"hi": 1}), true)
        .await
        .unwrap();
    let f = next_json(&mut wb).await;
    assert_eq!(
        (f["type"].as_str(), f["id"].as_str()),
        (Some("message"), Some(r.id.as_str())),
        "{f}"
    );
    assert_eq!(f["data"], json!({"hi": 1}));
    let receipt = next_json(&mut wa).await;
    assert_eq!(receipt["status"], "delivered", "{receipt}");
    assert_eq!(receipt["to"], json!([b.as_str()]), "{receipt}");

    // A channel with a member on each node.
    let room: ChannelName = "room".parse().unwrap();
    h.join_channel(&room, &[a.clone(), b.clone()])
        .await
        .unwrap();
    eventually("both in the channel", || async {
        h.channel_online(&room).await.unwrap().value == 2
    })
    .await;
    h.send_channel_message(&a, &room, &"to the room")
        .await
        .unwrap();
    for w in [&mut wa, &mut wb] {
        let f = next_json(w).await;
        assert_eq!(f["data"], "to the room", "{f}");
    }

    // Kick the client of node 2 from this process.
    assert_eq!(h.force_offline(&b).await.unwrap(), 1);
    assert_eq!(close_code(&mut wb).await, 4001);
    wait_events(
        &mut events,
        "offline event",
        &[&|e| matches!(e, Event::Offline { client, .. } if *client == b)],
    )
    .await;
    eventually("queries agree with the kick", || async {
        !h.is_online(&b).await.unwrap().value && h.is_online(&a).await.unwrap().value
    })
    .await;

    drop((h, events, wa, wb));
    cluster.stop_and_clean(&url).await;
}
