//! The node's HTTP surface: `/ws` (token check, then upgrade), the HTTP API under `/api/v1`,
//! `/healthz`, `/readyz`, `/metrics`, and JSON errors for everything else.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{rejection::QueryRejection, ConnectInfo, Query, State},
    http::{
        header::{CONTENT_TYPE, ORIGIN, RETRY_AFTER},
        HeaderMap, HeaderValue, StatusCode,
    },
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use impush_core::{envelope::now_ms, TokenError};
use serde::Deserialize;

use crate::{
    api,
    app::{error, App},
    metrics::Metrics,
    node::{Accepted, ResumeRequest},
    session::{Links, Socket, UpgradeRejection, WsUpgrade},
    throttle::Refused,
};

/// The node's routes; `admin` holds the admin console's (`/admin`) and the node stats route.
pub(crate) fn router(app: Arc<App>, admin: Router<Arc<App>>) -> Router {
    let max_body = app.node.limits.max_body_bytes;
    Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::router(app.clone(), max_body))
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.node.metrics.render(&app.node.id);
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
    /// What a reconnecting client saw of its streams (`docs/design.md` section 15).
    resume: Option<String>,
    /// The client's name for this connection, and for the one it replaces (`session::Links`).
    link: Option<String>,
    replaces: Option<String>,
}

/// Whether a WebSocket upgrade may come from the `Origin` in `headers`: any when
/// `limits.allowed_origins` is empty; otherwise one of them (compared without case and without a
/// trailing `/`), or none at all (a client that is not a browser sends no `Origin`).
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// A refusal with `Retry-After`.
fn retry_later(
    status: StatusCode,
    code: &str,
    message: &str,
    after: std::time::Duration,
) -> Response {
    let mut r = error(status, code, message);
    r.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(crate::throttle::retry_after_secs(after)),
    );
    r
}

async fn ws(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WsUpgrade, UpgradeRejection>,
) -> Response {
    // Connect time runs from here to the connection attached (`impush_connect_seconds`).
    let requested = std::time::Instant::now();
    // A draining node takes nobody new: the client asks for a fresh URL, which names another
    // node (`docs/design.md` section 16).
    if app.node.state() == impush_core::NodeState::Draining {
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; ask for a new connect URL",
            std::time::Duration::ZERO,
        );
    }
    // Connect storms are refused at the door, before any token work.
    match app.throttle.admit(peer.ip(), std::time::Instant::now()) {
        Ok(()) => {}
        Err(Refused::Node(after)) => {
            app.node.metrics.connect_throttled(false);
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "connect_rate",
                "too many connects to this node; retry later",
                after,
            );
        }
        Err(Refused::Address(after)) => {
            app.node.metrics.connect_throttled(true);
            return retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                "connect_rate_per_ip",
                "too many connects from this address; retry later",
                after,
            );
        }
    }
    // The Origin is checked first (a page from another site cannot even spend a token), then
    // the token, so a refused client never gets a socket.
    if !origin_allowed(&app.node.limits.allowed_origins, &headers) {
        Metrics::bump(&app.node.metrics.origin_rejections);
        return error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this Origin is not in limits.allowed_origins",
        );
    }
    let (token, resume, links) = match query {
        Ok(Query(q)) => (
            q.token,
            q.resume,
            Links::parse(q.link.as_deref(), q.replaces.as_deref()),
        ),
        Err(_) => (None, None, Ok(Links::default())),
    };
    let resume = resume.map(|r| ResumeRequest::parse(&r));
    // Refused before the token is spent: the client can fix its URL and use it.
    let links = match links {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_link", e.to_string()),
    };
    let claims = match token {
        None => Err(TokenError::Missing),
        Some(t) => app.nonces.verify(&app.signer, &t, now_ms()),
    };
    let claims = match claims {
        Ok(c) => c,
        Err(e) => {
            Metrics::bump(&app.node.metrics.token_rejections);
            tracing::debug!(reason = e.code(), "refused connect token");
            return error(StatusCode::UNAUTHORIZED, e.code(), e.to_string());
        }
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if app.shutdown.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "node is shutting down",
        );
    }
    let (response, on_upgrade) = upgrade.accept();
    let node = app.node.clone();
    let shutdown = app.shutdown.clone();
    // Before the 101 goes out: a client that gives up on this socket at once can name it in
    // its next connect, and the node finds it (`node::supersede`).
    let arrival = node.arrive(Accepted {
        client: claims.client,
        metadata: claims.metadata,
        resume,
        links,
        requested,
    });
    // The session takes the raw socket after the 101 and speaks WebSocket itself
    // (`session`): no library buffers per connection.
    tokio::spawn(app.sessions.track_future(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let Some(socket) = Socket::from_upgraded(upgraded) else {
            return;
        };
        node.serve_connection(socket, arrival, shutdown).await;
    }));
    response
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.node.state() == impush_core::NodeState::Draining {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining its clients to other nodes",
        );
    }
    if app.shutdown.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "node is shutting down",
        );
    }
    if let Err(e) = app.node.broker.ping().await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            e.to_string(),
        );
    }
    if let Err(e) = app.node.presence.ping().await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "presence_unavailable",
            e.to_string(),
        );
    }
    if let Some(inbox) = &app.node.offline {
        if let Err(e) = inbox.store.ping().await {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "offline_unavailable",
                e.to_string(),
            );
        }
    }
    Json(serde_json::json!({ "status": "ready" })).into_response()
}
