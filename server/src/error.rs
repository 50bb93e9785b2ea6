//! The server crate's [`Error`].

use std::net::SocketAddr;

/// `Result` with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop a node from starting or shutting down cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Configuration, backend or protocol errors from the core.
    #[error(transparent)]
    Core(#[from] impush_core::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Other I/O failure of the listener.
    #[error("listener failed")]
    Io(#[from] std::io::Error),
}
