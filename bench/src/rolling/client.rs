//! The clients of the rolling scenario: each behaves like the JavaScript client
//! (`clients/js`, `docs/design.md` section 14) and records what it lived through.
//!
//! A client asks ImHelper for a fresh URL before every connection (so it follows live
//! ownership), reconnects at once after a 1012 (a move), honours `Retry-After` when a node
//! refuses the connect (503/429, spread over as long again), backs off with full jitter
//! otherwise, acks what asks for an ack, drops repeated message numbers, and resumes its
//! channel from the last position it saw. Every message the scenario sends carries a number
//! (`{"s": n}`), which is what a client records.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use impush_core::ClientId;
use impush_helper::ImHelper;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The JavaScript client's backoff: full jitter over `BASE * 2^failures`, capped.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What one client lived through.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Each connection opened: its node (index from 0) and when.
    pub(crate) opened: Vec<(usize, Instant)>,
    /// Each connect a node refused, or that failed: the node asked and when.
    pub(crate) refused: Vec<(usize, Instant)>,
    /// Each time without a connection (from a close to the next open), ending when.
    pub(crate) gaps: Vec<(Instant, Duration)>,
    /// Numbers of the point-to-point messages received.
    pub(crate) direct: HashSet<u64>,
    /// Numbers of the channel publications received.
    pub(crate) channel: HashSet<u64>,
    /// Frames that repeated a number already received.
    pub(crate) duplicates: u64,
    /// `resume` answers that said `recovered: false`.
    pub(crate) unrecovered: u64,
}

/// A running client.
pub(crate) struct Client {
    pub(crate) id: ClientId,
    pub(crate) record: Arc<Mutex<Record>>,
}

impl Client {
    /// Starts `id`, connecting through `helper`'s URLs to the nodes whose ids are `nodes`
    /// (`n1`, ...), until `stop` turns true.
    pub(crate) fn start(helper: ImHelper, id: ClientId, stop: watch::Receiver<bool>) -> Client {
        let record = Arc::new(Mutex::new(Record::default()));
        tokio::spawn(run(helper, id.clone(), record.clone(), stop));
        Client { id, record }
    }

    /// The node of the current (last opened) connection.
    pub(crate) fn node(&self) -> Option<usize> {
        self.record
            .lock()
            .ok()
            .and_then(|r| r.opened.last().map(|(n, _)| *n))
    }
}

/// Where a client is in its channel: stream -> epoch -> last offset.
type Positions = HashMap<String, HashMap<String, u64>>;

/// How a connection ended.
enum Ended {
    /// Closed with 1012: go at once.
    Moved,
    /// Closed otherwise, or lost.
    Lost,
    Stop,
}

async fn run(
    helper: ImHelper,
    id: ClientId,
    record: Arc<Mutex<Record>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut positions = Positions::new();
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    let mut down_since: Option<Instant> = None;
    loop {
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        let (url, node) = match helper.prepare_connect(&id, Value::Null) {
            Ok(info) => (
                with_resume(&info.url, &positions),
                node_index(info.node.as_str()),
            ),
            Err(_) => {
                wait = backoff(&mut failures);
                continue;
            }
        };
        let ws = match tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            other => {
                if let Ok(mut r) = record.lock() {
                    r.refused.push((node, Instant::now()));
                }
                wait = match other {
                    Ok(Err(tungstenite::Error::Http(res))) => retry_after(&res)
                        .map(|s| {
                            failures += 1;
                            let spread = s.clamp(BACKOFF_BASE, BACKOFF_MAX);
                            s + spread.mul_f64(rand::rng().random::<f64>())
                        })
                        .unwrap_or_else(|| backoff(&mut failures)),
                    _ => backoff(&mut failures),
                };
                continue;
            }
        };
        let opened = Instant::now();
        if let Ok(mut r) = record.lock() {
            r.opened.push((node, opened));
            if let Some(since) = down_since {
                r.gaps.push((opened, opened - since));
            }
        }
        let ended = session(ws, &mut positions, &record, &mut stop).await;
        down_since = Some(Instant::now());
        // Only a connection that stayed up resets the backoff, as in the JavaScript client.
        if opened.elapsed() >= Duration::from_secs(5) {
            failures = 0;
        }
        wait = match ended {
            Ended::Moved => Duration::ZERO,
            Ended::Lost => backoff(&mut failures),
            Ended::Stop => return,
        };
    }
}

