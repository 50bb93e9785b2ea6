//! Real `impush` processes forming a cluster over a real broker, and the tools the cluster
//! cases use: clients on a chosen node, events, HTTP calls, waiting on conditions.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use impush_core::{ClientId, Event};
use impush_helper::{EventStream, HelperConfig, ImHelper};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_impush");
/// How long a case waits for one thing to happen before failing.
pub const WAIT: Duration = Duration::from_secs(15);
/// The API key of every test cluster.
pub const API_KEY: &str = "k";

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A backbone the cluster cases run over.
pub struct Backend {
    /// For messages.
    pub name: &'static str,
    /// The `[broker]` and `[presence]` sections (no `prefix`: each cluster gets its own) for a
    /// broker at `url`. Lines in the `[broker]` section come first, so the harness can append
    /// `prefix`.
    pub sections: fn(url: &str) -> String,
    /// The URL of the shared test broker, or `None` (skipped, or a failure in CI).
    pub shared_url: fn() -> Option<String>,
    /// A private instance of the broker that a case may stop, stall and restart.
    pub private: fn() -> Option<Box<dyn PrivateBroker>>,
    /// The offline store's keys for `[offline]` (after `enabled`), when a case turns the inbox
    /// on: `{dir}` becomes the cluster's directory and `{node}` the node id.
    pub offline: &'static str,
}

/// A broker instance owned by one test.
pub trait PrivateBroker: Send {
    /// Its URL (what `sections` takes).
    fn url(&self) -> String;
    /// Stops it (data may be lost, as in a real restart without persistence).
    fn stop(&mut self);
    /// Starts it again on the same address after [`PrivateBroker::stop`].
    fn start(&mut self);
    /// Freezes it (SIGSTOP): connections stay open, nothing answers.
    fn stall(&mut self);
    /// Thaws it (SIGCONT).
    fn resume(&mut self);
}

pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Options of a test cluster.
#[derive(Clone)]
pub struct Spec {
    pub nodes: usize,
    pub lease: &'static str,
    /// Extra TOML appended to every node's and the helper's file.
    pub extra: String,
    /// Turn the offline inbox on (with the backend's store).
    pub offline: bool,
}

impl Spec {
    pub fn new(nodes: usize, lease: &'static str) -> Self {
        Self {
            nodes,
            lease,
            extra: String::new(),
            offline: false,
        }
    }

    pub fn with_offline(mut self) -> Self {
        self.offline = true;
        self
    }
}

/// A cluster of `impush` processes sharing one config file layout.
pub struct Cluster {
    dir: PathBuf,
    pub addrs: Vec<SocketAddr>,
    nodes: Vec<Option<Child>>,
    helper_config: PathBuf,
}

impl Cluster {
    fn config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.toml", i + 1))
    }

    /// Starts the nodes of `spec` over the broker at `url` and waits for each to listen.
    /// Blocking: call through [`Cluster::start`].
    fn start_blocking(backend: &Backend, url: &str, spec: &Spec) -> Cluster {
        let prefix = impush_tests::unique_ns();
        let dir = std::env::temp_dir().join(format!("impush-cluster-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let addrs = free_addrs(spec.nodes);
        let nodes_toml: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = \"n{}\", url = \"ws://{a}\" }}", i + 1))
            .collect();
        let sections = (backend.sections)(url).replacen(
            "[broker]\n",
            &format!("[broker]\nprefix = \"{prefix}\"\n"),
            1,
        );
        let common = format!(
            "[cluster]\nnodes = [{}]\nnode_lease = \"{}\"\n\
             [auth]\nsecret = \"cluster-secret\"\napi_key = \"{API_KEY}\"\n{sections}{}",
            nodes_toml.join(", "),
            spec.lease,
            spec.extra,
        );
        let mut cluster = Cluster {
            helper_config: dir.join("helper.toml"),
            dir,
            addrs: addrs.clone(),
            nodes: Vec::new(),
        };
        std::fs::write(&cluster.helper_config, &common).unwrap();
        for (i, a) in addrs.iter().enumerate() {
            let node = format!("n{}", i + 1);
            let offline = if spec.offline {
                format!(
                    "[offline]\nenabled = true\nmax_per_client = 10000\n{}\n",
                    backend
                        .offline
                        .replace("{dir}", &cluster.dir.display().to_string())
                        .replace("{node}", &node)
                )
            } else {
                String::new()
            };
            // A returning client gets its whole inbox at once: the queue must hold it (the
            // node refuses an inbox bound its outbound queue cannot take).
            let queue = if spec.offline {
                "outbound_queue = 20000\noutbound_queue_bytes = 67108864\n"
            } else {
                ""
            };
            let toml = format!(
                "[node]\nid = \"{node}\"\nlisten = \"{a}\"\n{common}\n[limits]\nshutdown_grace = \"3s\"\n{queue}{offline}"
            );
            std::fs::write(cluster.config(i), toml).unwrap();
        }
        for i in 0..spec.nodes {
            let child = spawn_node(&cluster.config(i));
            cluster.nodes.push(Some(child));
        }
        cluster
    }

    pub fn start(backend: &Backend, url: &str, spec: &Spec) -> Cluster {
        tokio::task::block_in_place(|| Self::start_blocking(backend, url, spec))
    }

    pub async fn helper(&self) -> ImHelper {
        let cfg = HelperConfig::load(Some(&self.helper_config)).unwrap();
        ImHelper::connect(&cfg).await.unwrap()
    }

    /// SIGKILL: no goodbye, no clean-up.
    pub fn kill9(&mut self, i: usize) {
        let mut child = self.nodes[i].take().expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts node `i` again with its config (same id and address).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node n{} is still running", i + 1);
        let config = self.config(i);
        self.nodes[i] = Some(tokio::task::block_in_place(|| spawn_node(&config)));
    }

    /// Sends `sig` (e.g. `-STOP`, `-CONT`) to node `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i].as_ref().expect("node is running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} node n{}", i + 1);
    }

    pub fn assert_running(&mut self) {
        for (i, c) in self.nodes.iter_mut().enumerate() {
            if let Some(c) = c {
                assert!(c.try_wait().unwrap().is_none(), "node n{} exited", i + 1);
            }
        }
    }

    pub fn http(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
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
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("node printed its listening line");
    assert!(first.starts_with("impush listening on"), "{first}");
    child
}

