//! The cluster's nodes as this node sees them, and draining this node
//! (`docs/design.md` section 16).

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, Json};
use serde_json::{json, Value};

use crate::app::App;

/// `GET /api/v1/nodes`: every configured node with its URL and what the live view says of it
/// (`live`, `draining` or `dead`).
pub(super) async fn nodes(State(app): State<Arc<App>>) -> Json<Value> {
    let cluster = &app.node.cluster;
    let nodes: Vec<Value> = cluster
        .statuses()
        .into_iter()
        .map(|(id, status)| {
            let url = cluster.node(&id).map(|n| n.url.clone()).unwrap_or_default();
            json!({ "id": id, "url": url, "status": status })
        })
        .collect();
    Json(json!({ "node": app.node.id, "nodes": nodes }))
}

/// `POST /api/v1/node/drain`: starts draining the node that answers (as SIGTERM does): it
/// moves its clients to their next node over `cluster.drain_period`, then stops. `202` with
/// the drain period; calling it again is harmless.
pub(super) async fn drain(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    app.drain_requested.cancel();
    let period = app.node.cluster_config().drain_period;
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "node": app.node.id,
            "draining": true,
            "drain_period_ms": u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
        })),
    )
}
