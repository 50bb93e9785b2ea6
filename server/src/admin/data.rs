//! The console's data routes under `/admin/api` (a session needed): online clients, one client
//! (connections, node, channels, inbox) and kicking it, channels and one channel's members, and
//! the live event feed. Each reads what the HTTP API's routes read, through the node's embedded
//! helper; lists are cut at `limit` so a big cluster cannot make one answer huge.

use std::sync::Arc;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::Uri,
    response::IntoResponse,
    Extension, Json,
};
use impush_core::{ChannelName, ClientId, Error, NodeId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{session::Session, Admin};
use crate::{
    api::{ApiError, IdPath},
    metrics::Metrics,
};

/// Most entries of one list answer.
pub(crate) const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Most entries to list (1 to 1000, default 100).
    limit: Option<usize>,
}

fn limit(query: Result<Query<ListQuery>, QueryRejection>) -> Result<usize, ApiError> {
    let Query(q) = query.map_err(|rej| ApiError::bad_request("invalid_query", rej.body_text()))?;
    match q.limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        _ => Err(ApiError::unprocessable(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

/// `body` plus `"partial": [nodes]` when some nodes did not answer (cluster presence).
fn answered(mut body: Value, missing: &[&[NodeId]]) -> Json<Value> {
    let mut nodes: Vec<&NodeId> = missing.iter().flat_map(|m| m.iter()).collect();
    nodes.sort();
    nodes.dedup();
    if !nodes.is_empty() {
        body["partial"] = json!(nodes);
    }
    Json(body)
}

/// `GET /admin/api/session`: the session's CSRF token (the page reads it after a reload: the
/// cookie itself is out of the page's reach) and how long the session has left.
pub(crate) async fn session(
    State(admin): State<Arc<Admin>>,
    Extension(session): Extension<Session>,
) -> Json<Value> {
    let left = session
        .expires
        .saturating_duration_since(std::time::Instant::now());
    Json(json!({
        "node": admin.app.node.id,
        "csrf_token": session.csrf,
        "expires_in_s": left.as_secs(),
    }))
}

/// `GET /admin/api/clients`: online clients, sorted, at most `limit`, and how many there are.
pub(crate) async fn clients(
    State(admin): State<Arc<Admin>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(query)?;
    let online = admin.app.helper.online_clients().await?;
    let total = online.value.len();
    let mut clients = online.value;
    clients.sort();
    clients.truncate(limit);
    Ok(answered(
        json!({ "clients": clients, "total": total }),
        &[&online.missing],
    ))
}

/// The client's offline inbox as the console shows it: off, kept by another node (a per-node
/// store on its owner), or its counts.
async fn inbox(admin: &Admin, client: &ClientId, owner: &NodeId) -> Result<Value, ApiError> {
    let app = &admin.app;
    let Some(inbox) = &app.node.offline else {
        return Ok(json!({ "enabled": false }));
    };
    if !inbox.store.is_shared() && owner != &app.node.id {
        return Ok(json!({ "enabled": true, "kept_by": owner }));
    }
    let s = inbox.store.stats(client).await?;
    Ok(json!({
        "enabled": true,
        "count": s.count,
        "bytes": s.bytes,
        "oldest_ts": s.oldest_ts,
    }))
}

/// `GET /admin/api/clients/{id}`: connections, owner node, channels and inbox of one client.
pub(crate) async fn client(
    State(admin): State<Arc<Admin>>,
    IdPath(client): IdPath<ClientId>,
) -> Result<Json<Value>, ApiError> {
    let app = &admin.app;
    let connections = app.helper.connections(&client).await?;
    let mut channels = app.helper.client_channels(&client).await?;
    channels.value.sort();
    let owner = app.node.cluster.owner(&client).id.clone();
    let status = app.node.cluster.status(&owner);
    let inbox = inbox(&admin, &client, &owner).await?;
    Ok(answered(
        json!({
            "client_id": client,
            "online": connections.value > 0,
            "connections": connections.value,
            "node": owner,
            "node_status": status,
            "channels": channels.value,
            "inbox": inbox,
        }),
        &[&connections.missing, &channels.missing],
    ))
}

/// `POST /admin/api/clients/{id}/kick`: closes every connection of the client (4001).
pub(crate) async fn kick(
    State(admin): State<Arc<Admin>>,
    IdPath(client): IdPath<ClientId>,
) -> Result<Json<Value>, ApiError> {
    let app = &admin.app;
    let kicked = app.helper.force_offline(&client).await.inspect_err(|e| {
        if !matches!(e, Error::InvalidId { .. } | Error::InvalidArgument(_)) {
            Metrics::bump(&app.node.metrics.broker_publish_errors);
        }
    })?;
    tracing::info!(client = %client, kicked, "kicked from the admin console");
    Ok(Json(json!({ "kicked": kicked })))
}

/// `GET /admin/api/channels`: channels with member and online counts, by name, at most `limit`.
pub(crate) async fn channels(
    State(admin): State<Arc<Admin>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(query)?;
    let all = admin.app.helper.channels().await?;
    let total = all.value.len();
    let mut channels = all.value;
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    channels.truncate(limit);
    Ok(answered(
        json!({ "channels": channels, "total": total }),
        &[&all.missing],
    ))
}

/// `GET /admin/api/channels/{name}`: a channel's members (at most 1000, by id) and whether
/// each is online.
pub(crate) async fn channel(
    State(admin): State<Arc<Admin>>,
    IdPath(channel): IdPath<ChannelName>,
) -> Result<Json<Value>, ApiError> {
    let helper = &admin.app.helper;
    let members = helper.channel_members(&channel).await?;
    let online = helper.channel_online(&channel).await?;
    let total = members.value.len();
    let mut shown = members.value;
    shown.sort();
    shown.truncate(MAX_LIMIT);
    let flags = helper.is_online_many(&shown).await?;
    let list: Vec<Value> = shown
        .iter()
        .zip(flags.value.iter().chain(std::iter::repeat(&false)))
        .map(|(c, on)| json!({ "client_id": c, "online": on }))
        .collect();
    Ok(answered(
        json!({ "name": channel, "members": list, "total_members": total, "online": online.value }),
        &[&members.missing, &online.missing, &flags.missing],
    ))
}

/// `GET /admin/api/events`: the cluster's online/offline events, the stream of
/// `GET /api/v1/events` without a group (every event to every console).
pub(crate) async fn events(State(admin): State<Arc<Admin>>) -> axum::response::Response {
    // The API's handler, given an empty query: no `?group=` however the console was called.
    let query = Query::try_from_uri(&Uri::from_static("/"));
    match crate::api::events(State(admin.app.clone()), query).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}
