//! Real node processes forming a cluster over a real broker: the [`Spec`] of one cluster and
//! the [`Cluster`] itself (start, kill, restart, signal, a helper in this process), over a
//! [`Backend`] (re-exported from `backend`).

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use impush_core::NodeStatus;
use impush_helper::{Backends, HelperConfig, ImHelper};

pub use super::backend::{Backend, BrokerLink, Cleanup, StartAdvertising, StartPrivate};
use super::brokers::kill;
use super::launch::{spawn_node, Launch};

use crate::support::{eventually_within, free_addrs, unique_ns};

/// How long a case waits for one thing to happen before failing.
pub const WAIT: Duration = Duration::from_secs(15);
/// The API key of every test cluster.
pub const API_KEY: &str = "k";

/// Options of one test cluster.
#[derive(Clone, Debug)]
pub struct Spec {
    /// How many nodes (`n1`, `n2`, ...).
    pub nodes: usize,
    /// `cluster.node_lease`.
    pub lease: &'static str,
    /// Extra TOML appended to every node's and the helper's file.
    pub extra: String,
    /// Turn the offline inbox on (with the backend's store).
    pub offline: bool,
    /// Broker URLs that differ per node (index from 0), e.g. through a
    /// [`FaultProxy`](crate::proxy::FaultProxy); the others and the helper use the real one.
    pub broker_urls: BTreeMap<usize, String>,
    /// `[cluster]` keys of drain and return home (short by default: a stopping node drains
    /// before it exits, and every case stops its nodes at the end).
    pub moves: String,
    /// Extra `[limits]` keys of every node.
    pub limits: String,
    /// TOML appended to one node's file (index from 0), after everything else.
    pub node_toml: BTreeMap<usize, String>,
}

impl Spec {
    /// `nodes` nodes with a lease of `lease` (e.g. `"2s"`).
    pub fn new(nodes: usize, lease: &'static str) -> Self {
        Self {
            nodes,
            lease,
            extra: String::new(),
            offline: false,
            broker_urls: BTreeMap::new(),
            moves: "drain_period = \"1s\"\nrebalance_period = \"2s\"\nmove_grace = \"1s\"\n"
                .to_owned(),
            limits: String::new(),
            node_toml: BTreeMap::new(),
        }
    }

    /// Extra `[limits]` keys (TOML lines) for every node.
    pub fn limits(mut self, toml: impl Into<String>) -> Self {
        self.limits.push_str(&toml.into());
        self
    }

    /// Memberships end the moment a client's last connection closes (`[channels] linger =
    /// "0s"`), for cases about that moment rather than about reconnecting.
    pub fn without_linger(mut self) -> Self {
        self.extra.push_str("[channels]\nlinger = \"0s\"\n");
        self
    }

    /// Memberships outlive their clients' connections (`[channels] persist = true`).
    pub fn with_persistent_memberships(mut self) -> Self {
        self.extra.push_str("[channels]\npersist = true\n");
        self
    }

    /// `[cluster]` drain and return-home keys instead of the short defaults.
    pub fn moves(mut self, toml: impl Into<String>) -> Self {
        self.moves = toml.into();
        self
    }

    /// With the offline inbox on.
    pub fn with_offline(mut self) -> Self {
        self.offline = true;
        self
    }

    /// `toml` appended to node `i`'s file (from 0): tables of its own, or keys of a table the
    /// rest of the file does not open (`[broker.properties]`).
    pub fn node_toml(mut self, i: usize, toml: impl Into<String>) -> Self {
        self.node_toml.entry(i).or_default().push_str(&toml.into());
        self
    }

    /// Node `i` (from 0) reaches the broker at `url` instead.
    pub fn broker_url(mut self, i: usize, url: impl Into<String>) -> Self {
        self.broker_urls.insert(i, url.into());
        self
    }
}

