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
    fleet::{pin, Fleet, NodeProc, Pin},
    hist::LatHist,
    report::{self, latency_json, median_at, Check},
    scenarios::{lone_node_toml, n1_urls, tmpdir, Opts, API_KEY},
    sys,
    worker::now_ns,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// CPU microseconds one `write()` of `size` bytes to a loopback TCP socket costs, over
/// `sockets` connections (round robin), measured as the writing thread's CPU time.
///
/// On loopback the writer's `write()` also runs the receiver's TCP input and wakes the receiver
/// if it waits, so two floors are measured: `quiet`, whose readers never read (nothing to wake),
/// and `waiting`, whose readers wait in epoll on another thread as the bench's client workers do
/// (a pause between rounds lets them drain and sleep again, as between paced messages). With
/// `pin`, the writer runs on the node's cores and the readers on the workers'.
pub(crate) fn write_floor_us(
    sockets: usize,
    size: usize,
    rounds: usize,
    pin: Option<&Pin>,
) -> Res<Floor> {
    if let Some(p) = pin {
        pin_this_thread(&p.node)?;
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let connect = |n: usize| -> std::io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
        let (mut writers, mut readers) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let w = TcpStream::connect(addr)?;
            w.set_nodelay(true)?;
            writers.push(w);
            readers.push(listener.accept()?.0);
        }
        Ok((writers, readers))
    };
    let buf = vec![b'x'; size];
    let per_write = |writers: &mut [TcpStream], pause: Duration| -> std::io::Result<f64> {
        let mut spent = 0.0;
        for _ in 0..rounds {
            std::thread::sleep(pause);
            let before = sys::thread_cpu_seconds();
            for w in writers.iter_mut() {
                w.write_all(&buf)?;
            }
            spent += sys::thread_cpu_seconds() - before;
        }
        Ok(spent * 1e6 / (writers.len() * rounds) as f64)
    };

    let (mut writers, readers) = connect(sockets)?;
    let quiet = per_write(&mut writers, Duration::ZERO)?;
    drop((writers, readers));

    let (mut writers, readers) = connect(sockets)?;
    let reader = spawn_readers(readers, pin.map(|p| p.workers.clone()))?;
    let waiting = per_write(&mut writers, Duration::from_millis(20));
    drop(writers);
    let read = reader.join().map_err(|_| "floor reader panicked")??;
    let waiting = waiting?;
    let want = (sockets * rounds * size) as u64;
    if read != want {
        return Err(format!("floor readers got {read} of {want} bytes").into());
    }
    Ok(Floor { quiet, waiting })
}

/// The two floors of [`write_floor_us`], µs of CPU per write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    pub(crate) quiet: f64,
    pub(crate) waiting: f64,
}

/// A thread with a single-threaded runtime reading every stream until EOF; returns the bytes read.
fn spawn_readers(
    readers: Vec<TcpStream>,
    cpus: Option<String>,
) -> std::io::Result<std::thread::JoinHandle<Result<u64, String>>> {
    std::thread::Builder::new()
        .name("floor-readers".into())
        .spawn(move || {
            if let Some(c) = cpus {
                pin_this_thread(&c).map_err(|e| e.to_string())?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| e.to_string())?;
            let drained = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            rt.block_on(async move {
                let mut tasks = Vec::with_capacity(readers.len());
                for r in readers {
                    r.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let mut r = tokio::net::TcpStream::from_std(r).map_err(|e| e.to_string())?;
                    let drained = drained.clone();
                    tasks.push(tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = r.read(&mut buf).await {
                            drained.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }));
                }
                for t in tasks {
                    t.await.map_err(|e| e.to_string())?;
                }
                Ok(drained.load(std::sync::atomic::Ordering::Relaxed))
            })
        })
}

