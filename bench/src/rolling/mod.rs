//! `rolling`: a rolling restart of a 3-node cluster under traffic (`docs/design.md` section
//! 16). N clients that behave like the JavaScript client stay connected while messages flow
//! (four in five point to point, one in five to a channel every client is in, through
//! ImHelper, the offline inbox on); each node in turn gets SIGTERM (it drains its clients
//! over `drain_period`), exits, starts again, and the scenario waits until it is live and its
//! clients came home before the next one. Reported: each client's longest time without a
//! connection (p50, p99, max over clients), reconnects per second (max over any 1 s, cluster
//! and per node), connects refused, and messages lost (point to point; channel frames, and
//! `resume recovered:false` answers).

mod client;
mod measure;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use impush_core::{ChannelName, ClientId, NodeId, NodeStatus};
use impush_helper::{HelperConfig, ImHelper};
use rand::Rng;
use serde_json::json;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    fleet::NodeProc,
    report::{self, median_at, Check},
    scenarios::{cluster_toml, free_addrs, tmpdir, Opts, API_KEY, SECRET},
};
use client::Client;
use measure::Sent;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Nodes in the cluster.
const NODES: usize = 3;
/// The channel every client is in.
const ROOM: &str = "rolling";

/// What the rolling scenario is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct RollingPlan {
    /// redis, rabbitmq or kafka (the last two with `[presence] kind = "cluster"` and the
    /// offline inbox on disk).
    pub(crate) broker: String,
    pub(crate) clients: usize,
    /// Sends per second.
    pub(crate) rate: u64,
    /// `limits.connect_rate` of each node (0: none).
    pub(crate) connect_rate: u32,
    pub(crate) lease: Duration,
    pub(crate) drain: Duration,
    pub(crate) rebalance: Duration,
    pub(crate) grace: Duration,
}

/// Runs the scenario `o.runs` times and reports.
pub(crate) async fn rolling(o: &Opts, p: &RollingPlan) -> Res<()> {
    let mut runs = Vec::new();
    for run in 0..o.runs {
        let mut r = one_run(o, p).await?;
        r["run"] = json!(run);
        println!("run {run}: {r}");
        runs.push(r);
    }
    let med = |path: &[&str]| median_at(&runs, path);
    let sum = |k: &str| runs.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
    let max = |k: &str| runs.iter().filter_map(|r| r[k].as_u64()).max().unwrap_or(0);
    let summary = json!({
        "longest_gap_p50_ms (median)": med(&["longest_gap_ms", "p50"]),
        "longest_gap_p99_ms (median)": med(&["longest_gap_ms", "p99"]),
        "longest_gap_max_ms (median)": med(&["longest_gap_ms", "max"]),
        "reconnects_per_sec_max (median)": med(&["reconnects_per_sec_max"]),
        "node_reconnects_per_sec_max (median)": med(&["node_reconnects_per_sec_max"]),
        "node_attempts_per_sec_max (max)": max("node_attempts_per_sec_max"),
        "refused_connects (all runs)": sum("refused_connects"),
        "direct_lost (all runs)": sum("direct_lost"),
        "channel_frames_lost (all runs)": sum("channel_frames_lost"),
        "channel_frames_lost_unannounced (all runs)": sum("channel_frames_lost_unannounced"),
        "resume_unrecovered (all runs)": sum("resume_unrecovered"),
        "restart_secs (median)": med(&["restart_secs"]),
    });
    let gap_bound = p.drain.as_secs_f64() * 1000.0 + 2000.0;
    let mut checks = vec![
        Check {
            name: "point-to-point messages lost",
            target: "0".into(),
            measured: sum("direct_lost").to_string(),
            met: sum("direct_lost") == 0,
        },
        Check {
            name: "channel frames lost unannounced",
            target: "0".into(),
            measured: sum("channel_frames_lost_unannounced").to_string(),
            met: sum("channel_frames_lost_unannounced") == 0,
        },
        Check {
            name: "longest gap p99",
            target: format!("<= {gap_bound:.0} ms"),
            measured: format!("{:.0} ms", med(&["longest_gap_ms", "p99"])),
            met: runs
                .iter()
                .all(|r| r["longest_gap_ms"]["p99"].as_f64().unwrap_or(f64::MAX) <= gap_bound),
        },
    ];
    if p.connect_rate > 0 {
        checks.push(Check {
            name: "connects per node per second",
            target: format!("<= {}", p.connect_rate),
            measured: max("node_reconnects_per_sec_max").to_string(),
            met: max("node_reconnects_per_sec_max") <= u64::from(p.connect_rate),
        });
    }
    let params = json!({
        "broker": p.broker, "nodes": NODES, "clients": p.clients, "rate": p.rate,
        "connect_rate": p.connect_rate, "node_lease_ms": p.lease.as_millis() as u64,
        "drain_period_ms": p.drain.as_millis() as u64,
        "rebalance_period_ms": p.rebalance.as_millis() as u64,
        "move_grace_ms": p.grace.as_millis() as u64, "runs": o.runs,
    });
    report::write(
        &o.out,
        &format!("rolling-{}-{}", p.broker, p.clients),
        params,
        runs,
        summary,
        &checks,
        None,
    )?;
    Ok(())
}

