//! FreeIM's WebApi chat demo, for impush: a business backend (axum) that embeds one impush node
//! and serves a one-page chat app.
//!
//! ```sh
//! cargo run -p impush-examples --bin chat     # then open http://127.0.0.1:5555 in two tabs
//! ```
//!
//! - `--port N` or `CHAT_PORT` (default 5555): the page and the business API;
//! - `--impush-port N` or `CHAT_IMPUSH_PORT` (default 6001): the embedded impush node, which the
//!   browsers' WebSockets connect to. `0` picks a free port for either; the chosen addresses
//!   are printed on stdout. `IMPUSH_*` variables configure the node (`docs/design.md` section 8).
//!
//! The page logs in over HTTP, gets its WebSocket URL from `GET /im/connect` (the backend's
//! `prepare_connect`), and sends every action (messages, rooms, kicks) to this backend, which
//! calls the ImHelper. The socket only pushes. See `examples/chat/README.md`.

mod api;
mod state;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::DefaultBodyLimit,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use impush_server::{Config, ImServer};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: chat [--port N] [--impush-port N]
  --port N         the page and the business API on 127.0.0.1:N (env CHAT_PORT, default 5555)
  --impush-port N  the embedded impush node on 127.0.0.1:N (env CHAT_IMPUSH_PORT, default 6001)
  0 picks a free port; the chosen URLs are printed on stdout.";

struct Args {
    port: u16,
    impush_port: u16,
}

fn port(what: &str, v: &str) -> Result<u16, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{what}: `{v}` is not a port number (0-65535)"))
}

fn parse_args() -> Result<Args, String> {
    let env = |key: &str, default: u16| match std::env::var(key) {
        Ok(v) => port(key, &v),
        Err(_) => Ok(default),
    };
    let mut args = Args {
        port: env("CHAT_PORT", 5555)?,
        impush_port: env("CHAT_IMPUSH_PORT", 6001)?,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let target = match flag.as_str() {
            "--port" => &mut args.port,
            "--impush-port" => &mut args.impush_port,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument `{arg}`\n{USAGE}")),
        };
        let value = inline
            .or_else(|| it.next())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        *target = port(&flag, &value)?;
    }
    Ok(args)
}

// ---- the page -------------------------------------------------------------------------------

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");
/// The browser client, served as is: it is an ES module with no dependencies.
const CLIENT_JS: &str = include_str!("../../clients/js/src/index.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn page_routes() -> Router<Arc<state::Chat>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/impush-client.js",
            get(|| async { asset("text/javascript; charset=utf-8", CLIENT_JS) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

fn router(chat: Arc<state::Chat>) -> Router {
    let not_found =
        || async { api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") };
    let not_allowed = || async {
        api::ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    };
    page_routes()
        .merge(api::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(chat)
}

/// The page talks to this origin and to the impush node's WebSocket (another port).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

// ---- start-up -------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,chat=info".into()),
        )
        .init();
    if let Err(e) = run(args).await {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    // The embedded default (one node, memory broker and presence) plus any IMPUSH_* overrides.
    let mut config = Config::load(None)?;
    config.node.listen = SocketAddr::from(([127, 0, 0, 1], args.impush_port));
    // The offline inbox is on unless IMPUSH_OFFLINE__ENABLED says otherwise: a message to a
    // user who is away waits for them (the sender sees "stored").
    if std::env::var_os("IMPUSH_OFFLINE__ENABLED").is_none() {
        config.offline.enabled = true;
    }
    let server = ImServer::builder(config).start().await?;
    let helper = server.helper();
    // Subscribed before anyone can connect, so the online set misses nobody.
    let events = helper.events().await?;
    let chat = Arc::new(state::Chat::new(helper));
    tokio::spawn(state::run_events(chat.clone(), events));

    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port)))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    println!("impush node on ws://{}", server.local_addr());
    println!("chat demo on http://{}", listener.local_addr()?);

    axum::serve(listener, router(chat))
        .with_graceful_shutdown(impush_server::shutdown_signal())
        .await?;
    // Closes every WebSocket with 1001 (pages reconnect to the next run).
    server.shutdown().await?;
    Ok(())
}
