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
//!   the OpenAPI document).

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

pub use api::api_routes;
pub use cli::run;
pub use config::{Config, OfflineConfig};
pub use error::{Error, Result};
pub use impush_brokers::{BackendContext, Backends, Section};
pub use metrics::Metrics;
pub use server::{Generated, ImServer, ImServerBuilder};

/// Resolves on Ctrl-C or SIGTERM: the signals that start a graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
