//! [`Probe`]: a client that behaves like the JavaScript client (`clients/js`) while a test
//! breaks things around it, and records what it saw, for the loss probes and failover cases
//! (`docs/design.md` sections 15 and 16).
//!
//! It asks the helper for a fresh URL for every connection (so it follows live ownership),
//! reconnects at once on 1012 and after a short pause otherwise (a refused connect: after its
//! `Retry-After`, or a backoff from 100 ms to 1 s), acks every message the node
//! asks it to, drops duplicate ids (counting them), keeps the last offset per epoch of each
//! channel and of the broadcast stream and sends them as `resume=` when it reconnects, and
//! names each connection (`link=`) and the one the next replaces (`replaces=`). A test
//! can reset its link (RST, no close handshake), freeze it (stop reading, as a phone whose
//! radio stalls), or stop it; then it reads [`Seen`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use impush_core::ClientId;
use impush_helper::ImHelper;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::{
    tungstenite::{self, Message},
    MaybeTlsStream,
};

use super::clients::{url_addr, Ws};

/// What a test asks a probe to do.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Drop the link with a reset, then reconnect after a pause.
    Reset {
        /// How long to stay away.
        pause: Duration,
    },
    /// Stop reading (and answering pings) for this long; the node may give up on the link.
    Freeze(Duration),
    /// Close and stop for good.
    Stop,
}

/// What a probe saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Point-to-point messages, first copy of each id, in arrival order: (id, from, data).
    pub messages: Vec<(String, String, Value)>,
    /// For each of `messages`: the connection (counting from 1) that brought it, and how
    /// (`live`, `stored`, `redelivered`), for a failing case to show.
    pub how: Vec<(usize, &'static str)>,
    /// Channel and broadcast publications, first copy of each id, in arrival order, per stream
    /// (`"*"` for broadcasts): (id, data).
    pub streams: BTreeMap<String, Vec<(String, Value)>>,
    /// Frames that repeated an id already seen (the client drops them).
    pub duplicates: usize,
    /// Every `resume` answer.
    pub resumes: Vec<Value>,
    /// Connections opened.
    pub connections: usize,
    /// The node of each connection, with the milliseconds since the probe started.
    pub nodes: Vec<(String, u128)>,
    /// Close codes the node sent.
    pub closes: Vec<u16>,
    /// Connect attempts refused (the node down, draining, or over its connect rate).
    pub refusals: usize,
    /// For each of `refusals`: the node asked, with the milliseconds since the probe started.
    pub refused: Vec<(String, u128)>,
    /// What it is doing now (waiting, connecting to a node, connected), for a failing case
    /// to show.
    pub doing: String,
    /// Longest time from a connection's end to the next one's opening (the first connect,
    /// which has no connection before it, does not count; a [`Control::Reset`] pause does).
    pub longest_gap: Duration,
    /// Where the longest gap's time went, for a failing case to show.
    pub longest_gap_was: Option<GapTimes>,
}

/// The moments of one gap between connections, in milliseconds since the probe started.
#[derive(Debug, Clone, Default)]
pub struct GapTimes {
    /// The connection before it ended (its close frame read, or its socket failed).
    pub ended: u128,
    /// The connect that succeeded began: its URL was in hand and dialling started.
    pub dialled: u128,
    /// TCP connected (the handshake's HTTP request could be sent).
    pub tcp_open: u128,
    /// The WebSocket handshake ended (101 read).
    pub opened: u128,
    /// Connects refused in between.
    pub refusals: usize,
}

/// A running probe: send it [`Control`]s, read what it [`Seen`].
#[derive(Debug, Clone)]
pub struct Probe {
    /// The client it connects as.
    pub client: ClientId,
    /// When it started: the times in [`Seen`] count from here.
    pub started: Instant,
    control: mpsc::UnboundedSender<Control>,
    seen: Arc<Mutex<Seen>>,
}

impl Probe {
    /// Starts a probe for `client`, connecting through `helper`'s URLs.
    pub fn start(helper: ImHelper, client: ClientId) -> Probe {
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let started = Instant::now();
        tokio::spawn(run(helper, client.clone(), rx, seen.clone(), started));
        Probe {
            client,
            started,
            control: tx,
            seen,
        }
    }

    /// Asks the probe to do `c`.
    pub fn control(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// A copy of what it saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("probe state").clone()
    }

