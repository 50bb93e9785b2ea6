//! The HTTP API (`docs/design.md` section 7): the whole ImHelper over JSON, so business backends in
//! any language can push through impush.
//!
//! Every route lives in one table ([`table`]): the router is built from it and
//! [`api_routes`] lists it, which is how a test keeps the OpenAPI document
//! (`/api/v1/openapi.json`) and the served routes telling the same story.

mod batch;
mod error;
mod extract;
mod idempotency;
mod nodes;
mod sse;

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header::CONTENT_TYPE, HeaderMap, Method},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, on, MethodFilter, MethodRouter},
    Json, Router,
};
use impush_core::{ChannelName, ClientId, Error, MessageId, NodeId};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

pub(crate) use error::ApiError;
use extract::ChannelMemberPath;
// Also the admin console's (`crate::admin`): the same bodies, ids, key check and event stream.
pub(crate) use extract::{require_api_key, ApiJson, IdPath};
pub(crate) use sse::events;

use crate::{app::App, metrics::Metrics};

/// The OpenAPI 3 description of this API.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

type Handler = MethodRouter<Arc<App>>;

fn route<H, T>(
    method: &'static str,
    path: &'static str,
    h: H,
) -> (&'static str, &'static str, Handler)
where
    H: axum::handler::Handler<T, Arc<App>>,
    T: 'static,
{
    let filter = Method::from_bytes(method.as_bytes())
        .ok()
        .and_then(|m| MethodFilter::try_from(m).ok())
        .unwrap_or(MethodFilter::GET);
    (method, path, on(filter, h))
}

/// Every authenticated API route: method, path, handler.
fn table() -> Vec<(&'static str, &'static str, Handler)> {
    vec![
        route("POST", "/api/v1/connect", connect),
        route("POST", "/api/v1/messages", send_message),
        route("POST", "/api/v1/messages/batch", batch::send_batch),
        route("GET", "/api/v1/clients/online", online_clients),
        route("GET", "/api/v1/clients/{id}", client_info),
        route("POST", "/api/v1/clients/{id}/kick", kick),
        route("GET", "/api/v1/clients/{id}/inbox", inbox_stats),
        route("DELETE", "/api/v1/clients/{id}/inbox", inbox_clear),
        route(
            "POST",
            "/api/v1/clients/{id}/channels/leave",
            leave_channels,
        ),
        route("GET", "/api/v1/channels", channels),
        route("GET", "/api/v1/channels/{name}", channel_info),
        route("POST", "/api/v1/channels/{name}/members", join_channel),
        route("DELETE", "/api/v1/channels/{name}/members", clear_channel),
        route(
            "DELETE",
            "/api/v1/channels/{name}/members/{id}",
            leave_channel,
        ),
        route(
            "POST",
            "/api/v1/channels/{name}/messages",
            send_channel_message,
        ),
        route("POST", "/api/v1/broadcast", broadcast),
        route("GET", "/api/v1/events", sse::events),
        route("GET", "/api/v1/nodes", nodes::nodes),
        route("POST", "/api/v1/node/drain", nodes::drain),
    ]
}

/// Routes served without the API key.
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// The routes the HTTP API serves, as `(method, path)` with `{param}` placeholders: the
/// authenticated ones first, then the public ones (`openapi.json`, health, readiness, metrics).
pub(crate) fn api_routes() -> Vec<(&'static str, &'static str)> {
    table()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .chain(PUBLIC.iter().copied())
        .collect()
}

