//! The benchmark scenarios. Each runs `runs` times, reports every run and the median of its
//! figures, and compares them with the targets of `docs/design.md` section 12.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use impush_core::{token::TokenSigner, ChannelName, ClientId, NodeId};
use impush_helper::{HelperConfig, ImHelper};
use impush_server::{Config, ImServer};
use serde_json::{json, Value};

use crate::{
    fleet::{Fleet, Merged, NodeProc},
    hist::LatHist,
    report::{self, latency_json, median_at, Check},
    worker::now_ns,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub(crate) const SECRET: &str = "impush-bench-secret";
/// The HTTP API key of every node the bench starts.
pub(crate) const API_KEY: &str = "bench";

/// The config of a lone node `n1` on the memory broker (any free port), then `extra`.
pub(crate) fn lone_node_toml(extra: &str) -> String {
    format!(
        "[node]\nid = \"n1\"\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"{SECRET}\"\n\
         api_key = \"{API_KEY}\"\ntoken_ttl = \"10m\"\n{extra}"
    )
}

/// Signed WebSocket URLs with which `clients` connect to node `n1` listening on `addr`.
pub(crate) fn n1_urls<'a>(
    addr: &impl std::fmt::Display,
    clients: impl IntoIterator<Item = &'a ClientId>,
) -> Res<Vec<String>> {
    let signer = TokenSigner::new(SECRET.as_bytes(), Duration::from_secs(600), 1024)?;
    let n1: NodeId = "n1".parse()?;
    let urls = clients
        .into_iter()
        .map(|c| {
            Ok(format!(
                "ws://{addr}/ws?token={}",
                signer.sign(c, &n1, Value::Null)?
            ))
        })
        .collect::<Result<Vec<_>, impush_core::Error>>()?;
    Ok(urls)
}

/// Options shared by every scenario.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) workers: usize,
    pub(crate) source_ips: u8,
    pub(crate) runs: usize,
    pub(crate) out: PathBuf,
    pub(crate) redis_url: Option<String>,
    pub(crate) rabbitmq_url: Option<String>,
    pub(crate) kafka_url: Option<String>,
}

/// A directory for a run's configs and data, removed when dropped (a run that fails half-way
/// leaves nothing behind either).
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn tmpdir(tag: &str) -> Res<TempDir> {
    let d = std::env::temp_dir().join(format!(
        "impush-bench-{tag}-{}-{}",
        std::process::id(),
        now_ns()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(TempDir(d))
}

pub(crate) fn free_addrs(n: usize) -> Res<Vec<std::net::SocketAddr>> {
    let ls = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ls.iter().filter_map(|l| l.local_addr().ok()).collect())
}

fn common_toml(nodes: &[(String, String)], broker: &str) -> String {
    let list: Vec<String> = nodes
        .iter()
        .map(|(id, a)| format!("{{ id = \"{id}\", url = \"ws://{a}\" }}"))
        .collect();
    format!(
        "[cluster]\nnodes = [{}]\n[auth]\nsecret = \"{SECRET}\"\napi_key = \"{API_KEY}\"\ntoken_ttl = \"10m\"\n{broker}",
        list.join(", ")
    )
}

/// Node configs (and a helper config) for `n` nodes on `broker` (TOML of [broker]/[presence]).
pub(crate) fn write_configs(dir: &Path, n: usize, broker: &str) -> Res<(Vec<PathBuf>, PathBuf)> {
    let addrs = free_addrs(n)?;
    let nodes: Vec<(String, String)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("n{}", i + 1), a.to_string()))
        .collect();
    let common = common_toml(&nodes, broker);
    let mut paths = Vec::new();
    for (id, addr) in &nodes {
        let p = dir.join(format!("{id}.toml"));
        std::fs::write(
            &p,
            format!("[node]\nid = \"{id}\"\nlisten = \"{addr}\"\n{common}"),
        )?;
        paths.push(p);
    }
    let helper = dir.join("helper.toml");
    std::fs::write(&helper, &common)?;
    Ok((paths, helper))
}