/// One connection until it ends.
async fn session(
    mut ws: Ws,
    positions: &mut Positions,
    record: &Mutex<Record>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ended::Stop;
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let Ok(f) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if let Some(ack) = on_frame(&f, positions, record) {
                    let _ = ws.send(Message::Text(ack.to_string().into())).await;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return match frame.map(|f| u16::from(f.code)) {
                    Some(1012) => Ended::Moved,
                    _ => Ended::Lost,
                };
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ended::Lost,
        }
    }
}

/// Records a frame; the ack to send, if any.
fn on_frame(f: &Value, positions: &mut Positions, record: &Mutex<Record>) -> Option<Value> {
    let Ok(mut r) = record.lock() else {
        return None;
    };
    match f["type"].as_str().unwrap_or_default() {
        "message" => {
            if let Some(s) = f["data"]["s"].as_u64() {
                if !r.direct.insert(s) {
                    r.duplicates += 1;
                }
            }
            let wants_ack = ["ack", "receipt", "stored", "redelivered"]
                .iter()
                .any(|k| f[*k] == true);
            wants_ack.then(|| json!({"type": "ack", "id": f["id"]}))
        }
        "channel" => {
            let stream = f["channel"].as_str().unwrap_or_default().to_owned();
            if let (Some(epoch), Some(offset)) = (f["epoch"].as_str(), f["offset"].as_u64()) {
                let last = positions
                    .entry(stream)
                    .or_default()
                    .entry(epoch.to_owned())
                    .or_insert(0);
                *last = (*last).max(offset);
            }
            if let Some(s) = f["data"]["s"].as_u64() {
                if !r.channel.insert(s) {
                    r.duplicates += 1;
                }
            }
            None
        }
        "resume" => {
            if f["recovered"] == false {
                // As the JavaScript client does: a stream that cannot be told whole starts
                // afresh.
                r.unrecovered += 1;
                positions.remove(f["channel"].as_str().unwrap_or_default());
            }
            None
        }
        _ => None,
    }
}

/// `n3` -> 2.
fn node_index(node: &str) -> usize {
    node.strip_prefix('n')
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(0, |n| n.saturating_sub(1))
}

/// The next full-jitter backoff, counting one more failure.
fn backoff(failures: &mut u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1 << (*failures).min(16))
        .min(BACKOFF_MAX);
    *failures += 1;
    cap.mul_f64(rand::rng().random::<f64>())
}

/// A refused handshake's `Retry-After` (whole seconds).
fn retry_after(res: &tungstenite::http::Response<Option<Vec<u8>>>) -> Option<Duration> {
    let status = res.status().as_u16();
    if status != 503 && status != 429 {
        return None;
    }
    res.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(60)))
}

/// `url` with the channel positions as `resume=`, when there are any.
fn with_resume(url: &str, positions: &Positions) -> String {
    if positions.is_empty() {
        return url.to_owned();
    }
    let req = json!({ "channels": positions }).to_string();
    let mut encoded = String::with_capacity(req.len() * 3);
    for b in req.bytes() {
        if b.is_ascii_alphanumeric() {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{url}&resume={encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_map_to_indexes_and_backoff_stays_capped() {
        assert_eq!(node_index("n1"), 0);
        assert_eq!(node_index("n3"), 2);
        let mut failures = 40;
        for _ in 0..100 {
            assert!(backoff(&mut failures) <= BACKOFF_MAX);
        }
        let mut positions = Positions::new();
        assert_eq!(
            with_resume("ws://a/ws?token=t", &positions),
            "ws://a/ws?token=t"
        );
        positions
            .entry("room".into())
            .or_default()
            .insert("n1.1".into(), 7);
        let url = with_resume("ws://a/ws?token=t", &positions);
        assert!(
            url.starts_with("ws://a/ws?token=t&resume=%7B%22channels%22"),
            "{url}"
        );
    }
}
