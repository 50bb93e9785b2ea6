//! [`App`]: what the node's HTTP handlers share, and the JSON error body every route answers
//! with. Both the `/ws` and health routes (`http`) and the API (`api`) depend on it, never on
//! each other's internals.

mod event_groups;

use std::{sync::Arc, time::Duration};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use impush_core::{
    config::Secret,
    token::{NonceCache, TokenSigner},
};
use impush_helper::ImHelper;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::node::Node;

pub(crate) use event_groups::EventGroups;

/// What request handlers share.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) node: Arc<Node>,
    pub(crate) signer: TokenSigner,
    pub(crate) nonces: NonceCache,
    /// Cancelled first at shutdown: no new connections, sessions close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once sessions are gone: ends long-lived HTTP responses (SSE), so their
    /// readers still see the offline events of this node's own connections.
    pub(crate) streams: CancellationToken,
    pub(crate) sessions: TaskTracker,
    pub(crate) helper: ImHelper,
    pub(crate) api_key: Secret,
    pub(crate) sse_keep_alive: Duration,
    /// The SSE `?group=` names this node serves (`limits.max_event_groups`).
    pub(crate) event_groups: Arc<EventGroups>,
    /// Cancelled when a drain was asked for over the API (`POST /api/v1/node/drain`); the
    /// binary then drains and stops, as on SIGTERM.
    pub(crate) drain_requested: CancellationToken,
    /// `limits.connect_rate` and `limits.connect_rate_per_ip`, applied at `/ws`.
    pub(crate) throttle: crate::throttle::ConnectThrottle,
}

/// A JSON error body `{"error": code, "message": ...}` with its status.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": code, "message": message.into() });
    (status, Json(body)).into_response()
}