/// `[broker]` and `[presence]` of a multi-node run on `broker`, under a prefix of its own so
/// runs never see each other's topics or keys.
pub(crate) fn cluster_toml(o: &Opts, broker: &str) -> Res<String> {
    let prefix = format!("bench{}", now_ns());
    let need = |url: &Option<String>, flag: &str, var: &str| {
        url.clone()
            .ok_or_else(|| format!("--{flag} (or {var}) is required for {broker} scenarios"))
    };
    Ok(match broker {
        "redis" => {
            let url = need(&o.redis_url, "redis-url", "IMPUSH_TEST_REDIS_URL")?;
            format!(
                "[broker]\nkind = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
                 [presence]\nkind = \"redis\"\n"
            )
        }
        // Presence kept by the nodes: the RabbitMQ- and Kafka-only setups of the README.
        "rabbitmq" => {
            let url = need(&o.rabbitmq_url, "rabbitmq-url", "IMPUSH_TEST_RABBITMQ_URL")?;
            // The inbox queues are durable: let RabbitMQ delete a run's queues after it.
            format!(
                "[broker]\nkind = \"rabbitmq\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
                 queue_expires = \"1m\"\n[presence]\nkind = \"cluster\"\n"
            )
        }
        "kafka" => {
            let url = need(&o.kafka_url, "kafka-url", "IMPUSH_TEST_KAFKA_URL")?;
            // tansu answers a waiting fetch only when the wait is over (Kafka answers when a
            // record arrives): the README's setting for it.
            format!(
                "[broker]\nkind = \"kafka\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
                 [broker.consumer_properties]\n\"fetch.wait.max.ms\" = 10\n\
                 [presence]\nkind = \"cluster\"\n"
            )
        }
        other => {
            return Err(
                format!("unknown broker `{other}` (memory, redis, rabbitmq or kafka)").into(),
            )
        }
    })
}

// ------------------------------------------------------------------------------ clusters

/// What a scenario changes in its nodes' configuration beyond the backbone.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeOptions {
    /// `[offline]` on this store (`memory`, `redis`, `disk`) with `require_ack`: every
    /// point-to-point message stays pending in the store until its receiver acks it
    /// (`docs/design.md` section 15).
    pub(crate) inbox: Option<String>,
    /// `[history] size` (`None`: the default, 100; `0`: no history, no sequencer hop).
    pub(crate) history: Option<usize>,
}

impl NodeOptions {
    /// The TOML tables of these options (`dir` holds a disk store's file).
    fn toml(&self, o: &Opts) -> Res<String> {
        let mut t = String::new();
        if let Some(size) = self.history {
            t += &format!("[history]\nsize = {size}\n");
        }
        if let Some(store) = &self.inbox {
            // Room for every receiver's share of a run: a bench measures the pending path, not
            // the inbox bound (which must stay below `limits.outbound_queue`, 16,384, and half
            // of `limits.outbound_queue_bytes`).
            t += &format!(
                "[offline]\nenabled = true\nrequire_ack = true\nkind = \"{store}\"\n\
                 max_per_client = 16000\nmax_bytes = 33554432\n"
            );
            t += &store_keys(o, store)?;
        }
        Ok(t)
    }

    /// Applies these options to an in-process node's config.
    fn apply(&self, o: &Opts, dir: &Path, c: &mut Config) -> Res<()> {
        if let Some(size) = self.history {
            c.history.size = size;
        }
        if let Some(store) = &self.inbox {
            c.offline.enabled = true;
            c.offline.require_ack = true;
            c.offline.max_per_client = 16_000;
            c.offline.max_bytes = 32 << 20;
            let mut section = impush_server::Section::new(store.as_str());
            match store.as_str() {
                "memory" => {}
                "redis" => section = section.set("url", need_redis(o)?)?,
                "disk" => section = section.set("path", dir.join("inbox.redb"))?,
                other => return Err(unknown_store(other)),
            }
            c.offline.store = section;
        }
        Ok(())
    }
}

fn need_redis(o: &Opts) -> Res<String> {
    o.redis_url.clone().ok_or_else(|| {
        "--redis-url (or IMPUSH_TEST_REDIS_URL) is required for the redis store".into()
    })
}

