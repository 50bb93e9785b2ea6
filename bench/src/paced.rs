//! Fan-out at everyday rates (`paced`): one channel of `members`, `rate` messages per second,
//! where nothing batches. Reports the latency to the last member of each message, and the
//! node's CPU per delivered frame against the floor: what one small `write()` to a loopback
//! TCP socket costs on this machine (measured here too), which no server can go below.
//!
//! The node is a separate process on the memory broker, driven through its HTTP API (joins and
//! channel messages), so its CPU is measured alone; `--pin` puts it on one core and the client
//! workers on the other.

use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use impush_core::ClientId;
use serde_json::{json, Value};

use crate::{
    fleet::{Fleet, NodeProc},
    hist::LatHist,
    report::{self, latency_json, median_at, Check},
    scenarios::{lone_node_toml, n1_urls, tmpdir, Opts, API_KEY},
    sys,
    worker::now_ns,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// CPU microseconds one `write()` of `size` bytes to a loopback TCP socket costs, over
/// `sockets` connections (round robin), measured as this thread's CPU time.
pub(crate) fn write_floor_us(sockets: usize, size: usize, rounds: usize) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(sockets);
    let mut readers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        writers.push(w);
        readers.push(listener.accept()?.0);
    }
    let buf = vec![b'x'; size];
    let before = sys::thread_cpu_seconds();
    for _ in 0..rounds {
        for w in &mut writers {
            w.write_all(&buf)?;
        }
    }
    let spent = sys::thread_cpu_seconds() - before;
    drop(readers);
    Ok(spent * 1e6 / (sockets * rounds) as f64)
}

async fn api(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Res<Value> {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(format!("{path}: {} {}", r.status(), r.text().await?).into());
    }
    Ok(r.json().await?)
}

/// Paced channel fan-out; see the module docs.
pub(crate) async fn paced(o: &Opts, members: usize, rate: f64, seconds: u64) -> Res<()> {
    let messages = (rate * seconds as f64).round().max(1.0) as u64;
    let floor = tokio::task::spawn_blocking(|| write_floor_us(2000, 150, 20)).await??;
    println!("floor: one 150-byte write() to a loopback socket = {floor:.2} us of CPU");
    let mut runs = Vec::new();
    let mut all_last = LatHist::default();
    let mut last_timeline = Default::default();
    for run in 0..o.runs {
        let dir = tmpdir("paced")?;
        let cfg = dir.join("n1.toml");
        std::fs::write(
            &cfg,
            lone_node_toml("[limits]\nmax_clients_per_join = 10000\n"),
        )?;
        let node = NodeProc::start(&cfg).await?;
        let base = format!("http://{}", node.addr);
        let http = reqwest::Client::new();
        let clients: Vec<ClientId> = (0..members)
            .map(|i| format!("m{i}").parse())
            .collect::<Result<_, _>>()?;
        let urls = n1_urls(&node.addr, &clients)?;
        let (mut fleet, m) = Fleet::start(urls, o.workers, o.source_ips, 256, true).await?;
        if m.failed > 0 {
            return Err(format!("{} clients failed to connect", m.failed).into());
        }
        for chunk in clients.chunks(5000) {
            api(
                &http,
                &base,
                "/api/v1/channels/room/members",
                json!({ "client_ids": chunk }),
            )
            .await?;
        }
        // A warm-up message proves every member is in the channel before timing starts.
        api(
            &http,
            &base,
            "/api/v1/channels/room/messages",
            json!({"from": "bench", "data": {"warmup": true}}),
        )
        .await?;
        fleet
            .wait_warm(members as u64, Duration::from_secs(60))
            .await?;
        let base_received = fleet.report().await?.received;

        let cpu0 = sys::cpu_seconds(node.pid());
        let start_ns = now_ns();
        let started = Instant::now();
        for i in 0..messages {
            // Open loop: message i is due at i / rate s, however long the previous send took.
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            api(
                &http,
                &base,
                "/api/v1/channels/room/messages",
                json!({"from": "bench", "data": {"t": now_ns(), "s": i}}),
            )
            .await?;
        }
        let want = base_received + members as u64 * messages;
        let m = fleet.wait_received(want, Duration::from_secs(120)).await?;
        let cpu = sys::cpu_seconds(node.pid()) - cpu0;
        let frames = m.received - base_received;
        let mut last = LatHist::default();
        for v in m.seq_max.values() {
            last.record(*v);
        }
        let us_per_frame = cpu * 1e6 / frames.max(1) as f64;
        let r = json!({
            "run": run,
            "members": members,
            "rate": rate,
            "messages": messages,
            "frames_expected": members as u64 * messages,
            "frames_delivered": frames,
            "node_cpu_secs": cpu,
            "node_cpu_percent": cpu / (now_ns() - start_ns) as f64 * 1e9 * 100.0,
            "node_cpu_us_per_frame": us_per_frame,
            "floor_us_per_write": floor,
            "node_cost_over_floor": us_per_frame / floor.max(1e-9),
            "last_member_latency": latency_json(&last),
            "frame_latency": latency_json(&m.latency),
        });
        println!("run {run}: {r}");
        all_last.merge(&last);
        last_timeline = m.timeline.clone();
        runs.push(r);
        fleet.stop().await;
        node.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let summary = json!({
        "node_cpu_us_per_frame (median)": median_at(&runs, &["node_cpu_us_per_frame"]),
        "floor_us_per_write": floor,
        "node_cost_over_floor (median)": median_at(&runs, &["node_cost_over_floor"]),
        "node_cpu_percent (median)": median_at(&runs, &["node_cpu_percent"]),
        "last_member_p50_ms (median)": median_at(&runs, &["last_member_latency", "p50_ms"]),
        "last_member_p99_ms (median)": median_at(&runs, &["last_member_latency", "p99_ms"]),
        "last_member_max_ms (median)": median_at(&runs, &["last_member_latency", "max_ms"]),
        "lost_frames": runs.iter().map(|r| r["frames_expected"].as_u64().unwrap_or(0).saturating_sub(r["frames_delivered"].as_u64().unwrap_or(0))).sum::<u64>(),
    });
    let checks = [
        Check {
            name: "node CPU per delivered frame",
            target: "<= 5 us".into(),
            measured: format!("{:.2} us", median_at(&runs, &["node_cpu_us_per_frame"])),
            met: median_at(&runs, &["node_cpu_us_per_frame"]) <= 5.0,
        },
        Check {
            name: "last-member p99 latency",
            target: "<= 45 ms".into(),
            measured: format!(
                "{:.1} ms",
                median_at(&runs, &["last_member_latency", "p99_ms"])
            ),
            met: median_at(&runs, &["last_member_latency", "p99_ms"]) <= 45.0,
        },
    ];
    let pinned = crate::fleet::PIN.get().is_some_and(Option::is_some);
    let params = json!({"members": members, "rate": rate, "seconds": seconds, "messages": messages, "workers": o.workers, "runs": o.runs, "pinned": pinned});
    report::write(
        &o.out,
        &format!(
            "paced-{members}x{rate}{}",
            if pinned { "-pinned" } else { "" }
        ),
        params,
        runs,
        summary,
        &checks,
        Some((&all_last, &last_timeline)),
    )?;
    Ok(())
}
