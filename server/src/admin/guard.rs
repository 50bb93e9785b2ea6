//! Who may use the console's routes: a live session for every route, and for actions (every
//! `POST` but the login) a same-origin request carrying the session's CSRF token.
//!
//! The cookie is `SameSite=Strict`, but that alone does not stop a page on a sibling host of
//! the same site, so actions also need the token in `X-CSRF-Token` (a header no other page can
//! set without a CORS preflight, which the node never allows), and a browser's `Origin` and
//! `Sec-Fetch-Site`, when sent, must say the request came from the console's own origin.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{Request, State},
    http::{
        header::{COOKIE, HOST, ORIGIN},
        HeaderMap, StatusCode,
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use super::{session::Session, Admin, COOKIE_NAME};
use crate::api::ApiError;

/// The header actions carry the session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The session cookie's value, if the request has one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
}

fn unauthorized() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "log in to the admin console first (POST /admin/api/login)",
    )
    .into_response()
}

fn forbidden(code: &'static str, message: &'static str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, code, message).into_response()
}

/// Whether a browser says the request came from another origin: a `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` whose host is not the one the request was sent to (`Host`, or a
/// proxy's `X-Forwarded-Host`). Clients that are not browsers send neither and pass.
pub(crate) fn cross_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return true;
        }
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return false;
    };
    let Some(origin_host) = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'))
    else {
        // `Origin: null` (a sandboxed frame, a redirect across origins) or garbage.
        return true;
    };
    let host = |name| headers.get(name).and_then(|h| h.to_str().ok());
    let target = host("x-forwarded-host")
        .and_then(|h| h.split(',').next())
        .or_else(|| host(HOST.as_str()));
    !target.is_some_and(|t| t.trim().eq_ignore_ascii_case(origin_host))
}

/// The session a request carries, if it is live.
fn live_session(admin: &Admin, headers: &HeaderMap) -> Option<Session> {
    let id = session_cookie(headers)?;
    admin.sessions.get(id, Instant::now())
}

/// Middleware of reading routes: a live session (401 otherwise), handed to the handler as a
/// request extension.
pub(crate) async fn require_session(
    State(admin): State<Arc<Admin>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(session) = live_session(&admin, req.headers()) else {
        return unauthorized();
    };
    req.extensions_mut().insert(session);
    next.run(req).await
}

/// Middleware of actions: same origin (403 `cross_origin`), a live session (401), and its CSRF
/// token in `X-CSRF-Token` (403 `csrf`), checked in that order.
pub(crate) async fn require_action(
    State(admin): State<Arc<Admin>>,
    mut req: Request,
    next: Next,
) -> Response {
    if cross_origin(req.headers()) {
        return forbidden(
            "cross_origin",
            "admin actions are taken only from the console's own origin",
        );
    }
    let Some(session) = live_session(&admin, req.headers()) else {
        return unauthorized();
    };
    let token = req
        .headers()
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(token.ct_eq(session.csrf.as_bytes())) {
        return forbidden(
            "csrf",
            "missing or wrong X-CSRF-Token (the console page sends its session's token)",
        );
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[
            ("cookie", "a=1; impush_admin_x=2"),
            ("cookie", "b=3; impush_admin=abc ; c=4"),
        ]);
        assert_eq!(session_cookie(&h), Some("abc"));
        assert_eq!(session_cookie(&headers(&[("cookie", "a=1")])), None);
    }

    #[test]
    fn origins_are_compared_with_the_host() {
        let same = [
            vec![],
            vec![("host", "127.0.0.1:6001")],
            vec![
                ("host", "127.0.0.1:6001"),
                ("origin", "http://127.0.0.1:6001"),
            ],
            vec![
                ("host", "Admin.Example.com"),
                ("origin", "https://admin.example.com"),
            ],
            vec![
                ("host", "10.0.0.5:6001"),
                ("x-forwarded-host", "admin.example.com"),
                ("origin", "https://admin.example.com"),
                ("sec-fetch-site", "same-origin"),
            ],
        ];
        for h in same {
            assert!(!cross_origin(&headers(&h)), "{h:?}");
        }
        let cross = [
            vec![
                ("host", "127.0.0.1:6001"),
                ("origin", "http://evil.example"),
            ],
            vec![
                ("host", "127.0.0.1:6001"),
                ("origin", "http://127.0.0.1:6002"),
            ],
            vec![("host", "127.0.0.1:6001"), ("origin", "null")],
            vec![("origin", "http://127.0.0.1:6001")],
            vec![("host", "a.example.com"), ("sec-fetch-site", "same-site")],
            vec![("sec-fetch-site", "cross-site")],
        ];
        for h in cross {
            assert!(cross_origin(&headers(&h)), "{h:?}");
        }
    }
}