/// A cluster of node processes, one config file each, in a directory of its own. Dropping it
/// kills every node (SIGKILL) and removes the directory.
pub struct Cluster {
    dir: PathBuf,
    /// The nodes' listening addresses, `n1` first.
    pub addrs: Vec<SocketAddr>,
    nodes: Vec<Option<Child>>,
    bin: PathBuf,
    helper_config: PathBuf,
    helper_backends: fn() -> Backends,
    prefix: String,
    /// The backend's cleanup and the URL it is for.
    cleanup: Option<(Cleanup, String)>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("addrs", &self.addrs)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Writes the configs of `spec` over the broker at `url`, starts every node and waits
    /// until each listens. Blocks (in place: call it from a multi-threaded runtime).
    pub fn start(backend: &Backend, url: &str, spec: &Spec) -> Cluster {
        tokio::task::block_in_place(|| Self::start_blocking(backend, url, spec))
    }

    fn start_blocking(backend: &Backend, url: &str, spec: &Spec) -> Cluster {
        let prefix = unique_ns();
        let dir = std::env::temp_dir().join(format!("impush-cluster-{prefix}"));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let addrs = free_addrs(spec.nodes);
        let nodes_toml: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = \"n{}\", url = \"ws://{a}\" }}", i + 1))
            .collect();
        let common = |url: &str| {
            format!(
                "[cluster]\nnodes = [{}]\nnode_lease = \"{}\"\n{}\
                 [auth]\nsecret = \"cluster-secret\"\napi_key = \"{API_KEY}\"\n{}{}",
                nodes_toml.join(", "),
                spec.lease,
                spec.moves,
                sections(backend, url, &prefix),
                spec.extra,
            )
        };
        let cluster = Cluster {
            helper_config: dir.join("helper.toml"),
            dir,
            addrs: addrs.clone(),
            nodes: Vec::new(),
            bin: backend.bin.clone(),
            helper_backends: backend.helper_backends,
            cleanup: backend.cleanup.map(|f| (f, url.to_owned())),
            prefix: prefix.clone(),
        };
        write(&cluster.helper_config, &common(url));
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
            let common = common(spec.broker_urls.get(&i).map_or(url, String::as_str));
            let toml = format!(
                "[node]\nid = \"{node}\"\nlisten = \"{a}\"\n{common}\n\
                 [limits]\nshutdown_grace = \"3s\"\n{}{queue}{offline}{}",
                spec.limits,
                spec.node_toml.get(&i).map_or("", String::as_str),
            );
            write(&cluster.config(i), &toml);
        }
        // Every node starts at once, as a deployment's do: a node's start waits on the broker
        // (a Kafka group join alone takes ~3 s), and one after another that wait was paid once
        // per node in every case.
        let mut cluster = cluster;
        let launches: Vec<Launch> = (0..spec.nodes)
            .map(|i| Launch::start(&cluster.bin, &cluster.config(i)))
            .collect();
        let mut failed = None;
        for launch in launches {
            match launch.listening() {
                Ok(child) => cluster.nodes.push(Some(child)),
                Err(why) => {
                    cluster.nodes.push(None);
                    failed.get_or_insert(why);
                }
            }
        }
        if let Some(why) = failed {
            // Dropping the cluster kills the nodes that did start.
            drop(cluster);
            panic!("{why}");
        }
        cluster.wait_until_every_node_sees_every_node();
        cluster
    }

    /// Waits (up to [`WAIT`]) until every node's live view (`GET /api/v1/nodes`) holds every
    /// node as `live`: nodes that started together may still be learning of each other when
    /// they listen, and a case starts from a cluster whose nodes agree on who owns whom.
    fn wait_until_every_node_sees_every_node(&self) {
        let deadline = Instant::now() + WAIT;
        let rt = tokio::runtime::Handle::current();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        for i in 0..self.addrs.len() {
            let url = self.http(i) + "/api/v1/nodes";
            loop {
                let body: serde_json::Value = rt
                    .block_on(async {
                        let r = http.get(&url).bearer_auth(API_KEY).send().await.ok()?;
                        r.json().await.ok()
                    })
                    .unwrap_or_default();
                let live = body["nodes"]
                    .as_array()
                    .map_or(0, |ns| ns.iter().filter(|n| n["status"] == "live").count());
                if live == self.addrs.len() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node n{} does not see every node live within {WAIT:?}: {body}",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.toml", i + 1))
    }

    /// The prefix of this cluster's topics and keys (unique to it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A helper of this cluster, in this process.
    pub async fn helper(&self) -> ImHelper {
        let cfg = HelperConfig::load(Some(&self.helper_config)).expect("the helper's config");
        // A broker busy with the cases beside this one can miss the helper's first ping (a
        // Kafka metadata request timed out at `request_timeout` in a CI run): a transient
        // failure is tried again, up to `WAIT`; anything else fails at once.
        let deadline = Instant::now() + WAIT;
        let h = loop {
            match ImHelper::builder(&cfg)
                .backends((self.helper_backends)())
                .connect()
                .await
            {
                Ok(h) => break h,
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("the helper connects: {e:?}"),
            }
        };
        // The helper's live view decides connect URLs: a case starts once it holds every
        // running node as live, as the nodes' own views do.
        let running: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(|i| format!("n{}", i + 1))
            .collect();
        eventually_within("the helper sees every running node live", WAIT, || {
            let statuses = h.cluster().statuses();
            let seen = running.iter().all(|want| {
                statuses
                    .iter()
                    .any(|(id, s)| id.as_str() == want && *s == NodeStatus::Live)
            });
            async move { seen }
        })
        .await;
        h
    }

    /// SIGKILL to node `i`: no goodbye, no clean-up.
    pub fn kill9(&mut self, i: usize) {
        let mut child = self.nodes[i].take().expect("node is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts node `i` again with its config (same id and address).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node n{} is still running", i + 1);
        let (bin, config) = (self.bin.clone(), self.config(i));
        self.nodes[i] = Some(tokio::task::block_in_place(|| spawn_node(&bin, &config)));
    }

    /// SIGTERM to node `i`, then waits (up to `within`) until it exited: a graceful stop, which
    /// drains its clients to their next nodes first when another node is live
    /// (`docs/design.md` section 16). Returns how long it took.
    ///
    /// # Panics
    /// When the node is not running, does not exit within `within` (it is killed then), or
    /// exits with a failure.
    pub fn stop_gracefully(&mut self, i: usize, within: Duration) -> Duration {
        let mut child = self.nodes[i].take().expect("node is running");
        let asked = Instant::now();
        assert!(kill("-TERM", child.id()), "kill -TERM node n{}", i + 1);
        let status = tokio::task::block_in_place(|| loop {
            if let Some(status) = child.try_wait().expect("wait on a node") {
                break status;
            }
            if asked.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node n{} did not exit within {within:?} of SIGTERM", i + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        });
        assert!(status.success(), "node n{} exited with {status}", i + 1);
        asked.elapsed()
    }

    /// Sends `sig` (e.g. `-STOP`, `-CONT`) to node `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i].as_ref().expect("node is running").id();
        assert!(kill(sig, pid), "kill {sig} node n{}", i + 1);
    }

    /// Asserts that no node that should run has exited.
    pub fn assert_running(&mut self) {
        for (i, c) in self.nodes.iter_mut().enumerate() {
            if let Some(c) = c {
                let exited = c.try_wait().expect("wait on a node");
                assert!(exited.is_none(), "node n{} exited: {exited:?}", i + 1);
            }
        }
    }

    /// `http://` and node `i`'s address.
    pub fn http(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL, not SIGTERM: a case is over when it is dropped, and a graceful stop drains
        // every node's clients towards nodes that are stopping too (~3 s a case: over a
        // hundred cases, the longest part of the suite's wall time). Each cluster has broker
        // names of its own (its prefix), so what a killed node leaves behind (presence
        // entries, queues, consumer-group members until their session expires) is nobody
        // else's; a backend with a cleanup removes it below. Graceful stops are tested where
        // they are the subject (`stop_gracefully`).
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.kill();
        }
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((cleanup, url)) = &self.cleanup {
            cleanup(url, &self.prefix);
        }
    }
}

/// The backend's sections for `url`, with the cluster's prefix in `[broker]`.
fn sections(backend: &Backend, url: &str, prefix: &str) -> String {
    let sections = (backend.sections)(url);
    assert!(
        sections.starts_with("[broker]\n"),
        "[{}] sections must start with a [broker] table: {sections}",
        backend.name
    );
    sections.replacen(
        "[broker]\n",
        &format!("[broker]\nprefix = \"{prefix}\"\n"),
        1,
    )
}

fn write(path: &Path, toml: &str) {
    std::fs::write(path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