pub fn id(s: &str) -> ClientId {
    s.parse().unwrap()
}

/// A client id the partitioner assigns to node `n{i+1}`.
pub fn client_on(h: &ImHelper, i: usize, tag: &str) -> ClientId {
    let want = format!("n{}", i + 1);
    (0..)
        .map(|k| id(&format!("{tag}{k}")))
        .find(|c| h.cluster().owner(c).id.as_str() == want)
        .unwrap()
}

/// `n` distinct client ids owned by node `n{i+1}`.
pub fn clients_on(h: &ImHelper, i: usize, tag: &str, n: usize) -> Vec<ClientId> {
    let want = format!("n{}", i + 1);
    (0..)
        .map(|k| id(&format!("{tag}{k}")))
        .filter(|c| h.cluster().owner(c).id.as_str() == want)
        .take(n)
        .collect()
}

pub async fn connect(h: &ImHelper, c: &ClientId) -> Ws {
    let url = h.prepare_connect(c, Value::Null).unwrap().url;
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

/// Connects, retrying while the owning node is not listening yet (it is restarting).
pub async fn connect_when_up(h: &ImHelper, c: &ClientId) -> Ws {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = h.prepare_connect(c, Value::Null).unwrap().url;
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => return ws,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect {c}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, WAIT)
        .await
        .expect("a frame within the timeout")
}

/// The next text frame as JSON, or `None` if nothing came within `d` (control frames skipped).
pub async fn next_json_within(ws: &mut Ws, d: Duration) -> Option<Value> {
    tokio::time::timeout(d, async {
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
    .ok()
}

pub async fn close_code(ws: &mut Ws) -> u16 {
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

/// Waits up to `within` for an event matching `pred`, skipping others.
pub async fn wait_event_within(
    events: &mut EventStream,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(within, async {
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
    .unwrap_or_else(|_| panic!("no matching event within {within:?}"))
}

pub async fn wait_event(events: &mut EventStream, pred: impl Fn(&Event) -> bool) -> Event {
    wait_event_within(events, WAIT, pred).await
}

/// Every event that arrives within `d`.
pub async fn events_during(events: &mut EventStream, d: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, events.next()).await {
        out.push(item.expect("event"));
    }
    out
}

/// Polls `cond` until it holds, failing after `within`.
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, cond).await;
}

/// Status of a GET (`body` None) or an authenticated POST; never hangs past 10 s.
pub async fn status(url: String, body: Option<Value>) -> u16 {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let req = match body {
        Some(b) => c.post(url).bearer_auth(API_KEY).json(&b),
        None => c.get(url),
    };
    req.send()
        .await
        .expect("an answer, not a hang")
        .status()
        .as_u16()
}

/// An authenticated POST returning the status and the JSON body.
pub async fn post(url: String, body: Value) -> (u16, Value) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    match c.post(url).bearer_auth(API_KEY).json(&body).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null), // the node is down
    }
}

/// A private `redis-server` on a free port.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start_boxed() -> Option<Box<dyn PrivateBroker>> {
        let port = free_addrs(1)[0].port();
        let mut r = PrivateRedis { port, child: None };
        if !r.spawn() {
            return None;
        }
        Some(Box::new(r))
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
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
                return false;
            }
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig} redis-server");
        }
    }
}

impl PrivateBroker for PrivateRedis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn start(&mut self) {
        assert!(self.spawn(), "redis-server restarts");
    }
    fn stall(&mut self) {
        self.signal("-STOP");
    }
    fn resume(&mut self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.resume();
        self.stop();
    }
}

/// Sends `n` messages from `from` to `to` through node `via`'s HTTP API, with receipts; returns
/// the ids the API accepted.
pub async fn send_n(
    cluster: &Cluster,
    via: usize,
    from: &ClientId,
    to: &ClientId,
    n: usize,
) -> Vec<String> {
    let url = cluster.http(via) + "/api/v1/messages";
    let mut ids = Vec::new();
    for i in 0..n {
        let (s, body) = post(
            url.clone(),
            json!({"from": from.as_str(), "to": [to.as_str()], "data": i, "receipt": true}),
        )
        .await;
        assert_eq!(s, 200, "send {i}: {body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Waits until the sender's socket got a receipt for each of `ids` (any status but `acked`);
/// returns the statuses seen.
pub async fn receipts_for(ws: &mut Ws, ids: &[String]) -> Vec<String> {
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut got = HashSet::new();
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "receipts for {} of {} messages",
            got.len(),
            want.len()
        );
        if let Some(f) = next_json_within(ws, Duration::from_millis(500)).await {
            let id = f["id"].as_str().unwrap_or_default();
            if f["type"] == "receipt" && f["status"] != "acked" && want.contains(id) {
                got.insert(id.to_owned());
                statuses.push(f["status"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    statuses
}