/// Writes the nodes' and the helper's configs; their paths.
fn write_configs(dir: &Path, o: &Opts, p: &RollingPlan) -> Res<(Vec<PathBuf>, PathBuf)> {
    let addrs = free_addrs(NODES)?;
    let list: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ id = \"n{}\", url = \"ws://{a}\" }}", i + 1))
        .collect();
    let ms = |d: Duration| d.as_millis();
    let common = format!(
        "[cluster]\nnodes = [{}]\nnode_lease = \"{}ms\"\ndrain_period = \"{}ms\"\n\
         rebalance_period = \"{}ms\"\nmove_grace = \"{}ms\"\n\
         [auth]\nsecret = \"{SECRET}\"\napi_key = \"{API_KEY}\"\ntoken_ttl = \"10m\"\n{}",
        list.join(", "),
        ms(p.lease),
        ms(p.drain),
        ms(p.rebalance),
        ms(p.grace),
        cluster_toml(o, &p.broker)?,
    );
    let mut paths = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let id = format!("n{}", i + 1);
        // A shared inbox where the backbone has Redis; otherwise each node's own file.
        let store = if p.broker == "redis" {
            "kind = \"redis\"\n".to_owned()
        } else {
            format!(
                "kind = \"disk\"\npath = \"{}\"\n",
                dir.join(format!("offline-{id}.redb")).display()
            )
        };
        // A returning client gets its whole inbox at once: the queue must hold it.
        let toml = format!(
            "[node]\nid = \"{id}\"\nlisten = \"{a}\"\n{common}\
             [limits]\nconnect_rate = {}\noutbound_queue = 20000\n\
             outbound_queue_bytes = 67108864\nshutdown_grace = \"5s\"\n\
             [offline]\nenabled = true\nmax_per_client = 10000\n{store}",
            p.connect_rate
        );
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, toml)?;
        paths.push(path);
    }
    let helper = dir.join("helper.toml");
    std::fs::write(&helper, &common)?;
    Ok((paths, helper))
}