    /// When something it saw `ms` after its start (a time in [`Seen`]) happened.
    pub fn at(&self, ms: u128) -> Instant {
        self.started + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// For a failure message: the probe's connections and refused connects (node, time after
    /// `since`) and its close codes.
    pub fn timeline_since(&self, since: Instant) -> String {
        let seen = self.seen();
        let after = |list: &[(String, u128)]| -> Vec<(String, Duration)> {
            list.iter()
                .map(|(n, ms)| (n.clone(), self.at(*ms).saturating_duration_since(since)))
                .collect()
        };
        format!(
            "connections {:?}, closes {:?}, refused connects {:?}",
            after(&seen.nodes),
            seen.closes,
            after(&seen.refused)
        )
    }
}

#[derive(Debug, Default)]
struct State {
    /// Ids seen, bounded like the JS client's.
    ids: HashSet<String>,
    /// stream -> epoch -> last offset seen.
    positions: HashMap<String, HashMap<String, u64>>,
}

enum Ended {
    Closed,
    Stop,
}

async fn run(
    helper: ImHelper,
    client: ClientId,
    mut control: mpsc::UnboundedReceiver<Control>,
    seen: Arc<Mutex<Seen>>,
    started: Instant,
) {
    let mut state = State::default();
    let mut down_since = Instant::now();
    let mut ended_at = 0u128;
    let mut pause = Duration::ZERO;
    // Connect attempts that failed in a row, for the backoff.
    let mut failures = 0u32;
    // Each connection is named (`link=`); the next names the last one it replaces, which the
    // node closes first if it still holds it (a reset it has not read, a frozen path).
    let (mut attempts, mut last_link) = (0u64, None::<String>);
    loop {
        if !pause.is_zero() {
            record(&seen, |s| s.doing = format!("waiting {pause:?}"));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                c = control.recv() => if matches!(c, Some(Control::Stop) | None) { return },
            }
        }
        attempts += 1;
        let link = format!("l{attempts}");
        let (url, node) = match helper.prepare_connect(&client, Value::Null) {
            Ok(info) => {
                let replaces = last_link
                    .as_ref()
                    .map(|l| format!("&replaces={l}"))
                    .unwrap_or_default();
                let url = format!("{}&link={link}{replaces}", info.url);
                (with_resume(&url, &state), info.node.to_string())
            }
            Err(_) => {
                pause = Duration::from_millis(100);
                continue;
            }
        };
        record(&seen, |s| s.doing = format!("connecting to {node}"));
        let dialled = started.elapsed().as_millis();
        let (ws, tcp_open) = match tokio::time::timeout(Duration::from_secs(5), async {
            let addr = url_addr(&url).ok_or(tungstenite::Error::Url(
                tungstenite::error::UrlError::NoHostName,
            ))?;
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tcp_open = started.elapsed().as_millis();
            let plain = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
            let (ws, _) = tokio_tungstenite::client_async(url.as_str(), plain).await?;
            Ok::<_, tungstenite::Error>((ws, tcp_open))
        })
        .await
        {
            Ok(Ok(opened)) => opened,
            failed => {
                record(&seen, |s| {
                    s.refusals += 1;
                    s.refused.push((node, started.elapsed().as_millis()));
                });
                pause = match failed {
                    Ok(Err(tungstenite::Error::Http(res))) => retry_after(&res),
                    _ => None,
                }
                .unwrap_or_else(|| backoff(failures));
                failures += 1;
                continue;
            }
        };
        let refused_before = failures as usize;
        failures = 0;
        last_link = Some(link);
        let gap = down_since.elapsed();
        record(&seen, |s| {
            if s.connections > 0 && gap > s.longest_gap {
                s.longest_gap = gap;
                s.longest_gap_was = Some(GapTimes {
                    ended: ended_at,
                    dialled,
                    tcp_open,
                    opened: started.elapsed().as_millis(),
                    refusals: refused_before,
                });
            }
            s.connections += 1;
            s.doing = format!("connected to {node}");
            s.nodes.push((node, started.elapsed().as_millis()));
        });
        let (ended, next_pause) = session(ws, &mut state, &mut control, &seen).await;
        down_since = Instant::now();
        ended_at = started.elapsed().as_millis();
        pause = next_pause;
        if let Ended::Stop = ended {
            return;
        }
    }
}

/// One connection until it closes; returns how it ended and how long to wait before the next.
async fn session(
    mut ws: Ws,
    state: &mut State,
    control: &mut mpsc::UnboundedReceiver<Control>,
    seen: &Arc<Mutex<Seen>>,
) -> (Ended, Duration) {
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Reset { pause }) => {
                    reset(ws);
                    return (Ended::Closed, pause);
                }
                Some(Control::Freeze(d)) => tokio::time::sleep(d).await,
                Some(Control::Stop) | None => {
                    let _ = ws.close(None).await;
                    return (Ended::Stop, Duration::ZERO);
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(f) = serde_json::from_str::<Value>(&t) else { continue };
                    if let Some(ack) = on_frame(&f, state, seen) {
                        let _ = ws.send(Message::Text(ack.to_string().into())).await;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    record(seen, |s| s.closes.push(code));
                    let pause = if code == 1012 { Duration::ZERO } else { Duration::from_millis(200) };
                    return (Ended::Closed, pause);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (Ended::Closed, Duration::from_millis(200)),
            },
        }
    }
}

