//! The soak: three node processes over Redis for `--minutes` under steady clients, churning
//! clients, direct and channel messages, with one node restarted (SIGTERM: drain, then start
//! again) every `--restart-every` minutes. Each minute it samples every node's resident memory
//! (`VmRSS`), open file descriptors (`/proc/PID/fd`), threads and tokio tasks (the
//! `impush_tasks` gauge of its `/metrics`), and at the end says whether they stayed flat:
//! within 10% of their value once warmed up.
//!
//! The restarts take turns among the nodes other than `n1`, so `n1` runs the whole soak: its
//! figures show any drift over the full run, while it lives through its peers draining and
//! coming back (clients moving in and going home, inboxes taken over, resubscriptions).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use impush_core::{ChannelName, ClientId};
use impush_helper::{HelperConfig, ImHelper};
use serde_json::{json, Value};
use tokio::{sync::watch, time::Instant};

use crate::soak_samples::{figure, mib, Restart, Sample};
use crate::{
    fleet::NodeProc,
    report::{self, Check},
    scenarios::{tmpdir, Opts, API_KEY, SECRET},
    soak_chart,
    soak_clients::{self, Counters},
    sys,
    worker::now_ns,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// How much a figure may move between the warm-up sample and the last one and still be flat.
const FLAT: f64 = 0.10;

/// What the soak is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct SoakPlan {
    pub(crate) minutes: u64,
    pub(crate) restart_every: u64,
    pub(crate) warmup: u64,
    pub(crate) nodes: usize,
    pub(crate) steady: usize,
    pub(crate) churners: usize,
    pub(crate) channels: usize,
    pub(crate) rate: u64,
    pub(crate) channel_rate: u64,
}

/// The node processes and their configs.
struct Nodes {
    procs: Vec<Option<NodeProc>>,
    configs: Vec<PathBuf>,
    http: reqwest::Client,
}

impl Nodes {
    async fn sample(&self, minute: u64) -> Vec<Sample> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter().enumerate() {
            let Some(p) = p else { continue };
            let pid = p.pid();
            let metrics = self
                .http
                .get(format!("http://{}/metrics", p.addr))
                .send()
                .await;
            let text = match metrics {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            out.push(Sample {
                minute,
                node: i,
                pid,
                rss: sys::rss_bytes(pid),
                fds: open_fds(pid),
                threads: status_field(pid, "Threads:"),
                tasks: gauge(&text, "impush_tasks"),
                connections: gauge(&text, "impush_connections"),
            });
        }
        out
    }

    /// SIGTERM to node `i` (it drains its clients to the others), then the same config again.
    async fn restart(&mut self, i: usize) -> Res<f64> {
        let t = Instant::now();
        if let Some(p) = self.procs[i].take() {
            p.stop().await;
        }
        // `--drain`: SIGTERM moves the node's clients to the others first, as `impush` does.
        self.procs[i] = Some(NodeProc::start_with(&self.configs[i], true).await?);
        Ok(t.elapsed().as_secs_f64())
    }

    async fn stop(self) {
        for p in self.procs.into_iter().flatten() {
            p.stop().await;
        }
    }
}

/// Open file descriptors of `pid`.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// A number field of `/proc/PID/status` (e.g. `Threads:`).
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The value of an unlabelled-but-for-`node` gauge in Prometheus text.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Node and helper configs: Redis broker, presence and inbox under a prefix of this run's own,
/// short drain and return-home periods (a restart takes seconds, not a minute).
fn write_configs(dir: &Path, redis: &str, nodes: usize) -> Res<(Vec<PathBuf>, PathBuf)> {
    let listeners = (0..nodes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    drop(listeners);
    let list: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ id = \"n{}\", url = \"ws://{a}\" }}", i + 1))
        .collect();
    let prefix = format!("soak{}", now_ns());
    let common = format!(
        "[cluster]\nnodes = [{}]\ndrain_period = \"5s\"\nrebalance_period = \"5s\"\n\
         [auth]\nsecret = \"{SECRET}\"\napi_key = \"{API_KEY}\"\ntoken_ttl = \"10m\"\n\
         [broker]\nkind = \"redis\"\nurl = \"{redis}\"\nprefix = \"{prefix}\"\n\
         [presence]\nkind = \"redis\"\n",
        list.join(", ")
    );
    let mut configs = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let p = dir.join(format!("n{}.toml", i + 1));
        std::fs::write(
            &p,
            format!(
                "[node]\nid = \"n{}\"\nlisten = \"{a}\"\n{common}\
                 [offline]\nenabled = true\nkind = \"redis\"\nmax_per_client = 100\nttl = \"10m\"\n",
                i + 1
            ),
        )?;
        configs.push(p);
    }
    let helper = dir.join("helper.toml");
    std::fs::write(&helper, &common)?;
    Ok((configs, helper))
}

/// What happens at a moment of the run.
#[derive(Debug, Clone, Copy)]
enum Step {
    Sample(u64),
    Restart(usize),
}

