//! This crate's private error and its mapping onto `impush_core::Error`.
//!
//! Messages name the server by its redacted URL (never the password or token) and the
//! operation; the NATS client's own error is kept as the source, as text: async-nats errors
//! print their own cause and also return it as `source()`, which would show every cause twice
//! in a `a: b: c` chain.

use std::time::Duration;

use impush_core::{BoxError, Error as CoreError};

pub(crate) const BACKEND: &str = "nats";

/// What can go wrong talking to NATS, before it is mapped to a core error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The first connection failed.
    #[error("cannot connect to NATS at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: BoxError,
    },
    /// An operation failed; `transient` when retrying later may work (a reconnect is under way,
    /// the server is restarting, JetStream is catching up).
    #[error("NATS at {addr}: {op} failed")]
    Op {
        addr: String,
        op: String,
        transient: bool,
        #[source]
        source: BoxError,
    },
    /// No answer in time.
    #[error("NATS at {addr}: no answer to {op} within {within:?}")]
    Timeout {
        addr: String,
        op: String,
        within: Duration,
    },
}

impl Error {
    pub(crate) fn connect(addr: &str, source: &async_nats::ConnectError) -> Self {
        Error::Connect {
            addr: addr.to_owned(),
            source: source.to_string().into(),
        }
    }

    pub(crate) fn op(
        addr: &str,
        op: impl Into<String>,
        transient: bool,
        source: impl std::fmt::Display,
    ) -> Self {
        Error::Op {
            addr: addr.to_owned(),
            op: op.into(),
            transient,
            source: source.to_string().into(),
        }
    }

    pub(crate) fn timeout(addr: &str, op: impl Into<String>, within: Duration) -> Self {
        Error::Timeout {
            addr: addr.to_owned(),
            op: op.into(),
            within,
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Op { transient, .. } => *transient,
        }
    }
}

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        if e.is_transient() {
            CoreError::Unavailable {
                backend: BACKEND,
                source: Some(Box::new(e)),
            }
        } else {
            CoreError::Backend {
                backend: BACKEND,
                source: Box::new(e),
            }
        }
    }
}