fn unknown_store(store: &str) -> Box<dyn std::error::Error> {
    format!("unknown store `{store}` (memory, redis or disk)").into()
}

/// The keys of an `[offline]` table that belong to `store`.
fn store_keys(o: &Opts, store: &str) -> Res<String> {
    Ok(match store {
        "memory" => String::new(),
        "redis" => format!("url = \"{}\"\n", need_redis(o)?),
        // One file per node process would need a config per node; the in-process node
        // (`--broker memory`) takes the disk store.
        "disk" => return Err("the disk inbox runs with --broker memory (one node)".into()),
        other => return Err(unknown_store(other)),
    })
}

/// Nodes and a helper for a throughput scenario: in-process for memory (the helper must share
/// the memory broker), separate processes for Redis.
pub(crate) struct Bench {
    pub(crate) helper: ImHelper,
    inproc: Option<ImServer>,
    pub(crate) procs: Vec<NodeProc>,
    /// Removed once the nodes are stopped (fields drop in order).
    _dir: TempDir,
}

impl Bench {
    pub(crate) async fn start(o: &Opts, broker: &str, nodes: usize) -> Res<Bench> {
        Self::start_with(o, broker, nodes, &NodeOptions::default()).await
    }

    /// [`Bench::start`] with `opts` in every node's config.
    pub(crate) async fn start_with(
        o: &Opts,
        broker: &str,
        nodes: usize,
        opts: &NodeOptions,
    ) -> Res<Bench> {
        let dir = tmpdir(broker)?;
        match broker {
            "memory" => {
                let mut c = Config::default();
                c.node.listen = "127.0.0.1:0".parse()?;
                c.auth.secret = Some(impush_core::config::Secret::new(SECRET));
                c.auth.token_ttl = Duration::from_secs(600);
                // Room for bursts: a benchmark measures throughput, not the slow-consumer guard.
                c.limits.outbound_queue = 16 * 1024;
                c.limits.outbound_queue_bytes = 64 * 1024 * 1024;
                opts.apply(o, &dir, &mut c)?;
                let server = ImServer::start(c).await?;
                Ok(Bench {
                    helper: server.helper(),
                    inproc: Some(server),
                    procs: Vec::new(),
                    _dir: dir,
                })
            }
            _ => {
                let broker_toml = cluster_toml(o, broker)?
                    + "[limits]\noutbound_queue = 16384\noutbound_queue_bytes = 67108864\n"
                    + &opts.toml(o)?;
                let (cfgs, helper_cfg) = write_configs(&dir, nodes, &broker_toml)?;
                let mut procs = Vec::new();
                for c in &cfgs {
                    procs.push(NodeProc::start(c).await?);
                }
                let helper = ImHelper::connect(&HelperConfig::load(Some(&helper_cfg))?).await?;
                Ok(Bench {
                    helper,
                    inproc: None,
                    procs,
                    _dir: dir,
                })
            }
        }
    }

    /// Connects `clients` (each to its owning node, `concurrency` handshakes at a time) and
    /// waits until presence has every one of them.
    pub(crate) async fn fleet(
        &self,
        o: &Opts,
        clients: &[ClientId],
        concurrency: usize,
        track_seq: bool,
    ) -> Res<(Fleet, Merged)> {
        self.fleet_with(o, clients, concurrency, track_seq, false)
            .await
    }

