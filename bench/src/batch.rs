//! The batch scenario: point-to-point messages sent through the HTTP API's batch endpoint
//! (`POST /api/v1/messages/batch`, `docs/design.md` section 7) to one node process on the
//! memory backends, each message to one of the connected receivers in turn. It measures what a
//! backend pushing notifications sees end to end: messages delivered per second (first request
//! to last frame), publish-to-client latency, request latency, and the node's CPU per message.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use impush_core::ClientId;
use serde_json::json;

use crate::{
    fleet::{Fleet, NodeProc},
    hist::LatHist,
    report::{self, latency_json, median_at, Check},
    scenarios::{n1_urls, span_secs, tmpdir, write_configs, Opts, API_KEY},
    sys,
    worker::now_ns,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// What the batch scenario is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct BatchPlan {
    pub(crate) receivers: usize,
    pub(crate) messages: u64,
    /// Messages per request (at most the node's `limits.max_batch_messages`, 1,000 by default).
    pub(crate) batch: usize,
    /// Requests in flight at once.
    pub(crate) in_flight: usize,
    /// Messages per second, sent as whole requests evenly spaced; `None`: as fast as the
    /// requests in flight allow.
    pub(crate) rate: Option<u64>,
}

impl BatchPlan {
    /// How long after the first request request `b` goes out (zero when not paced).
    fn due(&self, b: u64) -> Duration {
        match self.rate {
            Some(rate) if rate > 0 => {
                Duration::from_secs_f64((b * self.batch as u64) as f64 / rate as f64)
            }
            _ => Duration::ZERO,
        }
    }
}

/// What the requests of one run came to.
#[derive(Default)]
struct Sent {
    accepted: u64,
    refused: u64,
    requests: LatHist,
}

pub(crate) async fn batch(o: &Opts, p: &BatchPlan) -> Res<()> {
    if p.batch == 0 || p.receivers == 0 {
        return Err("--batch and --receivers must be at least 1".into());
    }
    let mut runs = Vec::new();
    let mut all_lat = LatHist::default();
    let mut last_timeline = Default::default();
    for run in 0..o.runs {
        let dir = tmpdir("batch")?;
        let (cfgs, _) = write_configs(&dir, 1, "")?;
        let node = NodeProc::start(&cfgs[0]).await?;
        let clients: Vec<ClientId> = (0..p.receivers)
            .map(|i| format!("r{i}").parse())
            .collect::<Result<_, _>>()?;
        let urls = n1_urls(&node.addr, &clients)?;
        let (mut fleet, _) = Fleet::start(urls, o.workers, o.source_ips, 256, false).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(p.in_flight)
            .build()?;
        let url = format!("http://{}/api/v1/messages/batch", node.addr);

        let cpu0 = sys::cpu_split(node.pid());
        let start_ns = now_ns();
        let started = Instant::now();
        let batches = p.messages.div_ceil(p.batch as u64);
        let sent = futures_util::stream::iter(0..batches)
            .map(|b| {
                let (http, url) = (&http, &url);
                async move {
                    tokio::time::sleep_until((started + p.due(b)).into()).await;
                    send_one(http, url, p, b).await
                }
            })
            .buffer_unordered(p.in_flight.max(1))
            .fold(Sent::default(), |mut acc, r| async move {
                match r {
                    Ok((accepted, refused, took)) => {
                        acc.accepted += accepted;
                        acc.refused += refused;
                        acc.requests.record(took);
                    }
                    Err(e) => {
                        eprintln!("batch request failed: {e}");
                        acc.refused += p.batch as u64;
                    }
                }
                acc
            })
            .await;
        let send_secs = started.elapsed().as_secs_f64();
        let m = fleet
            .wait_received(sent.accepted, Duration::from_secs(120))
            .await?;
        let cpu1 = sys::cpu_split(node.pid());
        let secs = span_secs(&m, start_ns);
        let per_message = |d: f64| d * 1e6 / m.received.max(1) as f64;
        let r = json!({
            "run": run,
            "accepted": sent.accepted,
            "refused": sent.refused,
            "delivered": m.received,
            "send_secs": send_secs,
            "accepted_per_sec": sent.accepted as f64 / send_secs.max(1e-9),
            "delivered_per_sec": m.received as f64 / secs.max(1e-9),
            "latency": latency_json(&m.latency),
            "request_latency": latency_json(&sent.requests),
            "server_user_us_per_message": per_message(cpu1.0 - cpu0.0),
            "server_kernel_us_per_message": per_message(cpu1.1 - cpu0.1),
        });
        println!("run {run}: {r}");
        all_lat.merge(&m.latency);
        last_timeline = m.timeline.clone();
        runs.push(r);
        fleet.stop().await;
        node.stop().await;
    }
    let delivered = median_at(&runs, &["delivered_per_sec"]);
    let lost: u64 = runs
        .iter()
        .map(|r| {
            let accepted = r["accepted"].as_u64().unwrap_or(0);
            accepted.saturating_sub(r["delivered"].as_u64().unwrap_or(0))
        })
        .sum();
    let summary = json!({
        "delivered_per_sec (median)": delivered,
        "accepted_per_sec (median)": median_at(&runs, &["accepted_per_sec"]),
        "latency_p50_ms (median)": median_at(&runs, &["latency", "p50_ms"]),
        "latency_p99_ms (median)": median_at(&runs, &["latency", "p99_ms"]),
        "request_p99_ms (median)": median_at(&runs, &["request_latency", "p99_ms"]),
        "server_user_us_per_message (median)": median_at(&runs, &["server_user_us_per_message"]),
        "server_kernel_us_per_message (median)": median_at(&runs, &["server_kernel_us_per_message"]),
        "refused": runs.iter().map(|r| r["refused"].as_u64().unwrap_or(0)).sum::<u64>(),
        "lost": lost,
    });
    // Paced, the figure is the rate asked for: what is checked is that the node kept up.
    let (name, floor) = match p.rate {
        Some(rate) => (
            "paced batch sends delivered at the rate sent",
            0.95 * rate as f64,
        ),
        None => (
            "direct messages delivered via the HTTP batch endpoint, one node",
            200_000.0,
        ),
    };
    let checks = [
        Check {
            name,
            target: format!(">= {floor:.0}/s"),
            measured: format!("{delivered:.0}/s"),
            met: delivered >= floor,
        },
        Check {
            name: "accepted messages lost",
            target: "0".into(),
            measured: lost.to_string(),
            met: lost == 0,
        },
    ];
    let params = json!({
        "receivers": p.receivers, "messages": p.messages, "batch": p.batch,
        "in_flight": p.in_flight, "rate": p.rate, "workers": o.workers, "runs": o.runs,
    });
    let tag = match p.rate {
        Some(rate) => format!("batch-{}x{}-at-{rate}", p.messages, p.batch),
        None => format!("batch-{}x{}", p.messages, p.batch),
    };
    report::write(
        &o.out,
        &tag,
        params,
        runs,
        summary,
        &checks,
        Some((&all_lat, &last_timeline)),
    )?;
    Ok(())
}

