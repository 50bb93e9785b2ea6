//! The idle scenario: how many sockets the node processes hold, what each costs in memory and
//! CPU, and how fast they connect. One node on the memory broker by default; `--nodes N
//! --broker redis` (or rabbitmq, kafka) spreads the sockets over N node processes, each client
//! on the node that owns it, to show the whole machine as a cluster.

use std::time::Duration;

use impush_core::ClientId;
use serde_json::{json, Value};

use crate::{
    fleet::{Fleet, Merged, NodeProc},
    report::{self, median_at, Check},
    scenarios::{n1_urls, tmpdir, write_configs, Bench, Opts, TempDir},
    sys,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// What the idle scenario is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct IdlePlan {
    pub(crate) sockets: usize,
    pub(crate) concurrency: usize,
    pub(crate) idle_secs: u64,
    /// `memory` (one node) or a cluster backbone.
    pub(crate) broker: String,
    pub(crate) nodes: usize,
}

/// The node processes of one run and the clients' connections to them.
struct Held {
    /// The lone node and its config directory (one node on the memory broker).
    lone: Option<(NodeProc, TempDir)>,
    /// The cluster's nodes and helper (a backbone).
    bench: Option<Bench>,
    fleet: Fleet,
    connected: Merged,
    /// Sockets each node owns, in node order.
    per_node: Vec<usize>,
    /// Node memory before any client connected.
    rss_base: Vec<u64>,
    connect_cpu: f64,
    /// The connects' CPU: (user space, kernel) seconds.
    connect_split: (f64, f64),
}

impl Held {
    fn pids(&self) -> Vec<u32> {
        self.lone
            .iter()
            .map(|(n, _)| n)
            .chain(self.bench.iter().flat_map(|b| b.procs.iter()))
            .map(NodeProc::pid)
            .collect()
    }

    async fn stop(self) {
        self.fleet.stop().await;
        if let Some((node, _dir)) = self.lone {
            node.stop().await;
        }
        if let Some(b) = self.bench {
            b.stop().await;
        }
    }
}

fn clients(n: usize) -> Res<Vec<ClientId>> {
    Ok((0..n)
        .map(|i| format!("c{i}").parse())
        .collect::<Result<_, _>>()?)
}

