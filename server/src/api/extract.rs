//! Request extractors with the API's error shape: [`ApiJson`] for bodies, [`IdPath`] for ids in
//! paths, and the bearer-key check.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request, State},
    http::{header::AUTHORIZATION, request::Parts, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::App;

/// A JSON body. Unlike `axum::Json` it does not insist on a content type (so `curl -d` works),
/// reports malformed JSON and invalid fields as 400, an oversized body as 413 and a body that
/// did not arrive within `limits.request_body_timeout` as 408.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
    }
}

/// The whole request body, with [`ApiJson`]'s errors for one that is too large (413), too slow
/// (408) or unreadable (400).
pub(crate) async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is over limits.max_body_bytes",
            )
        } else if crate::edge::is_body_timeout(&rej) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "request body not received within limits.request_body_timeout",
            )
        } else {
            ApiError::bad_request("invalid_body", rej.body_text())
        }
    })
}

/// One path segment parsed as an id (`ClientId`, `ChannelName`); invalid ids are 400.
#[derive(Debug)]
pub(crate) struct IdPath<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for IdPath<T>
where
    T: std::str::FromStr<Err = impush_core::Error>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rej| ApiError::bad_request("invalid_path", rej.body_text()))?;
        raw.parse().map(IdPath).map_err(ApiError::from)
    }
}

/// Two path segments: a channel name and a client id.
#[derive(Debug)]
pub(crate) struct ChannelMemberPath(
    pub(crate) impush_core::ChannelName,
    pub(crate) impush_core::ClientId,
);

impl<S: Send + Sync> FromRequestParts<S> for ChannelMemberPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((channel, client)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rej| ApiError::bad_request("invalid_path", rej.body_text()))?;
        Ok(Self(channel.parse()?, client.parse()?))
    }
}

/// Middleware: requires `Authorization: Bearer <api key>`, compared in constant time.
pub(crate) async fn require_api_key(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|k| bool::from(k.as_bytes().ct_eq(app.api_key.expose().as_bytes())));
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (Authorization: Bearer <auth.api_key>)",
        )
        .into_response();
    }
    next.run(req).await
}
