//! [`ApiError`]: every HTTP API failure as `{"error": code, "message": ...}` with its status,
//! plus `"at"` naming the part of the body that is wrong where a body has many parts (a batch's
//! `messages[3].to`).
//!
//! Core errors map by condition, not by backend: bad ids are 400, requests that parse but make
//! no sense are 422, unreachable backends are 503. Details of server-side failures are logged,
//! not sent.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use impush_core::Error;

/// An HTTP API error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    at: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            at: None,
        }
    }

    /// Names the part of the body that is wrong (`messages[3].to`).
    pub(crate) fn at(mut self, at: impl Into<String>) -> Self {
        self.at = Some(at.into());
        self
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// `413`: a list in the body is longer than the `[limits]` key the message names.
    pub(crate) fn too_many(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidId { .. } => Self::bad_request("invalid_id", e.to_string()),
            Error::InvalidArgument(_) | Error::TooLarge { .. } => {
                Self::unprocessable(e.to_string())
            }
            Error::Unavailable { .. } | Error::Closed(_) => {
                tracing::warn!(error = &e as &dyn std::error::Error, "backend unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the broker or presence store is unavailable; retry later",
                )
            }
            _ => {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "HTTP API request failed"
                );
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let (Some(at), Some(obj)) = (self.at, body.as_object_mut()) {
            obj.insert("at".into(), at.into());
        }
        (self.status, Json(body)).into_response()
    }
}
