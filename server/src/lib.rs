//! impush-server: the ImServer node, as a library and as the `impush` binary.
//!
//! A node holds the WebSocket connections of the clients the cluster's partitioner assigns to
//! it, pushes what arrives on its broker inbox and on the cluster topic to them, and publishes
//! online/offline events. It runs no business logic: the business backend decides everything and
//! talks to the cluster through [`impush_helper::ImHelper`].
//!
//! Layout:
//! - [`server`](ImServer): start ([`ImServerBuilder`]: config + backend registry), run, shut down;
//! - `cli`: [`run`], the whole `impush` binary as one call;
//! - `node`: the node's shared state: broker feeds, delivery, receipts, connection lifecycle,
//!   presence upkeep;
//! - `session`: one connection (bounded outbound queue, pings, close codes);
//! - `settle`: how a point-to-point message ends (written or not), for receipts and broker acks;
//! - `registry`: the in-memory index of local connections and channel members;
//! - `edge`: the accept loop, the cap on open connections, header/idle/body timeouts;
//! - `app`: what HTTP handlers share; `http`: `/ws` (token check before the upgrade),
//!   `/healthz`, `/readyz`, `/metrics`; `api`: the HTTP API (`/api/v1/...`, Server-Sent Events,
//!   the OpenAPI document);
//! - [`webhooks`]: hooks POSTed to the business (online/offline, stored, join/leave), signed,
//!   batched and retried;
//! - `admin`: the admin console at `/admin` ([`AdminConfig`]) and its routes.

mod admin;
mod api;
mod app;
mod cli;
mod config;
mod edge;
mod error;
mod http;
mod metrics;
mod node;
mod registry;
mod server;
mod session;
mod settle;
mod stream;
mod throttle;
pub mod webhooks;

pub use admin::AdminConfig;
pub use cli::{run, EXIT_TEMPFAIL};
pub use config::{Config, OfflineConfig};
pub use error::{Error, Result};
pub use impush_brokers::{BackendContext, Backends, Section};
pub use metrics::Metrics;
pub use server::{Generated, ImServer, ImServerBuilder};

/// The routes the node's OpenAPI document (`/api/v1/openapi.json`) describes, as
/// `(method, path)` with `{param}` placeholders: the HTTP API's authenticated routes, its public
/// ones (`openapi.json`, health, readiness, metrics), then the admin console's routes and the
/// node stats route.
pub fn api_routes() -> Vec<(&'static str, &'static str)> {
    let mut routes = api::api_routes();
    routes.extend(admin::api_routes());
    routes
}

/// Resolves on Ctrl-C or SIGTERM: the signals that start a graceful shutdown.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives between the call and the first poll (say, right after the binary prints
/// that it is listening) still starts a graceful shutdown instead of killing the process.
/// Call it inside a Tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
