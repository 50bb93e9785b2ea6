//! The console's page, script and stylesheet, compiled into the binary (`include_str!`): no
//! CDN, nothing for a user to build. Served with a Content-Security-Policy that lets the page
//! load only these files and talk only to its own node, and refuses framing.

use axum::{
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    response::{IntoResponse, Response},
};

const INDEX: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE: &str = include_str!("static/style.css");

/// What every console answer (files and API) carries.
pub(crate) const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // Always revalidated: a new binary's files are picked up at once.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn app_js() -> Response {
    file("text/javascript; charset=utf-8", APP_JS)
}

pub(crate) async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
