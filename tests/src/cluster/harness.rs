//! Real node processes forming a cluster over a real broker: the [`Backend`] a suite runs over
//! (which binary, which `[broker]` and `[presence]`), the [`Spec`] of one cluster, and the
//! [`Cluster`] itself (start, kill, restart, signal, a helper in this process).

use std::{
    collections::BTreeMap,
    fmt,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use impush_helper::{Backends, HelperConfig, ImHelper};

use super::brokers::PrivateBroker;
use crate::support::{free_addrs, unique_ns};

/// How long a case waits for one thing to happen before failing.
pub const WAIT: Duration = Duration::from_secs(15);
/// The API key of every test cluster.
pub const API_KEY: &str = "k";

/// Starts a private broker instance, or `None` when it cannot be installed here (skipped).
pub type StartPrivate = fn() -> Option<Box<dyn PrivateBroker>>;

/// A backbone the cluster cases run over: the node binary, its config sections, where the
/// shared broker is, and optionally a private instance the fault cases may stop and freeze.
///
/// Built with [`Backend::new`] and the builder methods; see the module docs of
/// [`cluster`](crate::cluster) for a whole example.
pub struct Backend {
    name: &'static str,
    bin: PathBuf,
    sections: fn(url: &str) -> String,
    shared_url: fn() -> Option<String>,
    private: Option<StartPrivate>,
    offline: String,
    helper_backends: fn() -> Backends,
    cleanup: Option<fn(url: &str, prefix: &str)>,
    refusal_within: Duration,
}

impl Backend {
    /// A backend named `name` (for messages), whose nodes run `bin` (pass
    /// `env!("CARGO_BIN_EXE_<your binary>")` from an integration test of the crate that builds
    /// it).
    ///
    /// `sections(url)` is the TOML every node and the helper get for a broker at `url`: a
    /// `[broker]` table first (the harness adds `prefix` to it, one per cluster), then
    /// `[presence]` and any other table the backend needs, except `[node]`, `[cluster]`,
    /// `[auth]`, `[limits]` and `[offline]`, which the harness writes. `shared_url()` is the
    /// broker the cases share, or `None` to skip them (use
    /// [`env_or_skip`](crate::env_or_skip)).
    pub fn new(
        name: &'static str,
        bin: impl Into<PathBuf>,
        sections: fn(url: &str) -> String,
        shared_url: fn() -> Option<String>,
    ) -> Self {
        Self {
            name,
            bin: bin.into(),
            sections,
            shared_url,
            private: None,
            offline: "kind = \"memory\"".into(),
            helper_backends: Backends::with_defaults,
            cleanup: None,
            refusal_within: Duration::from_secs(4),
        }
    }

    /// A private instance of the broker that the `private_broker` cases stop, freeze and
    /// restart. Without one, leave that group out of `cluster_suite!`.
    pub fn private(mut self, start: StartPrivate) -> Self {
        self.private = Some(start);
        self
    }

    /// The offline store's keys for `[offline]` (after `enabled`) when a case turns the inbox
    /// on: `{dir}` becomes the cluster's directory and `{node}` the node id. Default
    /// `kind = "memory"`.
    pub fn offline(mut self, keys: impl Into<String>) -> Self {
        self.offline = keys.into();
        self
    }

    /// The registry the helper in the test process is built with: the nodes' own (a custom
    /// broker registers its `kind` here as in its binary). Default
    /// [`Backends::with_defaults`].
    pub fn helper_backends(mut self, backends: fn() -> Backends) -> Self {
        self.helper_backends = backends;
        self
    }

    /// Called when a cluster is dropped, after its nodes stopped, with the broker URL and the
    /// cluster's prefix: deletes what the broker keeps for a prefix (a stream, a topic). Best
    /// effort: it must not panic or hang, the broker may be down.
    pub fn cleanup(mut self, cleanup: fn(url: &str, prefix: &str)) -> Self {
        self.cleanup = Some(cleanup);
        self
    }

    /// How quickly a node refuses a send (503) while the broker is down: what the `[broker]`
    /// timeouts in `sections` allow, plus slack. Default 4 s.
    pub fn refusal_within(mut self, within: Duration) -> Self {
        self.refusal_within = within;
        self
    }

    /// The name given to [`Backend::new`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The shared broker's URL, or `None` (the case is skipped).
    pub fn shared_url(&self) -> Option<String> {
        (self.shared_url)()
    }

    /// See [`Backend::refusal_within`].
    pub fn refusal_bound(&self) -> Duration {
        self.refusal_within
    }

    /// Starts a private broker, or `None` when it is not installed here (skipped).
    ///
    /// # Panics
    /// When the backend has none: a suite that lists the `private_broker` group needs
    /// [`Backend::private`].
    pub fn start_private(&self) -> Option<Box<dyn PrivateBroker>> {
        let Some(start) = self.private else {
            panic!(
                "[{}] has no private broker (Backend::private): leave `private_broker` out of \
                 its cluster_suite! groups",
                self.name
            )
        };
        tokio::task::block_in_place(start)
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("bin", &self.bin)
            .field("private", &self.private.is_some())
            .field("offline", &self.offline)
            .finish_non_exhaustive()
    }
}

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
        }
    }

    /// With the offline inbox on.
    pub fn with_offline(mut self) -> Self {
        self.offline = true;
        self
    }

    /// Node `i` (from 0) reaches the broker at `url` instead.
    pub fn broker_url(mut self, i: usize, url: impl Into<String>) -> Self {
        self.broker_urls.insert(i, url.into());
        self
    }
}

/// A cluster of node processes, one config file each, in a directory of its own. Dropping it
/// stops every node (SIGCONT, SIGTERM, then SIGKILL after 10 s) and removes the directory.
pub struct Cluster {
    dir: PathBuf,
    /// The nodes' listening addresses, `n1` first.
    pub addrs: Vec<SocketAddr>,
    nodes: Vec<Option<Child>>,
    bin: PathBuf,
    helper_config: PathBuf,
    helper_backends: fn() -> Backends,
    prefix: String,
    cleanup: Option<(fn(&str, &str), String)>,
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
                "[cluster]\nnodes = [{}]\nnode_lease = \"{}\"\n\
                 [auth]\nsecret = \"cluster-secret\"\napi_key = \"{API_KEY}\"\n{}{}",
                nodes_toml.join(", "),
                spec.lease,
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
                 [limits]\nshutdown_grace = \"3s\"\n{queue}{offline}"
            );
            write(&cluster.config(i), &toml);
        }
        let mut cluster = cluster;
        for i in 0..spec.nodes {
            let child = spawn_node(&cluster.bin, &cluster.config(i));
            cluster.nodes.push(Some(child));
        }
        cluster
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
        ImHelper::builder(&cfg)
            .backends((self.helper_backends)())
            .connect()
            .await
            .expect("the helper connects")
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
        for c in self.nodes.iter_mut().flatten() {
            kill("-CONT", c.id());
            kill("-TERM", c.id());
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

/// `kill sig pid`; whether it worked.
pub(crate) fn kill(sig: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `bin --config path` and waits for its "listening" line.
fn spawn_node(bin: &Path, config: &Path) -> Child {
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("IMPUSH_TEST_NODE_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("piped stdout");
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
            let _ = child.wait();
            let _ = writeln!(std::io::stderr(), "{}:", config.display());
            let _ = std::io::stderr().write_all(&std::fs::read(config).unwrap_or_default());
            panic!("{} did not start: {other:?}", bin.display());
        }
    }
}