/// The API router: authenticated routes from [`table`], plus `openapi.json`.
pub(crate) fn router(app: Arc<App>, max_body: usize) -> Router<Arc<App>> {
    let mut authed = Router::new();
    for (_, path, handler) in table() {
        authed = authed.route(path, handler);
    }
    authed
        .route_layer(middleware::from_fn_with_state(app, require_api_key))
        .route("/api/v1/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(max_body))
}

async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Counts failures of calls that publish to the broker (input errors are the caller's, not the
/// broker's).
fn publishing<T>(app: &App, r: Result<T, Error>) -> Result<T, ApiError> {
    if let Err(e) = &r {
        if !matches!(
            e,
            Error::InvalidId { .. } | Error::InvalidArgument(_) | Error::TooLarge { .. }
        ) {
            Metrics::bump(&app.node.metrics.broker_publish_errors);
        }
    }
    r.map_err(ApiError::from)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    client_id: ClientId,
    #[serde(default)]
    metadata: Value,
}

async fn connect(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<ConnectBody>,
) -> Result<Json<Value>, ApiError> {
    let info = app.helper.prepare_connect(&body.client_id, body.metadata)?;
    Ok(Json(json!({ "url": info.url, "node": info.node })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    from: ClientId,
    to: Vec<ClientId>,
    data: Box<RawValue>,
    #[serde(default)]
    receipt: bool,
    /// A caller-chosen id: the send is idempotent (as with an `Idempotency-Key`, which it
    /// takes precedence over).
    #[serde(default, deserialize_with = "idempotency::some_id")]
    id: Option<MessageId>,
}

async fn send_message(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<Json<Value>, ApiError> {
    let id = idempotency::message_id(&headers, body.id, |k| k.message_id())?;
    let limit = app.node.limits.max_receivers_per_message;
    if body.to.len() > limit {
        return Err(ApiError::too_many(
            "too_many_receivers",
            format!(
                "{} receivers is over limits.max_receivers_per_message ({limit})",
                body.to.len()
            ),
        ));
    }
    let r = app
        .helper
        .send_message_raw_with_id(id, &body.from, &body.to, body.data, body.receipt)
        .await;
    let report = publishing(&app, r)?;
    Ok(Json(json!({ "id": report.id, "nodes": report.nodes })))
}

/// A query's body, plus `"partial": [node ids]` when some nodes did not answer in time
/// (cluster presence); complete answers carry no `partial` key.
fn answered(mut body: Value, missing: &[&[NodeId]]) -> Json<Value> {
    let mut nodes: Vec<&NodeId> = missing.iter().flat_map(|m| m.iter()).collect();
    nodes.sort();
    nodes.dedup();
    if let (false, Some(obj)) = (nodes.is_empty(), body.as_object_mut()) {
        obj.insert("partial".into(), json!(nodes));
    }
    Json(body)
}

async fn online_clients(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let clients = app.helper.online_clients().await?;
    Ok(answered(
        json!({ "clients": clients.value }),
        &[&clients.missing],
    ))
}

async fn client_info(
    State(app): State<Arc<App>>,
    IdPath(client): IdPath<ClientId>,
) -> Result<Json<Value>, ApiError> {
    let connections = app.helper.connections(&client).await?;
    let channels = app.helper.client_channels(&client).await?;
    Ok(answered(
        json!({
            "client_id": client,
            "online": connections.value > 0,
            "connections": connections.value,
            "channels": channels.value,
        }),
        &[&connections.missing, &channels.missing],
    ))
}

async fn kick(
    State(app): State<Arc<App>>,
    IdPath(client): IdPath<ClientId>,
) -> Result<Json<Value>, ApiError> {
    let r = app.helper.force_offline(&client).await;
    let kicked = publishing(&app, r)?;
    Ok(Json(json!({ "kicked": kicked })))
}

/// The offline store to ask about `client`'s inbox (`None` when the inbox is disabled: nothing
/// waits): this node's, when it is shared or this node owns the client; else the error says
/// which node keeps it.
fn inbox_of<'a>(
    app: &'a App,
    client: &ClientId,
) -> Result<Option<&'a Arc<dyn impush_core::OfflineStore>>, ApiError> {
    let Some(inbox) = &app.node.offline else {
        return Ok(None);
    };
    let owner = app.node.cluster.owner(client);
    if !inbox.store.is_shared() && owner.id != app.node.id {
        return Err(ApiError::new(
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            "wrong_node",
            format!(
                "{client}'s inbox is kept by node {} (its owner); ask that node's API",
                owner.id
            ),
        ));
    }
    Ok(Some(&inbox.store))
}

async fn inbox_stats(
    State(app): State<Arc<App>>,
    IdPath(client): IdPath<ClientId>,
) -> Result<Json<Value>, ApiError> {
    let stats = match inbox_of(&app, &client)? {
        Some(store) => store.stats(&client).await?,
        None => impush_core::InboxStats::default(),
    };
    Ok(Json(json!({
        "client_id": client,
        "count": stats.count,
        "bytes": stats.bytes,
        "oldest_ts": stats.oldest_ts,
    })))
}

async fn inbox_clear(
    State(app): State<Arc<App>>,
    IdPath(client): IdPath<ClientId>,
) -> Result<Json<Value>, ApiError> {
    let cleared = match inbox_of(&app, &client)? {
        Some(store) => store.clear(&client).await?,
        None => 0,
    };
    Ok(Json(json!({ "client_id": client, "cleared": cleared })))
}

async fn channels(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let channels = app.helper.channels().await?;
    Ok(answered(
        json!({ "channels": channels.value }),
        &[&channels.missing],
    ))
}

async fn channel_info(
    State(app): State<Arc<App>>,
    IdPath(channel): IdPath<ChannelName>,
) -> Result<Json<Value>, ApiError> {
    let members = app.helper.channel_members(&channel).await?;
    let online = app.helper.channel_online(&channel).await?;
    Ok(answered(
        json!({ "name": channel, "members": members.value, "online": online.value }),
        &[&members.missing, &online.missing],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    client_ids: Vec<ClientId>,
}

async fn join_channel(
    State(app): State<Arc<App>>,
    IdPath(channel): IdPath<ChannelName>,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<Json<Value>, ApiError> {
    if body.client_ids.is_empty() {
        return Err(ApiError::unprocessable("client_ids must not be empty"));
    }
    let limit = app.node.limits.max_clients_per_join;
    if body.client_ids.len() > limit {
        return Err(ApiError::too_many(
            "too_many_clients",
            format!(
                "{} client ids is over limits.max_clients_per_join ({limit})",
                body.client_ids.len()
            ),
        ));
    }
    let r = app.helper.join_channel(&channel, &body.client_ids).await;
    publishing(&app, r)?;
    Ok(Json(
        json!({ "channel": channel, "joined": body.client_ids }),
    ))
}

async fn leave_channel(
    State(app): State<Arc<App>>,
    ChannelMemberPath(channel, client): ChannelMemberPath,
) -> Result<Json<Value>, ApiError> {
    let r = app
        .helper
        .leave_channel(&channel, std::slice::from_ref(&client))
        .await;
    publishing(&app, r)?;
    Ok(Json(json!({ "channel": channel, "left": client })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelMessageBody {
    from: ClientId,
    data: Box<RawValue>,
    #[serde(default, deserialize_with = "idempotency::some_id")]
    id: Option<MessageId>,
}

async fn send_channel_message(
    State(app): State<Arc<App>>,
    IdPath(channel): IdPath<ChannelName>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChannelMessageBody>,
) -> Result<Json<Value>, ApiError> {
    let id = idempotency::message_id(&headers, body.id, |k| k.channel_message_id(&channel))?;
    let r = app
        .helper
        .send_channel_message_raw_with_id(id, &body.from, &channel, body.data)
        .await;
    let id = publishing(&app, r)?;
    Ok(Json(json!({ "id": id })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    data: Box<RawValue>,
    #[serde(default, deserialize_with = "idempotency::some_id")]
    id: Option<MessageId>,
}

async fn broadcast(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<BroadcastBody>,
) -> Result<Json<Value>, ApiError> {
    let id = idempotency::message_id(&headers, body.id, |k| k.broadcast_id())?;
    let r = app.helper.broadcast_raw_with_id(id, body.data).await;
    let id = publishing(&app, r)?;
    Ok(Json(json!({ "id": id })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaveChannelsBody {
    channels: Vec<ChannelName>,
}

/// FreeIM's `LeaveChan(client, [channels])`: one client leaves several channels.
async fn leave_channels(
    State(app): State<Arc<App>>,
    IdPath(client): IdPath<ClientId>,
    ApiJson(body): ApiJson<LeaveChannelsBody>,
) -> Result<Json<Value>, ApiError> {
    if body.channels.is_empty() {
        return Err(ApiError::unprocessable("channels must not be empty"));
    }
    // The bound on one membership change's list, whichever way round it goes.
    let limit = app.node.limits.max_clients_per_join;
    if body.channels.len() > limit {
        return Err(ApiError::too_many(
            "too_many_channels",
            format!(
                "{} channels is over limits.max_clients_per_join ({limit})",
                body.channels.len()
            ),
        ));
    }
    let r = app.helper.leave_channels(&client, &body.channels).await;
    publishing(&app, r)?;
    Ok(Json(json!({ "client_id": client, "left": body.channels })))
}

/// FreeIM's `ClearChanClient`: every member leaves the channel.
async fn clear_channel(
    State(app): State<Arc<App>>,
    IdPath(channel): IdPath<ChannelName>,
) -> Result<Json<Value>, ApiError> {
    let r = app.helper.clear_channel(&channel).await;
    let removed = publishing(&app, r)?;
    Ok(Json(json!({ "channel": channel, "removed": removed })))
}