    /// [`Bench::fleet`] whose clients ack every message frame that asks for it (`"ack":
    /// true`) when `ack` is set, as the JavaScript client's `autoAck` does.
    pub(crate) async fn fleet_with(
        &self,
        o: &Opts,
        clients: &[ClientId],
        concurrency: usize,
        track_seq: bool,
        ack: bool,
    ) -> Res<(Fleet, Merged)> {
        let urls = clients
            .iter()
            .map(|c| self.helper.prepare_connect(c, Value::Null).map(|i| i.url))
            .collect::<Result<Vec<_>, _>>()?;
        let (fleet, m) =
            Fleet::start_with(urls, o.workers, o.source_ips, concurrency, track_seq, ack).await?;
        if m.failed > 0 {
            return Err(format!(
                "{} of {} clients failed to connect",
                m.failed,
                clients.len()
            )
            .into());
        }
        // Wait until every connection is registered (presence), so nothing sent is "offline".
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let online = self.helper.is_online_many(clients).await?;
            if online.iter().all(|b| *b) {
                break;
            }
            if Instant::now() > deadline {
                return Err("clients did not all come online".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((fleet, m))
    }

    pub(crate) async fn stop(self) {
        if let Some(s) = self.inproc {
            let _ = s.shutdown().await;
        }
        for p in self.procs {
            p.stop().await;
        }
    }
}

/// Seconds from `start_ns` to the end of the last 100 ms bucket in which frames arrived.
pub(crate) fn span_secs(m: &Merged, start_ns: u64) -> f64 {
    let last = m.timeline.keys().next_back().copied().unwrap_or(0);
    let end_ns = (last + 1) * 100_000_000;
    (end_ns.saturating_sub(start_ns)) as f64 / 1e9
}

/// Sends `messages` point-to-point messages (round robin over `receivers` clients), at full
/// speed or at `rate` per second; measures delivered messages/s and publish-to-client latency.
pub(crate) async fn p2p(
    o: &Opts,
    broker: &str,
    nodes: usize,
    receivers: usize,
    messages: u64,
    rate: Option<u64>,
    in_flight: usize,
) -> Res<()> {
    let plan = P2pPlan {
        broker,
        nodes,
        receivers,
        messages,
        rate,
        in_flight,
        node: NodeOptions::default(),
        ack: false,
    };
    p2p_with(o, &plan).await
}

/// A point-to-point run: where, how much, and how the nodes and clients are set up.
#[derive(Debug, Clone)]
pub(crate) struct P2pPlan<'a> {
    pub(crate) broker: &'a str,
    pub(crate) nodes: usize,
    pub(crate) receivers: usize,
    pub(crate) messages: u64,
    /// Messages per second (`None`: as fast as possible).
    pub(crate) rate: Option<u64>,
    pub(crate) in_flight: usize,
    pub(crate) node: NodeOptions,
    /// Clients ack every message frame that asks for it.
    pub(crate) ack: bool,
}

/// [`p2p`] with node options and acking clients (`--inbox`, `--ack`).
pub(crate) async fn p2p_with(o: &Opts, plan: &P2pPlan<'_>) -> Res<()> {
    let P2pPlan {
        broker,
        nodes,
        receivers,
        messages,
        rate,
        in_flight,
        ..
    } = *plan;
    let mut runs = Vec::new();
    let mut all_lat = LatHist::default();
    let mut last_timeline = Default::default();
    for run in 0..o.runs {
        let bench = Bench::start_with(o, broker, nodes, &plan.node).await?;
        let clients: Vec<ClientId> = (0..receivers)
            .map(|i| format!("r{i}").parse())
            .collect::<Result<_, _>>()?;
        let (mut fleet, _) = bench.fleet_with(o, &clients, 256, false, plan.ack).await?;
        let from: ClientId = "bench".parse()?;
        let clients = Arc::new(clients);
        let start_ns = now_ns();
        let started = Instant::now();
        let helper = bench.helper.clone();
        let per_ms = rate.map(|r| (r as f64 / 1000.0).max(1.0));
        let sent = futures_util::stream::iter(0..messages)
            .map(|i| {
                let helper = helper.clone();
                let clients = clients.clone();
                let from = from.clone();
                async move {
                    if let Some(per_ms) = per_ms {
                        // Open-loop pacing: message i is due at i / rate seconds.
                        let due = started + Duration::from_secs_f64(i as f64 / (per_ms * 1000.0));
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let to = &clients[(i as usize) % clients.len()];
                    let data = json!({"t": now_ns(), "s": i});
                    helper
                        .send_message(&from, std::slice::from_ref(to), &data, false)
                        .await
                        .is_ok()
                }
            })
            .buffer_unordered(in_flight.max(1))
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await as u64;
        let send_secs = started.elapsed().as_secs_f64();
        let m = fleet.wait_received(sent, Duration::from_secs(120)).await?;
        let secs = span_secs(&m, start_ns);
        let r = json!({
            "run": run,
            "sent": sent,
            // Refused sends (a full queue: the node is behind) are not retried here.
            "refused": messages - sent,
            "delivered": m.received,
            "send_secs": send_secs,
            "sent_per_sec": sent as f64 / send_secs.max(1e-9),
            "delivered_per_sec": m.received as f64 / secs.max(1e-9),
            "acks_sent": m.acked,
            "latency": latency_json(&m.latency),
        });
        println!("run {run}: {r}");
        all_lat.merge(&m.latency);
        last_timeline = m.timeline.clone();
        runs.push(r);
        fleet.stop().await;
        bench.stop().await;
    }
    let summary = json!({
        "delivered_per_sec (median)": median_at(&runs, &["delivered_per_sec"]),
        "sent_per_sec (median)": median_at(&runs, &["sent_per_sec"]),
        "latency_p50_ms (median)": median_at(&runs, &["latency", "p50_ms"]),
        "latency_p90_ms (median)": median_at(&runs, &["latency", "p90_ms"]),
        "latency_p99_ms (median)": median_at(&runs, &["latency", "p99_ms"]),
        "latency_max_ms (median)": median_at(&runs, &["latency", "max_ms"]),
        "lost": runs.iter().map(|r| r["sent"].as_u64().unwrap_or(0).saturating_sub(r["delivered"].as_u64().unwrap_or(0))).sum::<u64>(),
        "refused": runs.iter().map(|r| r["refused"].as_u64().unwrap_or(0)).sum::<u64>(),
    });
    let mut checks = Vec::new();
    match (broker, rate) {
        ("memory", None) => checks.push(Check {
            name: "p2p delivered, memory broker",
            target: ">= 200000/s".into(),
            measured: format!("{:.0}/s", median_at(&runs, &["delivered_per_sec"])),
            met: median_at(&runs, &["delivered_per_sec"]) >= 200_000.0,
        }),
        (_, None) => checks.push(Check {
            name: "p2p delivered over a broker",
            target: ">= 100000/s".into(),
            measured: format!("{:.0}/s", median_at(&runs, &["delivered_per_sec"])),
            met: median_at(&runs, &["delivered_per_sec"]) >= 100_000.0,
        }),
        (_, Some(r)) => {
            // What each backbone is asked for (`docs/design.md` section 12 and its issues): a
            // broker that confirms each publish, or batches records, adds its own latency.
            let p99_max = match broker {
                "rabbitmq" => 10.0,
                "kafka" => 20.0,
                _ => 5.0,
            };
            checks.push(Check {
                name: "p99 latency at the given rate",
                target: format!("< {p99_max} ms @ {r}/s"),
                measured: format!("{:.3} ms", median_at(&runs, &["latency", "p99_ms"])),
                met: median_at(&runs, &["latency", "p99_ms"]) < p99_max,
            });
        }
    }
    let mut name = match rate {
        Some(r) => format!("p2p-{broker}-{nodes}n-{r}rps"),
        None => format!("p2p-{broker}-{nodes}n"),
    };
    if let Some(store) = &plan.node.inbox {
        name += &format!("-inbox-{store}");
    }
    if plan.ack {
        name += "-ack";
    }
    let params = json!({"broker": broker, "nodes": nodes, "receivers": receivers, "messages": messages, "rate": rate, "in_flight": in_flight, "workers": o.workers, "runs": o.runs, "inbox": plan.node.inbox, "require_ack": plan.node.inbox.is_some(), "clients_ack": plan.ack});
    report::write(
        &o.out,
        &name,
        params,
        runs,
        summary,
        &checks,
        Some((&all_lat, &last_timeline)),
    )?;
    Ok(())
}

/// One channel with `members` members; sends `messages` channel messages and measures frames
/// delivered per second and the latency of the last member to get each message.
pub(crate) async fn fanout(
    o: &Opts,
    broker: &str,
    nodes: usize,
    members: usize,
    messages: u64,
    gap: Duration,
) -> Res<()> {
    fanout_with(
        o,
        broker,
        nodes,
        members,
        messages,
        gap,
        &NodeOptions::default(),
    )
    .await
}

/// [`fanout`] with node options (`--history`).
pub(crate) async fn fanout_with(
    o: &Opts,
    broker: &str,
    nodes: usize,
    members: usize,
    messages: u64,
    gap: Duration,
    node: &NodeOptions,
) -> Res<()> {
    let mut runs = Vec::new();
    let mut all_last = LatHist::default();
    let mut last_timeline = Default::default();
    for run in 0..o.runs {
        let bench = Bench::start_with(o, broker, nodes, node).await?;
        let clients: Vec<ClientId> = (0..members)
            .map(|i| format!("m{i}").parse())
            .collect::<Result<_, _>>()?;
        let (mut fleet, _) = bench.fleet(o, &clients, 256, true).await?;
        let room: ChannelName = "bench-room".parse()?;
        for chunk in clients.chunks(1000) {
            bench.helper.join_channel(&room, chunk).await?;
        }
        // A warm-up message proves every node applied the membership before timing starts.
        let from: ClientId = "bench".parse()?;
        bench
            .helper
            .send_channel_message(&from, &room, &json!({"warmup": true}))
            .await?;
        fleet
            .wait_warm(members as u64, Duration::from_secs(60))
            .await?;
        let base = fleet.report().await?.received;
        let want = base + members as u64 * messages;
        let start_ns = now_ns();
        let started = Instant::now();
        for i in 0..messages {
            bench
                .helper
                .send_channel_message(&from, &room, &json!({"t": now_ns(), "s": i}))
                .await?;
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
        let send_secs = started.elapsed().as_secs_f64();
        let m = fleet.wait_received(want, Duration::from_secs(180)).await?;
        let secs = span_secs(&m, start_ns);
        let frames = m.received - base;
        let mut last = LatHist::default();
        for v in m.seq_max.values() {
            last.record(*v);
        }
        let r = json!({
            "run": run,
            "members": members,
            "messages": messages,
            "frames_expected": members as u64 * messages,
            "frames_delivered": frames,
            "send_secs": send_secs,
            "frames_per_sec": frames as f64 / secs.max(1e-9),
            "last_member_latency": latency_json(&last),
            "frame_latency": latency_json(&m.latency),
        });
        println!("run {run}: {r}");
        all_last.merge(&last);
        last_timeline = m.timeline.clone();
        runs.push(r);
        fleet.stop().await;
        bench.stop().await;
    }
    let summary = json!({
        "frames_per_sec (median)": median_at(&runs, &["frames_per_sec"]),
        "last_member_p50_ms (median)": median_at(&runs, &["last_member_latency", "p50_ms"]),
        "last_member_p99_ms (median)": median_at(&runs, &["last_member_latency", "p99_ms"]),
        "last_member_max_ms (median)": median_at(&runs, &["last_member_latency", "max_ms"]),
        "lost_frames": runs.iter().map(|r| r["frames_expected"].as_u64().unwrap_or(0).saturating_sub(r["frames_delivered"].as_u64().unwrap_or(0))).sum::<u64>(),
    });
    let checks = [Check {
        name: "channel fan-out frames delivered",
        target: ">= 1000000/s".into(),
        measured: format!("{:.0}/s", median_at(&runs, &["frames_per_sec"])),
        met: median_at(&runs, &["frames_per_sec"]) >= 1_000_000.0,
    }];
    let params = json!({"broker": broker, "nodes": nodes, "members": members, "messages": messages, "gap_ms": gap.as_millis() as u64, "workers": o.workers, "runs": o.runs, "history_size": node.history});
    let history = node
        .history
        .map_or(String::new(), |h| format!("-history{h}"));
    report::write(
        &o.out,
        &format!("fanout-{broker}-{nodes}n-{members}{history}"),
        params,
        runs,
        summary,
        &checks,
        Some((&all_last, &last_timeline)),
    )?;
    Ok(())
}