/// One node on the memory broker; every client connects to it.
async fn lone(o: &Opts, p: &IdlePlan) -> Res<Held> {
    let dir = tmpdir("idle")?;
    let (cfgs, _) = write_configs(&dir, 1, "")?;
    let node = NodeProc::start(&cfgs[0]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base = vec![sys::rss_bytes(node.pid())];
    let urls = n1_urls(&node.addr, &clients(p.sockets)?)?;
    let cpu_before = sys::cpu_seconds(node.pid());
    let split_before = sys::cpu_split(node.pid());
    let (fleet, connected) =
        Fleet::start(urls, o.workers, o.source_ips, p.concurrency, false).await?;
    let connect_cpu = sys::cpu_seconds(node.pid()) - cpu_before;
    let split_after = sys::cpu_split(node.pid());
    let connect_split = (
        split_after.0 - split_before.0,
        split_after.1 - split_before.1,
    );
    Ok(Held {
        lone: Some((node, dir)),
        bench: None,
        fleet,
        connected,
        per_node: vec![p.sockets],
        rss_base,
        connect_cpu,
        connect_split,
    })
}

/// `p.nodes` node processes on a backbone; each client connects to the node that owns it, and
/// the run goes on once presence has them all.
async fn cluster(o: &Opts, p: &IdlePlan) -> Res<Held> {
    let bench = Bench::start(o, &p.broker, p.nodes).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base: Vec<u64> = bench
        .procs
        .iter()
        .map(|n| sys::rss_bytes(n.pid()))
        .collect();
    let ids = clients(p.sockets)?;
    // Node ids are n1..nN in `procs` order (see `write_configs`).
    let names: Vec<String> = (1..=p.nodes).map(|i| format!("n{i}")).collect();
    let mut per_node = vec![0; p.nodes];
    for c in &ids {
        let owner = bench.helper.cluster().owner(c).id.as_str();
        if let Some(i) = names.iter().position(|n| n == owner) {
            per_node[i] += 1;
        }
    }
    let pids: Vec<u32> = bench.procs.iter().map(NodeProc::pid).collect();
    let cpu_before = sys::cpu_total(&pids);
    let split_before = sys::cpu_split_total(&pids);
    let (fleet, connected) = bench.fleet(o, &ids, p.concurrency, false).await?;
    let connect_cpu = sys::cpu_total(&pids) - cpu_before;
    let split_after = sys::cpu_split_total(&pids);
    let connect_split = (
        split_after.0 - split_before.0,
        split_after.1 - split_before.1,
    );
    Ok(Held {
        lone: None,
        bench: Some(bench),
        fleet,
        connected,
        per_node,
        rss_base,
        connect_cpu,
        connect_split,
    })
}

/// Holds `p.sockets` idle connections; measures the nodes' memory and CPU per socket and the
/// connect rate.
pub(crate) async fn idle(o: &Opts, p: &IdlePlan) -> Res<()> {
    let lone_node = p.broker == "memory";
    if lone_node && p.nodes != 1 {
        return Err(
            "the memory broker runs one node: use --broker redis (or rabbitmq, kafka) \
                    for --nodes > 1"
                .into(),
        );
    }
    let mut runs = Vec::new();
    for run in 0..o.runs {
        let mut held = if lone_node {
            lone(o, p).await?
        } else {
            cluster(o, p).await?
        };
        let pids = held.pids();
        let (n_connected, n_failed, connect_secs) = (
            held.connected.connected,
            held.connected.failed,
            held.connected.connect_secs,
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_loaded: Vec<u64> = pids.iter().map(|p| sys::rss_bytes(*p)).collect();
        let cpu0 = sys::cpu_total(&pids);
        let split0 = sys::cpu_split_total(&pids);
        tokio::time::sleep(Duration::from_secs(p.idle_secs)).await;
        let cpu1 = sys::cpu_total(&pids);
        let split1 = sys::cpu_split_total(&pids);
        let per_socket_sec = |d: f64| d * 1e6 / p.idle_secs as f64 / n_connected.max(1) as f64;
        let still = held.fleet.report().await?;
        let held_sockets = n_connected as u64 - still.closed;
        let growth: u64 = rss_loaded
            .iter()
            .zip(&held.rss_base)
            .map(|(l, b)| l.saturating_sub(*b))
            .sum();
        let connected = n_connected.max(1) as f64;
        let nodes: Vec<Value> = held
            .per_node
            .iter()
            .zip(rss_loaded.iter().zip(&held.rss_base))
            .map(|(sockets, (loaded, base))| {
                json!({
                    "sockets": sockets,
                    "rss_base_mib": *base as f64 / 1048576.0,
                    "rss_loaded_mib": *loaded as f64 / 1048576.0,
                })
            })
            .collect();
        let r = json!({
            "run": run,
            "sockets_requested": p.sockets,
            "sockets_connected": n_connected,
            "sockets_failed": n_failed,
            "sockets_held_after_idle": held_sockets,
            "most_sockets_on_one_node": held.per_node.iter().max().copied().unwrap_or(0),
            "nodes": nodes,
            "connect_secs": connect_secs,
            "connects_per_sec": n_connected as f64 / connect_secs.max(1e-9),
            "server_cpu_us_per_connect": held.connect_cpu * 1e6 / connected,
            "server_rss_base_mib": held.rss_base.iter().sum::<u64>() as f64 / 1048576.0,
            "server_rss_loaded_mib": rss_loaded.iter().sum::<u64>() as f64 / 1048576.0,
            "server_bytes_per_socket": growth as f64 / connected,
            "server_idle_cpu_percent": (cpu1 - cpu0) / p.idle_secs as f64 * 100.0,
            "server_cpu_us_per_socket_per_sec": (cpu1 - cpu0) * 1e6 / p.idle_secs as f64 / connected,
            "server_user_us_per_connect": held.connect_split.0 * 1e6 / connected,
            "server_kernel_us_per_connect": held.connect_split.1 * 1e6 / connected,
            "server_idle_user_us_per_socket_per_sec": per_socket_sec(split1.0 - split0.0),
            "server_idle_kernel_us_per_socket_per_sec": per_socket_sec(split1.1 - split0.1),
        });
        println!("run {run}: {r}");
        runs.push(r);
        held.stop().await;
    }
    report_runs(o, p, runs)
}

fn report_runs(o: &Opts, p: &IdlePlan, runs: Vec<Value>) -> Res<()> {
    let med = |k: &str| median_at(&runs, &[k]);
    let summary = json!({
        "sockets_held (median)": med("sockets_held_after_idle"),
        "server_bytes_per_socket (median)": med("server_bytes_per_socket"),
        "server_idle_cpu_percent (median)": med("server_idle_cpu_percent"),
        "server_cpu_us_per_socket_per_sec (median)": med("server_cpu_us_per_socket_per_sec"),
        "connects_per_sec (median)": med("connects_per_sec"),
        "server_cpu_us_per_connect (median)": med("server_cpu_us_per_connect"),
        "server_user_us_per_connect (median)": med("server_user_us_per_connect"),
        "server_kernel_us_per_connect (median)": med("server_kernel_us_per_connect"),
        "server_idle_user_us_per_socket_per_sec (median)": med("server_idle_user_us_per_socket_per_sec"),
        "server_idle_kernel_us_per_socket_per_sec (median)": med("server_idle_kernel_us_per_socket_per_sec"),
    });
    let held = med("sockets_held_after_idle");
    let (name, target, want) = if p.nodes == 1 {
        ("idle sockets per node process", ">= 19000", 19_000.0)
    } else {
        ("idle sockets on the machine", ">= 100000", 100_000.0)
    };
    let checks = [
        Check {
            name,
            target: target.into(),
            measured: format!("{held:.0}"),
            met: held >= want,
        },
        Check {
            name: "server memory per idle socket",
            target: "<= 3072 B".into(),
            measured: format!("{:.0} B", med("server_bytes_per_socket")),
            met: med("server_bytes_per_socket") <= 3072.0,
        },
    ];
    let params = json!({
        "sockets": p.sockets, "broker": p.broker, "nodes": p.nodes, "workers": o.workers,
        "source_ips": o.source_ips, "concurrency": p.concurrency, "idle_secs": p.idle_secs,
        "runs": o.runs,
    });
    let tag = if p.nodes == 1 {
        format!("idle-{}", p.sockets)
    } else {
        format!("idle-{}-{}x{}", p.sockets, p.broker, p.nodes)
    };
    report::write(&o.out, &tag, params, runs, summary, &checks, None)?;
    Ok(())
}
