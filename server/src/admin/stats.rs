//! Node stats for the console's cluster view: `GET /api/v1/node/stats` (this node, API key)
//! and `GET /admin/api/cluster` (every node: this one's stats read locally, the others' fetched
//! from their stats route over HTTP with this node's API key, a node that does not answer in
//! [`REMOTE_TIMEOUT`] marked so).
//!
//! Messages per second are the point-to-point, channel and broadcast frames this node wrote to
//! its sockets, averaged over the last [`WINDOW`], from counters sampled once a second by a task
//! that ends with the node.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, Json};
use futures_util::future::join_all;
use impush_core::{NodeId, NodeState, NodeStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::Admin;
use crate::metrics::{Metrics, OutKind};

/// How long the cluster view waits for another node's stats.
pub(crate) const REMOTE_TIMEOUT: Duration = Duration::from_secs(2);
/// What messages per second are averaged over.
pub(crate) const WINDOW: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Messages written to this node's sockets so far.
fn messages_written(m: &Metrics) -> u64 {
    [OutKind::Message, OutKind::Channel, OutKind::Broadcast]
        .iter()
        .map(|k| m.out[*k as usize].load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// The recent samples of [`messages_written`].
#[derive(Debug, Default)]
pub(crate) struct Rate {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Rate {
    fn record(&self, at: Instant, total: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back((at, total));
        while s
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > WINDOW)
        {
            s.pop_front();
        }
    }

    /// Messages per second over the samples held (`None` until there are two).
    fn per_second(&self) -> Option<f64> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let ((t0, n0), (t1, n1)) = (s.front()?, s.back()?);
        let secs = t1.saturating_duration_since(*t0).as_secs_f64();
        (secs > 0.0).then(|| {
            // One decimal is all a person reads.
            ((n1.saturating_sub(*n0)) as f64 / secs * 10.0).round() / 10.0
        })
    }

    /// Samples `metrics` once a second until `stop`.
    pub(crate) fn run(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => self.record(Instant::now(), messages_written(&metrics)),
                }
            }
        });
    }
}

/// One node's stats, as `GET /api/v1/node/stats` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeStats {
    node: NodeId,
    /// The impush version the node runs.
    version: String,
    /// `live` or `draining`, as the node says of itself.
    state: NodeState,
    /// Open WebSocket connections.
    connections: u64,
    /// Distinct clients with a connection on the node.
    clients: u64,
    /// Messages written to its sockets per second, over the last few seconds (`null` in the
    /// node's first seconds).
    messages_per_second: Option<f64>,
    /// Messages written to its sockets since it started.
    messages_total: u64,
    /// Seconds since it started.
    uptime_s: u64,
}

/// This node's stats.
pub(crate) fn local(admin: &Admin) -> NodeStats {
    let node = &admin.app.node;
    let m = &node.metrics;
    NodeStats {
        node: node.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state: node.state(),
        connections: u64::try_from(m.connections.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0),
        clients: node.local_client_count() as u64,
        messages_per_second: admin.rate.per_second(),
        messages_total: messages_written(m),
        uptime_s: admin.started.elapsed().as_secs(),
    }
}

/// `GET /api/v1/node/stats`.
pub(crate) async fn node_stats(State(admin): State<Arc<Admin>>) -> Json<NodeStats> {
    Json(local(&admin))
}

/// Where a node with WebSocket URL `ws` serves its stats: `ws` becomes `http`, `wss` `https`,
/// and any path prefix is kept.
pub(crate) fn stats_url(ws: &str) -> Option<reqwest::Url> {
    let mut u = reqwest::Url::parse(ws).ok()?;
    let scheme = match u.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return None,
    };
    u.set_scheme(scheme).ok()?;
    let path = format!("{}/api/v1/node/stats", u.path().trim_end_matches('/'));
    u.set_path(&path);
    u.set_query(None);
    u.set_fragment(None);
    Some(u)
}

/// Another node's stats, or why there are none (a short sentence for the console).
async fn remote(admin: &Admin, id: &NodeId, ws: &str) -> Result<NodeStats, String> {
    let url = stats_url(ws).ok_or_else(|| format!("its URL {ws:?} is not ws:// or wss://"))?;
    let http = admin
        .http
        .as_ref()
        .ok_or_else(|| "not in this node's cluster.nodes".to_owned())?;
    let resp = http
        .get(url)
        .bearer_auth(admin.app.api_key.expose())
        .send()
        .await
        // reqwest's errors name the URL; say only what kind of failure it was.
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {}s", REMOTE_TIMEOUT.as_secs())
            } else {
                "unreachable".to_owned()
            }
        })?;
    match resp.status().as_u16() {
        200 => {}
        401 => {
            return Err(
                "refused this node's API key (give every node the same auth.api_key)".into(),
            )
        }
        s => return Err(format!("answered HTTP {s}")),
    }
    let stats: NodeStats = resp
        .json()
        .await
        .map_err(|_| "answered something other than node stats".to_owned())?;
    if &stats.node != id {
        return Err(format!(
            "its URL is served by node {} (check cluster.nodes)",
            stats.node
        ));
    }
    Ok(stats)
}

/// `GET /admin/api/cluster`: every configured node with its status in this node's live view
/// and its stats.
pub(crate) async fn cluster(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let app = &admin.app;
    let cluster = &app.node.cluster;
    let nodes = join_all(cluster.statuses().into_iter().map(|(id, status)| {
        let admin = &admin;
        async move {
            let url = cluster.node(&id).map(|n| n.url.clone()).unwrap_or_default();
            let stats = if id == app.node.id {
                Ok(Some(local(admin)))
            } else if status == NodeStatus::Dead {
                Ok(None)
            } else {
                remote(admin, &id, &url).await.map(Some)
            };
            let mut v = json!({ "id": id, "url": url, "status": status, "stats": null });
            match stats {
                Ok(s) => v["stats"] = json!(s),
                Err(e) => v["error"] = json!(e),
            }
            v
        }
    }))
    .await;
    Json(json!({ "node": app.node.id, "nodes": nodes }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stats_urls_follow_the_websocket_url() {
        for (ws, want) in [
            (
                "ws://127.0.0.1:6001",
                "http://127.0.0.1:6001/api/v1/node/stats",
            ),
            (
                "wss://im.example.com",
                "https://im.example.com/api/v1/node/stats",
            ),
            (
                "wss://im.example.com/n2/",
                "https://im.example.com/n2/api/v1/node/stats",
            ),
        ] {
            assert_eq!(stats_url(ws).unwrap().as_str(), want);
        }
        assert!(stats_url("tcp://x:1").is_none());
        assert!(stats_url("not a url").is_none());
    }

    #[test]
    fn the_rate_is_averaged_over_the_window() {
        let r = Rate::default();
        let t = Instant::now();
        assert_eq!(r.per_second(), None);
        r.record(t, 100);
        assert_eq!(r.per_second(), None, "one sample says nothing yet");
        for i in 1..=10u64 {
            r.record(t + Duration::from_secs(i), 100 + 30 * i);
        }
        // Only the last five seconds count: 150 messages over 5 s.
        assert_eq!(r.per_second(), Some(30.0));
        r.record(t + Duration::from_secs(11), 100 + 30 * 10);
        assert_eq!(r.per_second(), Some(24.0));
    }
}