/// Polls `cond` every 100 ms for up to `within`; whether it held.
async fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run: start, connect, traffic, the rolling restart, then the figures.
async fn one_run(o: &Opts, p: &RollingPlan) -> Res<serde_json::Value> {
    let dir = tmpdir("rolling")?;
    let (cfgs, helper_cfg) = write_configs(&dir, o, p)?;
    let mut procs = Vec::new();
    for c in &cfgs {
        procs.push(Some(NodeProc::start_with(c, true).await?));
    }
    let helper = ImHelper::connect(&HelperConfig::load(Some(&helper_cfg))?).await?;
    let ids: Vec<ClientId> = (0..p.clients)
        .map(|i| format!("c{i}").parse())
        .collect::<Result<_, _>>()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients: Vec<Client> = ids
        .iter()
        .map(|c| Client::start(helper.clone(), c.clone(), stop_rx.clone()))
        .collect();
    let connected = Instant::now();
    let online = wait_for(Duration::from_secs(120), || {
        clients.iter().all(|c| c.node().is_some())
    })
    .await;
    if !online {
        return Err("clients did not all connect within 120 s".into());
    }
    let connect_secs = connected.elapsed().as_secs_f64();
    let room: ChannelName = ROOM.parse()?;
    for chunk in ids.chunks(1000) {
        helper.join_channel(&room, chunk).await?;
    }
    // Every node applied the joins and every client has a position to resume from.
    let from: ClientId = "bench".parse()?;
    helper
        .send_channel_message(&from, &room, &json!({"s": 0}))
        .await?;
    let warm = wait_for(Duration::from_secs(60), || {
        clients
            .iter()
            .all(|c| c.record.lock().is_ok_and(|r| r.channel.contains(&0)))
    })
    .await;
    if !warm {
        return Err("the warm-up channel message did not reach every client".into());
    }

    let (traffic_stop, traffic) = traffic(helper.clone(), ids.clone(), p.rate);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let since = Instant::now();
    let mut steps = Vec::new();
    for i in 0..NODES {
        let node: NodeId = format!("n{}", i + 1).parse()?;
        let proc = procs[i].take().ok_or("node not running")?;
        let stop_took = proc
            .terminate(p.lease + p.drain + p.grace + Duration::from_secs(30))
            .await?;
        procs[i] = Some(NodeProc::start_with(&cfgs[i], true).await?);
        let restarted = Instant::now();
        if !wait_for(p.lease * 2 + Duration::from_secs(30), || {
            helper.cluster().status(&node) == NodeStatus::Live
        })
        .await
        {
            return Err(format!("{node} never came back live").into());
        }
        let live_secs = restarted.elapsed().as_secs_f64();
        let home = wait_for(p.lease + p.rebalance + Duration::from_secs(30), || {
            clients
                .iter()
                .all(|c| helper.cluster().home(&c.id).id != node || c.node() == Some(i))
        })
        .await;
        steps.push(json!({
            "node": node.as_str(),
            "stop_secs": stop_took.as_secs_f64(),
            "live_secs": live_secs,
            "home_secs": home.then(|| restarted.elapsed().as_secs_f64()),
        }));
    }
    let restart_secs = since.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = traffic_stop.send(true);
    let sent = traffic.await?;
    // Give what is still on its way (stored, redelivered, resumed) time to arrive.
    let settled = wait_for(Duration::from_secs(60), || {
        measure::missing(&clients, &sent) == (0, 0)
    })
    .await;
    let mut r = measure::outcome(&clients, &sent, since, NODES);
    r["connect_secs"] = json!(connect_secs);
    r["restart_secs"] = json!(restart_secs);
    r["steps"] = json!(steps);
    r["settled"] = json!(settled);
    let _ = stop_tx.send(true);
    // Stop the nodes together: none has clients left to move.
    let mut stops = JoinSet::new();
    for proc in procs.into_iter().flatten() {
        stops.spawn(proc.stop());
    }
    while stops.join_next().await.is_some() {}
    drop(dir);
    Ok(r)
}

/// `rate` sends per second through `helper` until told to stop: four in five to a random
/// client, one in five to the channel. Each send runs on its own, so a slow one does not
/// hold the pace back.
fn traffic(
    helper: ImHelper,
    to: Vec<ClientId>,
    rate: u64,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<Sent>) {
    let (stop_tx, mut stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let from: ClientId = "bench".parse().unwrap_or_else(|_| to[0].clone());
        let room: Option<ChannelName> = ROOM.parse().ok();
        let mut sends: JoinSet<(Option<usize>, u64, bool)> = JoinSet::new();
        let mut sent = Sent::default();
        let mut next = tokio::time::Instant::now();
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => break,
            }
            while let Some(done) = sends.try_join_next() {
                note(&mut sent, done);
            }
            next += every;
            n += 1;
            let (helper, from, room) = (helper.clone(), from.clone(), room.clone());
            if n % 5 == 0 {
                sends.spawn(async move {
                    let ok = match room {
                        Some(room) => helper
                            .send_channel_message(&from, &room, &json!({"s": n}))
                            .await
                            .is_ok(),
                        None => false,
                    };
                    (None, n, ok)
                });
            } else {
                let i = rand::rng().random_range(0..to.len());
                let target = to[i].clone();
                sends.spawn(async move {
                    let ok = helper
                        .send_message(&from, &[target], &json!({"s": n}), false)
                        .await
                        .is_ok();
                    (Some(i), n, ok)
                });
            }
        }
        while let Some(done) = sends.join_next().await {
            note(&mut sent, done);
        }
        sent
    });
    (stop_tx, task)
}

/// Records how one send ended.
fn note(sent: &mut Sent, done: Result<(Option<usize>, u64, bool), tokio::task::JoinError>) {
    match done {
        Ok((Some(i), n, true)) => sent.direct.push((i, n)),
        Ok((None, n, true)) => sent.channel.push(n),
        _ => sent.failed += 1,
    }
}