/// Sends batch number `b` (its messages round robin over the receivers, each carrying its
/// send time for the clients' latency); how many were accepted and refused, and how long the
/// request took (ns).
///
/// The sender shares the node's two cores, so it writes its body straight into one buffer and
/// reads the answer into a typed list that skips the ids: a `serde_json::Value` per message
/// each way cost it 2.25 µs of CPU per message, a third of what the node spends
/// (`BENCHMARKS.md`, "Batch sends through HTTP").
async fn send_one(
    http: &reqwest::Client,
    url: &str,
    p: &BatchPlan,
    b: u64,
) -> Res<(u64, u64, u64)> {
    let first = b * p.batch as u64;
    let n = (p.messages - first).min(p.batch as u64);
    let t = now_ns();
    let body = batch_body(first..first + n, p.receivers as u64, t);
    let r = http
        .post(url)
        .bearer_auth(API_KEY)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let bytes = r.bytes().await?;
    let took = now_ns().saturating_sub(t);
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)).into());
    }
    let answer: Answer = serde_json::from_slice(&bytes)?;
    if answer.results.len() as u64 != n {
        return Err(format!("{} results for {n} messages", answer.results.len()).into());
    }
    let accepted = answer.results.iter().filter(|r| r.error.is_none()).count() as u64;
    Ok((accepted, n - accepted, took))
}

/// The body of a batch request: message `i` to receiver `r{i % receivers}`, its data the send
/// time `t` and its number (what the clients read latency and order from).
fn batch_body(messages: std::ops::Range<u64>, receivers: u64, t: u64) -> String {
    use std::fmt::Write;
    let mut body = String::with_capacity(16 + 72 * (messages.end - messages.start) as usize);
    body.push_str(r#"{"messages":["#);
    for (k, i) in messages.enumerate() {
        if k > 0 {
            body.push(',');
        }
        let r = i % receivers;
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            r#"{{"from":"bench","to":["r{r}"],"data":{{"t":{t},"s":{i}}}}}"#
        );
    }
    body.push_str("]}");
    body
}

/// The batch endpoint's answer, only as far as the sender reads it.
#[derive(serde::Deserialize)]
struct Answer {
    results: Vec<ItemAnswer>,
}

#[derive(serde::Deserialize)]
struct ItemAnswer {
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;

    use super::*;

    #[test]
    fn the_body_is_the_batch_the_endpoint_takes() {
        let body: Value = serde_json::from_str(&batch_body(4..7, 5, 99)).unwrap();
        let want = json!({"messages": [
            {"from": "bench", "to": ["r4"], "data": {"t": 99, "s": 4}},
            {"from": "bench", "to": ["r0"], "data": {"t": 99, "s": 5}},
            {"from": "bench", "to": ["r1"], "data": {"t": 99, "s": 6}},
        ]});
        assert_eq!(body, want);
    }

    #[test]
    fn an_item_with_an_error_counts_as_refused() {
        let a: Answer = serde_json::from_str(
            r#"{"results":[{"id":"a","nodes":1},{"id":"b","error":{"error":"unavailable","message":"m"}}]}"#,
        )
        .unwrap();
        let refused: Vec<bool> = a.results.iter().map(|r| r.error.is_some()).collect();
        assert_eq!(refused, [false, true]);
    }
}