/// Pins the calling thread to `cpus` (a `taskset -c` list) with `taskset -p`.
fn pin_this_thread(cpus: &str) -> std::io::Result<()> {
    let me = std::fs::read_link("/proc/thread-self")?;
    let tid = me
        .file_name()
        .and_then(|t| t.to_str())
        .ok_or_else(|| std::io::Error::other("no thread id"))?
        .to_owned();
    let out = std::process::Command::new("taskset")
        .args(["-p", "-c", cpus, &tid])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "taskset -p -c {cpus} {tid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
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
    let pinned = pin().is_some();
    // As many sockets as members, up to what two ends per socket leave of the open-files limit,
    // because the kernel's cost per write grows with the number of sockets; its own thread,
    // because it pins itself.
    let sockets = members.clamp(1000, 8000);
    let rounds = 40_000usize.div_ceil(sockets);
    let floor = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            write_floor_us(sockets, 150, rounds, pin()).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "the floor thread panicked".to_owned())?
    })
    .await??;
    println!(
        "floor: one 150-byte write() to a loopback socket = {:.2} us of CPU ({:.2} us when its reader waits in epoll)",
        floor.quiet, floor.waiting
    );
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
        let (user0, kernel0) = sys::cpu_split(node.pid());
        let clients_cpu0 = fleet.cpu_seconds();
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
        let (user1, kernel1) = sys::cpu_split(node.pid());
        let clients_cpu = fleet.cpu_seconds() - clients_cpu0;
        let frames = m.received - base_received;
        let mut last = LatHist::default();
        for v in m.seq_max.values() {
            last.record(*v);
        }
        let us_per_frame = cpu * 1e6 / frames.max(1) as f64;
        let user_us_per_frame = (user1 - user0) * 1e6 / frames.max(1) as f64;
        let kernel_us_per_frame = (kernel1 - kernel0) * 1e6 / frames.max(1) as f64;
        let clients_us_per_frame = clients_cpu * 1e6 / frames.max(1) as f64;
        // The least time one message can take to reach its last member, from CPU alone: pinned,
        // the node's core does every write; unpinned, node and clients share every core.
        let cores = sys::machine().cores.max(1) as f64;
        let cpu_bound_ms = if pinned {
            us_per_frame * members as f64 / 1e3
        } else {
            (us_per_frame + clients_us_per_frame) * members as f64 / cores / 1e3
        };
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
            "node_user_us_per_frame": user_us_per_frame,
            "node_kernel_us_per_frame": kernel_us_per_frame,
            "clients_cpu_us_per_frame": clients_us_per_frame,
            "last_member_cpu_bound_ms": cpu_bound_ms,
            "floor_us_per_write": floor.quiet,
            "floor_us_per_write_waiting_reader": floor.waiting,
            "node_cost_over_floor": us_per_frame / floor.quiet.max(1e-9),
            "node_cost_over_waiting_floor": us_per_frame / floor.waiting.max(1e-9),
            "last_member_latency": latency_json(&last),
            "frame_latency": latency_json(&m.latency),
        });
        println!("run {run}: {r}");
        all_last.merge(&last);
        last_timeline = m.timeline.clone();
        runs.push(r);
        fleet.stop().await;
        node.stop().await;
        drop(dir);
    }
    let summary = json!({
        "node_cpu_us_per_frame (median)": median_at(&runs, &["node_cpu_us_per_frame"]),
        "node_user_us_per_frame (median)": median_at(&runs, &["node_user_us_per_frame"]),
        "node_kernel_us_per_frame (median)": median_at(&runs, &["node_kernel_us_per_frame"]),
        "floor_us_per_write": floor.quiet,
        "floor_us_per_write_waiting_reader": floor.waiting,
        "node_cost_over_floor (median)": median_at(&runs, &["node_cost_over_floor"]),
        "node_cost_over_waiting_floor (median)": median_at(&runs, &["node_cost_over_waiting_floor"]),
        "node_cpu_percent (median)": median_at(&runs, &["node_cpu_percent"]),
        "clients_cpu_us_per_frame (median)": median_at(&runs, &["clients_cpu_us_per_frame"]),
        "last_member_cpu_bound_ms (median)": median_at(&runs, &["last_member_cpu_bound_ms"]),
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
            name: "node user-space CPU per delivered frame",
            target: "<= 1.0 us".into(),
            measured: format!("{:.2} us", median_at(&runs, &["node_user_us_per_frame"])),
            met: median_at(&runs, &["node_user_us_per_frame"]) <= 1.0,
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
