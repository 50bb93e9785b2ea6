//! The client side: a worker process holding WebSocket connections.
//!
//! The parent sends one JSON [`Plan`] line on stdin; the worker connects every URL (binding each
//! socket to one of several loopback source addresses, so more than one ephemeral port range is
//! available), prints a `connected` line, then records every frame that carries a send
//! timestamp. On `report` it prints its [`Stats`]; on `quit` (or end of stdin) it exits.
//! Workers keep each process under the 20,000 open files limit and run on a single thread.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpSocket,
};
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};

use crate::hist::LatHist;

/// What a worker is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) urls: Vec<String>,
    /// Spread sockets over 127.0.0.1 ..= 127.0.0.{source_ips}.
    pub(crate) source_ips: u8,
    /// Connection attempts in flight.
    pub(crate) concurrency: usize,
    /// Keep the max latency per message sequence number (fan-out: "last member" latency).
    pub(crate) track_seq: bool,
    /// Ack every message frame that asks for it (`"ack": true`), as the JavaScript client's
    /// `autoAck` does; without acks a node stops writing after `limits.max_unacked`.
    #[serde(default)]
    pub(crate) ack: bool,
}

/// What a worker reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Stats {
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) connect_secs: f64,
    pub(crate) received: u64,
    pub(crate) latency: LatHist,
    /// (unix ms / 100, frames received in that 100 ms).
    pub(crate) timeline: Vec<(u64, u64)>,
    /// (sequence number, latency of the last receiver in this worker, ns).
    pub(crate) seq_max: Vec<(u64, u64)>,
    pub(crate) closed: u64,
    /// Warm-up frames (`{"warmup": true}`) received; they carry no time and are not in `received`.
    #[serde(default)]
    pub(crate) warm: u64,
    /// Acks sent (with `Plan::ack`).
    #[serde(default)]
    pub(crate) acked: u64,
}

#[derive(Debug, Default)]
struct Shared {
    received: u64,
    latency: LatHist,
    timeline: HashMap<u64, u64>,
    seq_max: HashMap<u64, u64>,
    closed: u64,
    warm: u64,
    acked: u64,
}

#[derive(Deserialize)]
struct Frame {
    data: Option<Stamp>,
    /// A message frame's id, which its ack names.
    id: Option<String>,
    /// The node keeps the message pending until this client acks it.
    #[serde(default)]
    ack: bool,
}

#[derive(Deserialize)]
struct Stamp {
    t: Option<u64>,
    s: Option<u64>,
    #[serde(default)]
    warmup: bool,
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn client_config() -> WebSocketConfig {
    // Small buffers: a worker holds thousands of idle sockets.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn connect(
    url: &str,
    source: Ipv4Addr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("not a ws:// url: {url}"))?;
    let addr: SocketAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // Reset instead of FIN when the worker closes: otherwise every socket leaves its source
    // port in TIME_WAIT for a minute, and the next run of a 50,000-socket scenario finds the
    // loopback port ranges nearly used up (slow binds, handshakes cut off).
    socket.set_zero_linger().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(client_config()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Records a frame; returns the ack to send for it, if it asks for one.
fn record(shared: &Mutex<Shared>, text: &str, track_seq: bool) -> Option<String> {
    let now = now_ns();
    let frame = serde_json::from_str::<Frame>(text).ok()?;
    let ack = match (&frame.id, frame.ack) {
        (Some(id), true) => Some(json!({"type": "ack", "id": id}).to_string()),
        _ => None,
    };
    let Some(stamp) = frame.data else {
        return ack;
    };
    let Ok(mut s) = shared.lock() else {
        return ack;
    };
    if stamp.warmup {
        s.warm += 1;
        return ack;
    }
    let Some(t) = stamp.t else {
        return ack;
    };
    let lat = now.saturating_sub(t);
    s.received += 1;
    s.latency.record(lat);
    *s.timeline.entry(now / 100_000_000).or_default() += 1;
    if track_seq {
        if let Some(seq) = stamp.s {
            let e = s.seq_max.entry(seq).or_default();
            *e = (*e).max(lat);
        }
    }
    ack
}

/// Runs a worker on the current (single-threaded) runtime.
pub(crate) async fn run() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let Ok(Some(first)) = lines.next_line().await else {
        return;
    };
    let plan: Plan = match serde_json::from_str(&first) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("worker: bad plan: {e}");
            return;
        }
    };
    let shared = Arc::new(Mutex::new(Shared::default()));
    let started = Instant::now();
    let ips = plan.source_ips.max(1);
    let results: Vec<bool> = futures_util::stream::iter(plan.urls.iter().enumerate())
        .map(|(i, url)| {
            let shared = shared.clone();
            let track = plan.track_seq;
            let acks = plan.ack;
            async move {
                let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(ips)) as u8);
                match connect(url, source).await {
                    Ok(mut ws) => {
                        tokio::spawn(async move {
                            while let Some(msg) = ws.next().await {
                                match msg {
                                    Ok(Message::Text(t)) => {
                                        let ack = record(&shared, &t, track);
                                        if let (true, Some(ack)) = (acks, ack) {
                                            if ws.send(Message::text(ack)).await.is_err() {
                                                break;
                                            }
                                            if let Ok(mut s) = shared.lock() {
                                                s.acked += 1;
                                            }
                                        }
                                    }
                                    Ok(Message::Close(_)) | Err(_) => break,
                                    Ok(_) => {}
                                }
                            }
                            if let Ok(mut s) = shared.lock() {
                                s.closed += 1;
                            }
                        });
                        true
                    }
                    Err(e) => {
                        eprintln!("worker: connect failed: {e}");
                        false
                    }
                }
            }
        })
        .buffer_unordered(plan.concurrency.max(1))
        .collect()
        .await;
    let connected = results.iter().filter(|ok| **ok).count();
    let mut base = Stats {
        connected,
        failed: results.len() - connected,
        connect_secs: started.elapsed().as_secs_f64(),
        ..Stats::default()
    };
    println!("{}", serde_json::to_string(&base).unwrap_or_default());
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "report" => {
                if let Ok(s) = shared.lock() {
                    base.received = s.received;
                    base.latency = s.latency.clone();
                    base.closed = s.closed;
                    base.warm = s.warm;
                    base.acked = s.acked;
                    base.timeline = s.timeline.iter().map(|(k, v)| (*k, *v)).collect();
                    base.seq_max = s.seq_max.iter().map(|(k, v)| (*k, *v)).collect();
                }
                println!("{}", serde_json::to_string(&base).unwrap_or_default());
            }
            "quit" => break,
            _ => {}
        }
    }
}
