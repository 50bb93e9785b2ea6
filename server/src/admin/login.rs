//! `POST /admin/api/login` and `POST /admin/api/logout`, and the session cookie.
//!
//! The login compares the secret in constant time, after taking a token from the login limit
//! ([`LoginLimit`](super::limit::LoginLimit)), and answers with the session cookie
//! (`HttpOnly`: out of any script's reach; `SameSite=Strict`: never sent by another site's
//! page; `Path=/admin`; `Secure` over HTTPS) and the CSRF token the page sends with actions.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    extract::{ConnectInfo, State},
    http::{
        header::{ORIGIN, RETRY_AFTER, SET_COOKIE},
        HeaderMap, HeaderValue, StatusCode,
    },
    response::{IntoResponse, Response},
    Json,
};
use impush_core::config::Secret;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{guard, Admin, COOKIE_NAME};
use crate::api::{ApiError, ApiJson};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    secret: String,
}

/// Whether the browser reached the node over HTTPS, as far as it can tell: a TLS-terminating
/// proxy's `X-Forwarded-Proto`, or the page's own `Origin`.
fn over_https(headers: &HeaderMap) -> bool {
    let starts = |name, prefix: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with(prefix))
    };
    starts("x-forwarded-proto", "https") || starts(ORIGIN.as_str(), "https://")
}

/// Whether `given` is `secret`, in time that depends on neither: both are hashed first, so
/// not even a length differs, then the digests are compared in constant time.
fn secret_matches(given: &str, secret: &Secret) -> bool {
    let digest = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
    bool::from(digest(given).ct_eq(&digest(secret.expose())))
}

/// The `Set-Cookie` value of session `id`, lasting `max_age_s` (0 ends it).
pub(crate) fn cookie(id: &str, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE_NAME}={id}; Path=/admin; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{secure}"
    )
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

pub(crate) async fn login(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Response {
    // A login forced on the browser by another site would sign it in to a session the
    // attacker does not know, but there is no reason to take one.
    if guard::cross_origin(&headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "log in from the console's own page",
        )
        .into_response();
    }
    let Some(secret) = &admin.secret else {
        // Not routed when the console is off; answer as if it were not there.
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response();
    };
    let now = Instant::now();
    if let Err(wait) = admin.login_limit.attempt(peer.ip(), now) {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many wrong secrets; wait before trying again",
        )
        .into_response();
        r.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from(crate::throttle::retry_after_secs(wait)),
        );
        return r;
    }
    let right = secret_matches(&body.secret, secret);
    if !right {
        tracing::warn!(peer = %peer.ip(), "admin console login with a wrong secret");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong_secret",
            "wrong admin secret (admin.secret, printed at start when generated)",
        )
        .into_response();
    }
    admin.login_limit.succeeded(peer.ip(), now);
    let session = admin.sessions.create(now);
    let ttl = admin.sessions.ttl();
    tracing::info!(peer = %peer.ip(), "admin console login");
    let secure = admin.secure_cookie || over_https(&headers);
    let body = Json(json!({
        "node": admin.app.node.id,
        "csrf_token": session.csrf,
        "expires_in_s": ttl.as_secs(),
    }));
    // A ttl under a second still gets a cookie that lasts until the session ends.
    let max_age = ttl.as_secs_f64().ceil() as u64;
    with_cookie(body.into_response(), &cookie(&session.id, max_age, secure))
}

/// Ends the session and tells the browser to drop the cookie.
pub(crate) async fn logout(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(id) = guard::session_cookie(&headers) {
        admin.sessions.remove(id);
    }
    let secure = admin.secure_cookie || over_https(&headers);
    with_cookie(
        Json(json!({ "logged_out": true })).into_response(),
        &cookie("", 0, secure),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_has_every_attribute() {
        let c = cookie("abc", 60, false);
        assert_eq!(
            c,
            "impush_admin=abc; Path=/admin; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        assert!(cookie("abc", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn only_the_exact_secret_matches() {
        let secret = Secret::new("correct horse battery staple");
        assert!(secret_matches("correct horse battery staple", &secret));
        for wrong in [
            "",
            "correct horse battery stapl",
            "correct horse battery staplE",
            "correct horse battery staple ",
            "Correct horse battery staple",
        ] {
            assert!(!secret_matches(wrong, &secret), "{wrong:?}");
        }
    }

    #[test]
    fn https_is_read_from_the_proxy_or_the_origin() {
        let mut h = HeaderMap::new();
        assert!(!over_https(&h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(over_https(&h));
        let mut h = HeaderMap::new();
        h.insert(
            ORIGIN,
            HeaderValue::from_static("https://admin.example.com"),
        );
        assert!(over_https(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://admin.example.com"));
        assert!(!over_https(&h));
    }
}
