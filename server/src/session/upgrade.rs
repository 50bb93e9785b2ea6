//! [`WsUpgrade`]: the WebSocket handshake of `/ws` (RFC 6455 section 4.2), so the session gets
//! the raw socket after the `101` (see `socket`) instead of a WebSocket library's stream.
//!
//! It checks what every WebSocket client sends (`GET`, `Connection: upgrade`, `Upgrade:
//! websocket`, `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key`) and answers a request that
//! lacks one with the status and text a client library expects: 405, 400, or 426 when the
//! connection cannot be upgraded. No extension or subprotocol is negotiated.

use axum::{
    extract::FromRequestParts,
    http::{
        header::{
            CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
        },
        request::Parts,
        HeaderMap, HeaderValue, Method, StatusCode,
    },
    response::{IntoResponse, Response},
};
use hyper::upgrade::OnUpgrade;

/// A valid upgrade request, waiting to be accepted.
#[derive(Debug)]
pub(crate) struct WsUpgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request to `/ws` is not a WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeRejection {
    MethodNotGet,
    NoConnectionUpgrade,
    NoUpgradeWebsocket,
    WrongVersion,
    NoKey,
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::MethodNotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ),
            Self::NoConnectionUpgrade => (
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ),
            Self::NoUpgradeWebsocket => (
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ),
            Self::WrongVersion => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ),
            Self::NoKey => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ),
            Self::NotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ),
        };
        (status, text).into_response()
    }
}

/// Whether header `name` holds `token` in its comma-separated list, ignoring case.
fn has_token(headers: &HeaderMap, name: axum::http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl WsUpgrade {
    /// Checks the handshake headers of `parts` and takes its upgrade.
    pub(crate) fn from_parts(parts: &mut Parts) -> Result<Self, UpgradeRejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRejection::MethodNotGet);
        }
        let h = &parts.headers;
        if !has_token(h, CONNECTION, "upgrade") {
            return Err(UpgradeRejection::NoConnectionUpgrade);
        }
        if !has_token(h, UPGRADE, "websocket") {
            return Err(UpgradeRejection::NoUpgradeWebsocket);
        }
        if h.get(SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(UpgradeRejection::WrongVersion);
        }
        let key = h.get(SEC_WEBSOCKET_KEY).ok_or(UpgradeRejection::NoKey)?;
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept).map_err(|_| UpgradeRejection::NoKey)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Self { accept, on_upgrade })
    }

    /// The `101` answer, and the upgrade that completes once it was sent.
    pub(crate) fn accept(self) -> (Response, OnUpgrade) {
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(CONNECTION, HeaderValue::from_static("upgrade"))
            .header(UPGRADE, HeaderValue::from_static("websocket"))
            .header(SEC_WEBSOCKET_ACCEPT, self.accept)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        (response, self.on_upgrade)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::from_parts(parts)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(edit: impl FnOnce(&mut HeaderMap)) -> Parts {
        let mut req = Request::get("/ws")
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        edit(req.headers_mut());
        req.into_parts().0
    }

    #[test]
    fn the_handshake_is_checked_before_anything_else() {
        // No upgrade state outside a real connection: everything else was accepted.
        assert_eq!(
            WsUpgrade::from_parts(&mut parts(|_| {})).unwrap_err(),
            UpgradeRejection::NotUpgradable
        );
        type Edit = fn(&mut HeaderMap);
        let cases: [(Edit, UpgradeRejection); 4] = [
            (
                |h| drop(h.remove(CONNECTION)),
                UpgradeRejection::NoConnectionUpgrade,
            ),
            (
                |h| drop(h.insert(UPGRADE, HeaderValue::from_static("h2c"))),
                UpgradeRejection::NoUpgradeWebsocket,
            ),
            (
                |h| drop(h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"))),
                UpgradeRejection::WrongVersion,
            ),
            (
                |h| drop(h.remove(SEC_WEBSOCKET_KEY)),
                UpgradeRejection::NoKey,
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(WsUpgrade::from_parts(&mut parts(edit)).unwrap_err(), want);
        }
        let mut post = parts(|_| {});
        post.method = Method::POST;
        assert_eq!(
            WsUpgrade::from_parts(&mut post).unwrap_err(),
            UpgradeRejection::MethodNotGet
        );
        // RFC 6455's example key.
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