/// The pause after `failures` failed attempts in a row (then one more): from 100 ms doubling
/// up to 1 s, half of it random, so a crowd of probes whose node just died does not dial in
/// step (the JavaScript client backs off the same way, from 1 s).
fn backoff(failures: u32) -> Duration {
    let step = Duration::from_millis(100 << failures.min(3)).min(Duration::from_secs(1));
    step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
}

/// When a node refused the connect (503 over its `limits.connect_rate`, 429 over
/// `connect_rate_per_ip`) with `Retry-After`: that long, plus as long again at most at random,
/// as the JavaScript client waits.
fn retry_after(res: &tungstenite::http::Response<Option<Vec<u8>>>) -> Option<Duration> {
    if !matches!(res.status().as_u16(), 429 | 503) {
        return None;
    }
    let secs: u64 = res
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let wait = Duration::from_secs(secs.min(30));
    Some(wait + wait.mul_f64(rand::random::<f64>()))
}

/// Records a frame; returns the ack to send, if any.
fn on_frame(f: &Value, state: &mut State, seen: &Arc<Mutex<Seen>>) -> Option<Value> {
    let kind = f["type"].as_str().unwrap_or_default();
    let id = f["id"].as_str().unwrap_or_default().to_owned();
    match kind {
        "message" => {
            let wants_ack = ["ack", "receipt", "stored", "redelivered"]
                .iter()
                .any(|k| f[*k] == true);
            if state.ids.insert(id.clone()) {
                let from = f["from"].as_str().unwrap_or_default().to_owned();
                let how = if f["stored"] == true {
                    "stored"
                } else if f["redelivered"] == true {
                    "redelivered"
                } else {
                    "live"
                };
                record(seen, |s| {
                    s.messages.push((id.clone(), from, f["data"].clone()));
                    let conn = s.connections;
                    s.how.push((conn, how));
                });
            } else {
                record(seen, |s| s.duplicates += 1);
            }
            wants_ack.then(|| json!({"type": "ack", "id": id}))
        }
        "channel" | "broadcast" => {
            let stream = f["channel"].as_str().unwrap_or("*").to_owned();
            if let (Some(epoch), Some(offset)) = (f["epoch"].as_str(), f["offset"].as_u64()) {
                let last = state
                    .positions
                    .entry(stream.clone())
                    .or_default()
                    .entry(epoch.to_owned())
                    .or_insert(0);
                *last = (*last).max(offset);
            }
            if state.ids.insert(id.clone()) {
                record(seen, |s| {
                    s.streams
                        .entry(stream)
                        .or_default()
                        .push((id, f["data"].clone()))
                });
            } else {
                record(seen, |s| s.duplicates += 1);
            }
            None
        }
        "resume" => {
            if f["recovered"] == false {
                // As the JS client does: a stream that cannot be told whole starts afresh.
                let stream = f["channel"].as_str().unwrap_or("*");
                state.positions.remove(stream);
            }
            record(seen, |s| s.resumes.push(f.clone()));
            None
        }
        _ => None,
    }
}

/// `url` with the streams' positions as `resume=`, when there are any.
fn with_resume(url: &str, state: &State) -> String {
    if state.positions.is_empty() {
        return url.to_owned();
    }
    let mut channels = serde_json::Map::new();
    let mut broadcast = None;
    for (stream, epochs) in &state.positions {
        let v = json!(epochs);
        if stream == "*" {
            broadcast = Some(v);
        } else {
            channels.insert(stream.clone(), v);
        }
    }
    let mut req = json!({ "channels": channels });
    if let Some(b) = broadcast {
        req["broadcast"] = b;
    }
    let encoded: String = req
        .to_string()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{url}&resume={encoded}")
}

/// Drops `ws` with a reset: no close frame, no FIN.
fn reset(ws: Ws) {
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        // Deprecated because a non-zero linger blocks the dropping thread; zero never does.
        #[allow(deprecated)]
        let _ = tcp.set_linger(Some(Duration::ZERO));
    }
    drop(ws);
}

fn record(seen: &Arc<Mutex<Seen>>, f: impl FnOnce(&mut Seen)) {
    if let Ok(mut s) = seen.lock() {
        f(&mut s);
    }
}
