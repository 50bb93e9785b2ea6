//! The admin console at `/admin` (`docs/design.md` section 17): a page, script and stylesheet
//! compiled into the binary, behind a login with `admin.secret` (its own secret, not the API
//! key), and the routes it reads its data from, which are in the OpenAPI document like the
//! rest of the HTTP API.
//!
//! - `config`: `[admin]`;
//! - `assets`: the static files and the headers every console answer carries;
//! - `session`: the logins (random cookie, CSRF token, expiry, bounded);
//! - `limit`: how fast the login may be guessed at;
//! - `guard`: the session and CSRF checks in front of the routes;
//! - `login`: log in and out, the cookie;
//! - `data`: clients, kick, channels, the event feed;
//! - `stats`: this node's stats (`GET /api/v1/node/stats`, API key) and the cluster view, which
//!   fetches the other nodes' stats over HTTP.
//!
//! Every route is in [`table`], which builds the router and lists the routes for the test that
//! keeps the OpenAPI document honest.

mod assets;
mod config;
mod data;
mod guard;
mod limit;
mod login;
mod session;
mod stats;

use std::{sync::Arc, time::Instant};

use axum::{
    extract::DefaultBodyLimit,
    http::{header::CACHE_CONTROL, HeaderName, HeaderValue, Method},
    middleware,
    response::Response,
    routing::{get, on, MethodFilter, MethodRouter},
    Router,
};
use impush_core::config::Secret;

pub use config::AdminConfig;

use crate::app::App;

/// The session cookie's name.
pub(crate) const COOKIE_NAME: &str = "impush_admin";

/// The console's shared state.
#[derive(Debug)]
pub(crate) struct Admin {
    app: Arc<App>,
    /// `None`: the console is off (`admin.enabled = false`); only the stats route is served.
    secret: Option<Secret>,
    secure_cookie: bool,
    sessions: session::Sessions,
    login_limit: limit::LoginLimit,
    rate: Arc<stats::Rate>,
    /// Fetches the other nodes' stats (`None` when this node is the whole cluster).
    http: Option<reqwest::Client>,
    started: Instant,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone: the login itself.
    Public,
    /// A live session.
    Session,
    /// A live session, same origin, and its CSRF token.
    Action,
    /// The HTTP API key, like `/api/v1`.
    ApiKey,
}

type Handler = MethodRouter<Arc<Admin>>;

fn route<H, T>(method: &'static str, path: &'static str, access: Access, h: H) -> Route
where
    H: axum::handler::Handler<T, Arc<Admin>>,
    T: 'static,
{
    let filter = Method::from_bytes(method.as_bytes())
        .ok()
        .and_then(|m| MethodFilter::try_from(m).ok())
        .unwrap_or(MethodFilter::GET);
    (method, path, access, on(filter, h))
}

type Route = (&'static str, &'static str, Access, Handler);

/// Every console API route, and the node stats route.
fn table() -> Vec<Route> {
    use Access::{Action, ApiKey, Public, Session};
    vec![
        route("POST", "/admin/api/login", Public, login::login),
        route("POST", "/admin/api/logout", Action, login::logout),
        route("GET", "/admin/api/session", Session, data::session),
        route("GET", "/admin/api/cluster", Session, stats::cluster),
        route("GET", "/admin/api/clients", Session, data::clients),
        route("GET", "/admin/api/clients/{id}", Session, data::client),
        route("POST", "/admin/api/clients/{id}/kick", Action, data::kick),
        route("GET", "/admin/api/channels", Session, data::channels),
        route("GET", "/admin/api/channels/{name}", Session, data::channel),
        route("GET", "/admin/api/events", Session, data::events),
        route("GET", "/api/v1/node/stats", ApiKey, stats::node_stats),
    ]
}

/// The routes of [`table`] as `(method, path)`, for the OpenAPI document's check.
pub(crate) fn api_routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _, _)| (m, p)).collect()
}

/// `Cache-Control: no-store` on API answers (they hold the CSRF token and live data), and
/// the console's security headers on everything it serves.
async fn console_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    for (name, value) in assets::SECURITY_HEADERS {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    resp
}

impl Admin {
    /// The console's state for `app`, with the login secret (`None`: the console is off),
    /// and the task sampling message rates (it ends when the node shuts down).
    ///
    /// # Errors
    /// The HTTP client for other nodes' stats could not be built (no TLS roots).
    pub(crate) fn start(
        app: Arc<App>,
        config: &AdminConfig,
        secret: Option<Secret>,
    ) -> impush_core::Result<Arc<Self>> {
        let http = if app.node.cluster.nodes().len() > 1 {
            let client = reqwest::Client::builder()
                .timeout(stats::REMOTE_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("impush/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| impush_core::Error::Backend {
                    backend: "admin console",
                    source: Box::new(e),
                })?;
            Some(client)
        } else {
            None
        };
        let rate = Arc::new(stats::Rate::default());
        rate.clone()
            .run(app.node.metrics.clone(), app.shutdown.clone());
        Ok(Arc::new(Self {
            secret,
            secure_cookie: config.secure_cookie,
            sessions: session::Sessions::new(config.session_ttl),
            login_limit: limit::LoginLimit::new(),
            rate,
            http,
            started: Instant::now(),
            app,
        }))
    }

    /// The console's routes (none but the stats route when it is off), with request bodies
    /// limited to `limits.max_body_bytes` like the API's.
    pub(crate) fn router(self: &Arc<Self>) -> Router<Arc<App>> {
        let max_body = self.app.node.limits.max_body_bytes;
        let mut public = Router::new();
        let mut reads = Router::new();
        let mut actions = Router::new();
        let mut keyed = Router::new();
        for (_, path, access, handler) in table() {
            match access {
                Access::Public => public = public.route(path, handler),
                Access::Session => reads = reads.route(path, handler),
                Access::Action => actions = actions.route(path, handler),
                Access::ApiKey => keyed = keyed.route(path, handler),
            }
        }
        let keyed = keyed.route_layer(middleware::from_fn_with_state(
            self.app.clone(),
            crate::api::require_api_key,
        ));
        let mut router = Router::new().merge(keyed);
        if self.secret.is_some() {
            let console = public
                .merge(reads.route_layer(middleware::from_fn_with_state(
                    self.clone(),
                    guard::require_session,
                )))
                .merge(actions.route_layer(middleware::from_fn_with_state(
                    self.clone(),
                    guard::require_action,
                )))
                .route("/admin", get(assets::index))
                .route("/admin/", get(assets::index))
                .route("/admin/app.js", get(assets::app_js))
                .route("/admin/style.css", get(assets::style))
                .layer(middleware::map_response(console_headers));
            router = router.merge(console);
        }
        router
            .layer(DefaultBodyLimit::max(max_body))
            .with_state(self.clone())
    }
}
