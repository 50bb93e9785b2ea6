//! The HTTP API of a test cluster's nodes: statuses, authenticated calls, numbered sends, and
//! collecting the receipts of what was sent.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use impush_core::ClientId;
use serde_json::{json, Value};

use super::{
    clients::{next_json_within, Ws},
    harness::{Cluster, API_KEY},
};

/// The kit's one HTTP client. Building a client loads the machine's root certificates (a
/// feature another crate of the workspace turns on), which in a debug build takes tens of
/// milliseconds of CPU: built per request, 50 sends a second kept both of a test's runtime
/// workers busy, and the probes on them stopped reading and connecting. No idle pool: each
/// request opens its own connection, so one kept across a node's restart is never reused.
fn client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client")
        })
        .clone()
}

/// Status of a GET (`body` None) or an authenticated POST; never hangs past 10 s.
pub async fn status(url: String, body: Option<Value>) -> u16 {
    let c = client();
    let req = match body {
        Some(b) => c.post(url).bearer_auth(API_KEY).json(&b),
        None => c.get(url),
    };
    req.send()
        .await
        .expect("an answer, not a hang")
        .status()
        .as_u16()
}

/// An authenticated POST: the status and the JSON body, or `(0, Null)` when the node is down.
pub async fn post(url: String, body: Value) -> (u16, Value) {
    match client()
        .post(url)
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// An authenticated GET: the status and the JSON body.
pub async fn get_json(url: String) -> (u16, Value) {
    let r = client()
        .get(url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("an answer, not a hang");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Sends `n` messages from `from` to `to` through node `via`'s HTTP API, with receipts; returns
/// the ids the API accepted.
///
/// # Panics
/// When a send is not accepted.
pub async fn send_n(
    cluster: &Cluster,
    via: usize,
    from: &ClientId,
    to: &ClientId,
    n: usize,
) -> Vec<String> {
    let url = cluster.http(via) + "/api/v1/messages";
    let mut ids = Vec::new();
    for i in 0..n {
        let (s, body) = post(
            url.clone(),
            json!({"from": from.as_str(), "to": [to.as_str()], "data": i, "receipt": true}),
        )
        .await;
        assert_eq!(s, 200, "send {i}: {body}");
        ids.push(body["id"].as_str().expect("an id").to_owned());
    }
    ids
}

/// Waits (30 s at most) until the sender's socket got a receipt for each of `ids` (any status
/// but `acked`); returns the statuses seen.
pub async fn receipts_for(ws: &mut Ws, ids: &[String]) -> Vec<String> {
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut got = HashSet::new();
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "receipts for {} of {} messages",
            got.len(),
            want.len()
        );
        if let Some(f) = next_json_within(ws, Duration::from_millis(500)).await {
            let id = f["id"].as_str().unwrap_or_default();
            if f["type"] == "receipt" && f["status"] != "acked" && want.contains(id) {
                got.insert(id.to_owned());
                statuses.push(f["status"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    statuses
}

/// Numbered sends (`data` 1, 2, ...) from one client to another through one node's HTTP API.
#[derive(Debug)]
pub struct Sender {
    url: String,
    from: ClientId,
    to: ClientId,
    n: u64,
}

impl Sender {
    /// Sends from `from` to `to` through node `via` of `cluster`.
    pub fn new(cluster: &Cluster, via: usize, from: &ClientId, to: &ClientId) -> Self {
        Self {
            url: cluster.http(via) + "/api/v1/messages",
            from: from.clone(),
            to: to.clone(),
            n: 0,
        }
    }

    /// Sends the next number and records it in `accepted` when the API took it (200). Returns
    /// the status (0: no answer) and how long the call took.
    pub async fn send(&mut self, accepted: &mut Vec<u64>) -> (u16, Duration) {
        self.n += 1;
        let body = json!({"from": self.from.as_str(), "to": [self.to.as_str()], "data": self.n});
        let t = Instant::now();
        let status = post(self.url.clone(), body).await.0;
        if status == 200 {
            accepted.push(self.n);
        }
        (status, t.elapsed())
    }
}

/// An authenticated POST with an optional `Idempotency-Key`: the status and the JSON body, or
/// `(0, Null)` when the node did not answer within 10 s.
pub async fn post_keyed(url: String, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = client().post(url).bearer_auth(API_KEY).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// One send of a [`Flow`]: its number (the message's `data`), key, answer and how long the
/// answer took.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The number sent as `data`.
    pub n: u64,
    /// Its `Idempotency-Key`.
    pub key: String,
    /// The HTTP status (0: no answer).
    pub status: u16,
    /// The message id the API answered with (200 only).
    pub id: Option<String>,
    /// How long the call took.
    pub took: Duration,
}

/// Numbered sends from `from` to a list of receivers through one node's HTTP API, one after
/// another with a pause between them, each with an `Idempotency-Key` of its own, until
/// stopped; every answer is recorded.
#[derive(Debug)]
pub struct Flow {
    sent: std::sync::Arc<std::sync::Mutex<Vec<Sent>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Flow {
    /// Starts sending through `url` (a node's `/api/v1/messages`) every `every`; keys are
    /// `{tag}-{n}`.
    pub fn start(
        url: String,
        from: &ClientId,
        to: &[ClientId],
        tag: &str,
        every: Duration,
    ) -> Flow {
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (from, to, tag) = (from.clone(), to.to_vec(), tag.to_owned());
        let task = tokio::spawn({
            let (sent, stop) = (sent.clone(), stop.clone());
            async move {
                for n in 0u64.. {
                    if stop.is_cancelled() {
                        return;
                    }
                    let key = format!("{tag}-{n}");
                    let body = Flow::body(&from, &to, n);
                    let t = Instant::now();
                    let (status, answer) = post_keyed(url.clone(), Some(&key), &body).await;
                    let id = answer["id"].as_str().map(str::to_owned);
                    sent.lock().expect("flow").push(Sent {
                        n,
                        key,
                        status,
                        id,
                        took: t.elapsed(),
                    });
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                }
            }
        });
        Flow { sent, stop, task }
    }

    /// What was sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("flow").clone()
    }

    /// Stops after the send in flight and returns every send.
    pub async fn stop(self) -> Vec<Sent> {
        self.stop.cancel();
        let _ = self.task.await;
        let sent = self.sent.lock().expect("flow").clone();
        sent
    }

    /// The body each send of this flow had, for a retry of send `n`.
    pub fn body(from: &ClientId, to: &[ClientId], n: u64) -> Value {
        let to: Vec<&str> = to.iter().map(ClientId::as_str).collect();
        json!({"from": from.as_str(), "to": to, "data": n})
    }
}