/// Samples at every minute (and right after the start); restarts half a minute after every
/// `restart_every` minutes, taking turns among the nodes other than n1.
fn schedule(p: &SoakPlan) -> Vec<(Duration, Step)> {
    let mut steps: Vec<(Duration, Step)> = (0..=p.minutes)
        .map(|m| (Duration::from_secs(m * 60), Step::Sample(m)))
        .collect();
    if p.nodes > 1 && p.restart_every > 0 {
        let mut k = 1;
        while k * p.restart_every < p.minutes {
            let at = Duration::from_secs(k * p.restart_every * 60 + 30);
            let node = 1 + ((k - 1) as usize) % (p.nodes - 1);
            steps.push((at, Step::Restart(node)));
            k += 1;
        }
    }
    steps.sort_by_key(|(t, _)| *t);
    steps
}

/// Runs the soak and writes `soak-redis-<n>n-<minutes>m.{json,svg}`.
pub(crate) async fn soak(o: &Opts, p: &SoakPlan) -> Res<()> {
    let redis = o
        .redis_url
        .clone()
        .ok_or("--redis-url (or IMPUSH_TEST_REDIS_URL) is required for the soak")?;
    if p.nodes < 2 || p.steady == 0 || p.channels == 0 {
        return Err("the soak needs --nodes >= 2, --steady >= 1 and --channels >= 1".into());
    }
    let warmup = p.warmup.min(p.minutes.saturating_sub(1));
    let dir = tmpdir("soak")?;
    let (configs, helper_cfg) = write_configs(&dir, &redis, p.nodes)?;
    let mut nodes = Nodes {
        procs: Vec::new(),
        configs: configs.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
    };
    for c in &configs {
        nodes.procs.push(Some(NodeProc::start_with(c, true).await?));
    }
    let helper = ImHelper::connect(&HelperConfig::load(Some(&helper_cfg))?).await?;

    let ids = |tag: &str, n: usize| -> Res<Vec<ClientId>> {
        Ok((0..n)
            .map(|i| format!("{tag}{i}").parse())
            .collect::<Result<_, _>>()?)
    };
    let steady = ids("s", p.steady)?;
    let churners = ids("c", p.churners)?;
    let per_channel = p.steady.div_ceil(p.channels);
    let channels: Vec<(ChannelName, Vec<ClientId>)> = steady
        .chunks(per_channel)
        .enumerate()
        .map(|(i, members)| Ok((format!("room{i}").parse()?, members.to_vec())))
        .collect::<Res<_>>()?;

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for (i, c) in steady.iter().enumerate() {
        tasks.push(tokio::spawn(soak_clients::steady(
            helper.clone(),
            c.clone(),
            counters.clone(),
            stop.clone(),
            i as u64,
        )));
    }
    for (i, c) in churners.iter().enumerate() {
        tasks.push(tokio::spawn(soak_clients::churner(
            helper.clone(),
            c.clone(),
            counters.clone(),
            stop.clone(),
            (p.steady + i) as u64,
        )));
    }
    wait_online(&helper, &steady).await?;
    for (ch, members) in &channels {
        helper.join_channel(ch, members).await?;
    }
    let everyone: Vec<ClientId> = steady.iter().chain(&churners).cloned().collect();
    tasks.push(tokio::spawn(soak_clients::direct_sender(
        helper.clone(),
        everyone,
        p.rate,
        counters.clone(),
        stop.clone(),
    )));
    tasks.push(tokio::spawn(soak_clients::channel_sender(
        helper.clone(),
        channels,
        p.channel_rate,
        counters.clone(),
        stop.clone(),
    )));

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut restarts: Vec<Restart> = Vec::new();
    println!(
        "soak: {} nodes over Redis, {} steady + {} churning clients, {} direct/s, {} channel/s, \
         {} min, a restart every {} min",
        p.nodes, p.steady, p.churners, p.rate, p.channel_rate, p.minutes, p.restart_every
    );
    for (at, step) in schedule(p) {
        tokio::time::sleep_until(started + at).await;
        match step {
            Step::Sample(m) => {
                let s = nodes.sample(m).await;
                print_sample(m, &s, &counters);
                samples.extend(s);
            }
            Step::Restart(i) => {
                let at_secs = started.elapsed().as_secs_f64();
                let took_secs = nodes.restart(i).await?;
                println!(
                    "  restarted n{} at {at_secs:.0} s in {took_secs:.1} s",
                    i + 1
                );
                restarts.push(Restart {
                    at_secs,
                    node: i,
                    took_secs,
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    nodes.stop().await;
    drop(dir);
    write_results(o, p, warmup, &samples, &restarts, &counters)
}

/// Waits until every steady client is online (60 s at most).
async fn wait_online(helper: &ImHelper, clients: &[ClientId]) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if helper
            .is_online_many(clients)
            .await
            .is_ok_and(|a| a.value.iter().all(|o| *o))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the steady clients did not all come online".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_sample(m: u64, s: &[Sample], c: &Counters) {
    let nodes: Vec<String> = s
        .iter()
        .map(|s| {
            format!(
                "n{} {:.1} MiB {} fds {} thr {} tasks {} conns",
                s.node + 1,
                mib(s.rss),
                s.fds,
                s.threads,
                s.tasks.map_or("?".into(), |t| t.to_string()),
                s.connections.map_or("?".into(), |t| t.to_string()),
            )
        })
        .collect();
    println!("  min {m:>3}: {} | {}", nodes.join(" | "), c.json());
}

/// (value at the warm-up minute, value at the last minute, relative change) of `what`, for
/// node `node` or (None) summed over the nodes.
fn drift(
    samples: &[Sample],
    what: &str,
    node: Option<usize>,
    warm: u64,
    last: u64,
) -> Option<(f64, f64, f64)> {
    let at = |m: u64| -> Option<f64> {
        let vals: Vec<f64> = samples
            .iter()
            .filter(|s| s.minute == m && node.is_none_or(|n| s.node == n))
            .map(|s| figure(s, what))
            .collect::<Option<_>>()?;
        (!vals.is_empty()).then(|| vals.iter().sum())
    };
    let (a, b) = (at(warm)?, at(last)?);
    Some((a, b, if a > 0.0 { (b - a) / a } else { 0.0 }))
}

fn write_results(
    o: &Opts,
    p: &SoakPlan,
    warm: u64,
    samples: &[Sample],
    restarts: &[Restart],
    counters: &Counters,
) -> Res<()> {
    let last = p.minutes;
    let mut checks = Vec::new();
    let mut flat = serde_json::Map::new();
    let names: [(&str, &'static str, &'static str); 3] = [
        (
            "rss_mib",
            "n1 RSS flat after warm-up",
            "all nodes' RSS flat",
        ),
        ("fds", "n1 open fds flat", "all nodes' open fds flat"),
        ("tasks", "n1 tokio tasks flat", "all nodes' tasks flat"),
    ];
    for (what, n1_name, all_name) in names {
        for (node, name) in [(Some(0), n1_name), (None, all_name)] {
            let Some((a, b, rel)) = drift(samples, what, node, warm, last) else {
                continue;
            };
            let key = format!(
                "{}_{what}",
                node.map_or("all".into(), |n| format!("n{}", n + 1))
            );
            flat.insert(
                key,
                json!({"warm": a, "last": b, "change_percent": rel * 100.0}),
            );
            checks.push(Check {
                name,
                target: format!("within {:.0}%", FLAT * 100.0),
                measured: format!(
                    "{:+.1}% ({a:.1} at min {warm} -> {b:.1} at min {last})",
                    rel * 100.0
                ),
                met: rel.abs() <= FLAT,
            });
        }
    }
    let rows: Vec<Value> = samples
        .iter()
        .map(|s| {
            json!({
                "minute": s.minute, "node": format!("n{}", s.node + 1), "pid": s.pid,
                "rss_mib": mib(s.rss), "fds": s.fds, "threads": s.threads, "tasks": s.tasks,
                "connections": s.connections,
            })
        })
        .collect();
    let restarts_json: Vec<Value> = restarts
        .iter()
        .map(|r| json!({"at_secs": r.at_secs, "node": format!("n{}", r.node + 1), "took_secs": r.took_secs}))
        .collect();
    let params = json!({
        "broker": "redis", "nodes": p.nodes, "minutes": p.minutes,
        "restart_every_minutes": p.restart_every, "warmup_minutes": warm,
        "steady_clients": p.steady, "churning_clients": p.churners, "channels": p.channels,
        "direct_per_sec": p.rate, "channel_per_sec": p.channel_rate,
    });
    let summary = json!({
        "flat": flat,
        "restarts": restarts.len(),
        "traffic": counters.json(),
    });
    let run = json!({"samples": rows, "restarts": restarts_json});
    let name = format!("soak-redis-{}n-{}m", p.nodes, p.minutes);
    report::write(&o.out, &name, params, vec![run], summary, &checks, None)?;
    print_table(samples, p.nodes);
    let svg = soak_chart::svg(&name, samples, restarts, p.nodes, warm);
    let svg_path = o.out.join(format!("{name}.svg"));
    std::fs::write(&svg_path, svg)?;
    println!("  chart: {}", svg_path.display());
    Ok(())
}

/// Minute by minute: RSS (MiB), fds and tasks of each node.
fn print_table(samples: &[Sample], nodes: usize) {
    let mut head = String::from("  min");
    for n in 1..=nodes {
        head.push_str(&format!(" | n{n} rss  fds tasks"));
    }
    println!("{head}");
    let last = samples.iter().map(|s| s.minute).max().unwrap_or(0);
    for m in 0..=last {
        let mut row = format!("  {m:>3}");
        for n in 0..nodes {
            match samples.iter().find(|s| s.minute == m && s.node == n) {
                Some(s) => row.push_str(&format!(
                    " | {:>6.1} {:>4} {:>5}",
                    mib(s.rss),
                    s.fds,
                    s.tasks.map_or("?".into(), |t| t.to_string())
                )),
                None => row.push_str(" |      -    -     -"),
            }
        }
        println!("{row}");
    }
}
