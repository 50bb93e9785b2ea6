//! The offline inbox (`inbox`): what storing costs and how fast a returning client drains it,
//! for each store (`memory`, `redis`, `disk`).
//!
//! One node process on the memory broker, so the store is the only thing that changes. Phase
//! one sends `messages` point-to-point messages through the HTTP API to one client that is
//! away and times them until the inbox holds them all; phase two connects that client and
//! times the drain until every stored frame arrived and the inbox is empty (stored messages
//! leave once written: `require_ack = false`, so the drain includes removing them).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use impush_core::ClientId;
use serde_json::{json, Value};

use crate::{
    fleet::{Fleet, NodeProc},
    report::{self, median_at, Check},
    scenarios::{lone_node_toml, n1_urls, tmpdir, Opts, API_KEY},
    worker::now_ns,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const RECEIVER: &str = "away";

/// `[offline]` for `store`, with room for every message of the run, and an outbound queue
/// that can take the whole inbox at once (the node refuses a smaller one).
fn offline_toml(o: &Opts, store: &str, messages: u64, dir: &std::path::Path) -> Res<String> {
    let n = messages.max(1);
    let common = format!(
        "[limits]\noutbound_queue = {}\noutbound_queue_bytes = {}\n\
         [offline]\nenabled = true\nkind = \"{store}\"\nrequire_ack = false\n\
         max_per_client = {n}\nmax_bytes = {}\n",
        n + 1024,
        n * 2048 + (4 << 20),
        n * 1024
    );
    Ok(match store {
        "memory" => common,
        "redis" => {
            let url = o
                .redis_url
                .clone()
                .ok_or("--redis-url (or IMPUSH_TEST_REDIS_URL) is required for the redis store")?;
            format!("{common}url = \"{url}\"\n")
        }
        "disk" => format!("{common}path = \"{}\"\n", dir.join("inbox.redb").display()),
        other => return Err(format!("unknown store `{other}` (memory, redis or disk)").into()),
    })
}

async fn inbox_count(http: &reqwest::Client, base: &str) -> Res<u64> {
    let r = http
        .get(format!("{base}/api/v1/clients/{RECEIVER}/inbox"))
        .bearer_auth(API_KEY)
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(format!("inbox: {} {}", r.status(), r.text().await?).into());
    }
    let v: Value = r.json().await?;
    v["count"]
        .as_u64()
        .ok_or_else(|| format!("inbox answer without a count: {v}").into())
}

/// Polls the inbox until it holds `want` messages; how long that took from `since`.
async fn wait_count(
    http: &reqwest::Client,
    base: &str,
    want: u64,
    since: Instant,
    timeout: Duration,
) -> Res<f64> {
    loop {
        let n = inbox_count(http, base).await?;
        if n == want {
            return Ok(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > timeout {
            return Err(format!("the inbox holds {n} messages, expected {want}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// See the module docs.
pub(crate) async fn inbox(o: &Opts, store: &str, messages: u64, in_flight: usize) -> Res<()> {
    let mut runs = Vec::new();
    let mut last_timeline = Default::default();
    let mut all_lat = crate::hist::LatHist::default();
    for run in 0..o.runs {
        let dir = tmpdir("inbox")?;
        let cfg = dir.join("n1.toml");
        // A prefix of its own, so Redis keys of earlier runs are never counted.
        std::fs::write(
            &cfg,
            lone_node_toml(&format!(
                "[broker]\nprefix = \"bench{}\"\n{}",
                now_ns(),
                offline_toml(o, store, messages, &dir)?
            )),
        )?;
        let node = NodeProc::start(&cfg).await?;
        let base = format!("http://{}", node.addr);
        let http = reqwest::Client::new();

        // Phase one: store.
        let started = Instant::now();
        let accepted = futures_util::stream::iter(0..messages)
            .map(|i| {
                let http = http.clone();
                let base = base.clone();
                async move {
                    let body = json!({
                        "from": "bench",
                        "to": [RECEIVER],
                        "data": {"t": now_ns(), "s": i},
                    });
                    http.post(format!("{base}/api/v1/messages"))
                        .bearer_auth(API_KEY)
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .buffer_unordered(in_flight.max(1))
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await as u64;
        if accepted != messages {
            return Err(format!("{} of {messages} sends were refused", messages - accepted).into());
        }
        let store_secs =
            wait_count(&http, &base, messages, started, Duration::from_secs(300)).await?;

        // Phase two: the receiver comes back.
        let receiver: ClientId = RECEIVER.parse()?;
        let urls = n1_urls(&node.addr, [&receiver])?;
        let drain_start = Instant::now();
        let (mut fleet, m) = Fleet::start(urls, 1, 1, 1, false).await?;
        if m.failed > 0 {
            return Err("the receiver failed to connect".into());
        }
        let got = fleet
            .wait_received(messages, Duration::from_secs(300))
            .await?;
        let frames_secs = drain_start.elapsed().as_secs_f64();
        let drain_secs = wait_count(&http, &base, 0, drain_start, Duration::from_secs(300)).await?;
        let r = json!({
            "run": run,
            "store": store,
            "messages": messages,
            "stored_per_sec": messages as f64 / store_secs.max(1e-9),
            "store_secs": store_secs,
            "delivered": got.received,
            "drained_frames_secs": frames_secs,
            "drained_per_sec": got.received as f64 / frames_secs.max(1e-9),
            "inbox_empty_secs": drain_secs,
        });
        println!("run {run}: {r}");
        all_lat.merge(&got.latency);
        last_timeline = got.timeline.clone();
        runs.push(r);
        fleet.stop().await;
        node.stop().await;
        drop(dir);
    }
    let lost: u64 = runs
        .iter()
        .map(|r| messages.saturating_sub(r["delivered"].as_u64().unwrap_or(0)))
        .sum();
    let summary = json!({
        "stored_per_sec (median)": median_at(&runs, &["stored_per_sec"]),
        "drained_per_sec (median)": median_at(&runs, &["drained_per_sec"]),
        "inbox_empty_secs (median)": median_at(&runs, &["inbox_empty_secs"]),
        "lost": lost,
    });
    let checks = [Check {
        name: "every stored message drained on connect",
        target: format!("{messages} per run"),
        measured: format!("{lost} lost"),
        met: lost == 0,
    }];
    let params =
        json!({"store": store, "messages": messages, "in_flight": in_flight, "runs": o.runs});
    report::write(
        &o.out,
        &format!("inbox-{store}-{messages}"),
        params,
        runs,
        summary,
        &checks,
        Some((&all_lat, &last_timeline)),
    )?;
    Ok(())
}
