//! WebSocket clients of a test cluster: client ids owned by a chosen node, connecting (also
//! through a [`FaultProxy`](crate::proxy::FaultProxy)), reading frames, and the events a helper
//! streams.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use impush_core::{ClientId, Event};
use impush_helper::{EventStream, ImHelper};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::harness::WAIT;

/// A client's WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `s` as a client id.
///
/// # Panics
/// When `s` is not a valid id.
pub fn id(s: &str) -> ClientId {
    s.parse().expect("a valid client id")
}

/// A client id (`{tag}{k}`) the partitioner assigns to node `n{i+1}`.
pub fn client_on(h: &ImHelper, i: usize, tag: &str) -> ClientId {
    clients_on(h, i, tag, 1).remove(0)
}

/// `n` distinct client ids owned by node `n{i+1}`.
pub fn clients_on(h: &ImHelper, i: usize, tag: &str, n: usize) -> Vec<ClientId> {
    let want = format!("n{}", i + 1);
    (0..)
        .map(|k| id(&format!("{tag}{k}")))
        .filter(|c| h.cluster().owner(c).id.as_str() == want)
        .take(n)
        .collect()
}

/// Connects `c` to its node with a fresh connect URL.
pub async fn connect(h: &ImHelper, c: &ClientId) -> Ws {
    let url = h
        .prepare_connect(c, Value::Null)
        .expect("a connect URL")
        .url;
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("connect {c}: {e}"))
        .0
}

/// Connects `c` through `via` (a proxy in front of its node): the URL's path and token are its
/// node's, the address is the proxy's (a token is bound to the node id, not the address).
pub async fn connect_via(h: &ImHelper, c: &ClientId, via: SocketAddr) -> Ws {
    let url = h
        .prepare_connect(c, Value::Null)
        .expect("a connect URL")
        .url;
    let url = with_addr(&url, via);
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("connect {c} via {via}: {e}"))
        .0
}

/// Connects, retrying while the owning node is not listening yet (it is restarting).
pub async fn connect_when_up(h: &ImHelper, c: &ClientId) -> Ws {
    let deadline = Instant::now() + WAIT;
    // Its home is restarting: until the live view has it back, `prepare_connect` names a
    // fallback node, which would send the client home (1012) a moment later.
    while h.cluster().owner(c) != h.cluster().home(c) {
        assert!(Instant::now() < deadline, "{c}'s home never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let url = h
            .prepare_connect(c, Value::Null)
            .expect("a connect URL")
            .url;
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => return ws,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect {c}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The `host:port` of a URL (`scheme://[user@]host:port[/...]`, or a bare `host:port` as
/// Kafka takes), resolved.
pub fn url_addr(url: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let (start, end) = authority(url);
    let host_port = &url[start..end];
    host_port.to_socket_addrs().ok()?.next()
}

/// `url` with its `host:port` replaced by `addr`.
pub fn with_addr(url: &str, addr: SocketAddr) -> String {
    let (start, end) = authority(url);
    format!("{}{addr}{}", &url[..start], &url[end..])
}

/// Where the `host:port` of `url` is: after `scheme://` and any `user@`, before the path.
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (start, end)
}

/// The next text frame as JSON, within [`WAIT`].
///
/// # Panics
/// On a timeout, a close or an error.
pub async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, WAIT)
        .await
        .expect("a frame within the timeout")
}

/// The next text frame as JSON, or `None` if nothing came within `d` (control frames skipped).
///
/// # Panics
/// On a close or an error.
pub async fn next_json_within(ws: &mut Ws, d: Duration) -> Option<Value> {
    tokio::time::timeout(d, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).expect("a JSON frame")
                }
                Some(Ok(Message::Close(f))) => panic!("connection closed: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    })
    .await
    .ok()
}

/// Reads until the server's close frame and returns its code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close in time")
}

/// The message ids a socket receives until it closes or stays quiet for a minute.
pub async fn read_ids(mut ws: Ws) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        if let Some(v) = message(&msg) {
            ids.push(v["id"].as_str().expect("a message id").to_owned());
        }
    }
    ids
}

/// Reads message frames until the socket closes, recording the id and the numeric `data` of
/// each in `seen`.
pub async fn read_data(mut ws: Ws, seen: Arc<Mutex<Vec<(String, u64)>>>) {
    while let Some(Ok(msg)) = ws.next().await {
        if let Some(v) = message(&msg) {
            let id = v["id"].as_str().expect("a message id").to_owned();
            let data = v["data"].as_u64().expect("numbered data");
            seen.lock().expect("not poisoned").push((id, data));
        }
    }
}

/// A `message` frame as JSON.
fn message(msg: &Message) -> Option<Value> {
    let Message::Text(t) = msg else { return None };
    let v: Value = serde_json::from_str(t).expect("a JSON frame");
    (v["type"] == "message").then_some(v)
}

/// Waits up to `within` for an event matching `pred`, skipping others.
pub async fn wait_event_within(
    events: &mut EventStream,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(within, async {
        loop {
            let ev = events
                .next()
                .await
                .expect("event stream open")
                .expect("event");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching event within {within:?}"))
}

/// [`wait_event_within`] [`WAIT`].
pub async fn wait_event(events: &mut EventStream, pred: impl Fn(&Event) -> bool) -> Event {
    wait_event_within(events, WAIT, pred).await
}

/// Every event that arrives within `d`.
pub async fn events_during(events: &mut EventStream, d: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, events.next()).await {
        out.push(item.expect("event"));
    }
    out
}

/// Every event of a helper's stream, recorded in the background with the time it arrived,
/// for cases that look at thousands of them after the fact. Stops reading when dropped.
#[derive(Debug)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventLog {
    /// Starts recording `events`.
    pub fn start(mut events: EventStream) -> EventLog {
        let (log, errors) = (Arc::default(), Arc::default());
        let task = tokio::spawn({
            let log: Arc<Mutex<Vec<(Instant, Event)>>> = Arc::clone(&log);
            let errors: Arc<Mutex<Vec<String>>> = Arc::clone(&errors);
            async move {
                while let Some(item) = events.next().await {
                    match item {
                        Ok(ev) => log.lock().expect("event log").push((Instant::now(), ev)),
                        Err(e) => errors.lock().expect("event log").push(e.to_string()),
                    }
                }
            }
        });
        EventLog {
            events: log,
            errors,
            task,
        }
    }

    /// A copy of the events so far, in arrival order.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.events.lock().expect("event log").clone()
    }

    /// The stream's errors so far (a lagged subscription says how much it dropped).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("event log").clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until queries say every one of `clients` is online.
pub async fn wait_online(h: &ImHelper, clients: &[ClientId]) {
    eventually("online in queries", || async {
        h.is_online_many(clients)
            .await
            .is_ok_and(|v| v.value.iter().all(|online| *online))
    })
    .await;
}

/// Polls `cond` every 100 ms until it holds, failing after `within`: for conditions that cost
/// a query over many clients, or a look at many probes.
pub async fn poll<F, Fut>(what: &str, within: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        poll_until(within, cond).await,
        "{what}: not within {within:?}"
    );
}

/// Polls `cond` every 100 ms until it holds (`true`) or `within` passed (`false`): for a wait
/// whose failure the checks after it explain better.
pub async fn poll_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Polls `cond` until it holds, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    crate::support::eventually_within(what, WAIT, cond).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_is_found_in_every_url_form() {
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
        for (url, want) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:9"),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:guest@127.0.0.1:9/%2f",
            ),
            ("127.0.0.1:9092", "127.0.0.1:9"),
            (
                "ws://127.0.0.1:6001/ws?token=v1.x@y",
                "ws://127.0.0.1:9/ws?token=v1.x@y",
            ),
        ] {
            assert_eq!(with_addr(url, a), want);
            assert_eq!(url_addr(want), Some(a), "{want}");
        }
    }
}
