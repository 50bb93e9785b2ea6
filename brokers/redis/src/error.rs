//! This crate's private error and its mapping onto `impush_core::Error`.

use fred::error::{Error as FredError, ErrorKind};
use impush_core::Error as CoreError;

pub(crate) const BACKEND: &str = "redis";

/// What can go wrong talking to Redis, before it is mapped to a core error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A command or connection failed.
    #[error("redis {op} failed")]
    Command {
        op: &'static str,
        #[source]
        source: FredError,
    },
    /// Redis answered something this crate did not expect (a corrupted key, a foreign value).
    #[error("unexpected redis reply to {op}: {detail}")]
    Reply { op: &'static str, detail: String },
}

impl Error {
    pub(crate) fn command(op: &'static str) -> impl FnOnce(FredError) -> Self {
        move |source| Error::Command { op, source }
    }
}

/// Whether the failure is about reaching Redis (retrying later may work). fred reports a
/// command it had no connection to write to (the link is down and being re-established) as
/// `Routing`, or as `Unknown` with this message: a send during a Redis restart answered 500
/// instead of 503 in a CI run (`traffic_through_a_broker_restart`), and a client that retries
/// on 503 gave up.
fn unreachable(e: &FredError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Routing
    ) || (*e.kind() == ErrorKind::Unknown && e.details().starts_with("Failed to route command"))
}

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        match &e {
            Error::Command { source, .. } if unreachable(source) => CoreError::Unavailable {
                backend: BACKEND,
                source: Some(Box::new(e)),
            },
            _ => CoreError::Backend {
                backend: BACKEND,
                source: Box::new(e),
            },
        }
    }
}

/// Maps a fred error of operation `op` straight to a core error.
pub(crate) fn core(op: &'static str) -> impl FnOnce(FredError) -> CoreError {
    move |source| Error::Command { op, source }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(kind: ErrorKind, details: &str) -> CoreError {
        Error::Command {
            op: "XADD",
            source: FredError::new(kind, details.to_owned()),
        }
        .into()
    }

    #[test]
    fn a_command_with_no_connection_to_go_to_is_unavailable_not_a_backend_failure() {
        for (kind, details) in [
            (ErrorKind::Unknown, "Failed to route command."),
            (ErrorKind::Routing, "Failed to route command to replica."),
            (ErrorKind::IO, "Connection closed."),
        ] {
            let e = mapped(kind.clone(), details);
            assert!(e.is_transient(), "{kind:?} {details}: {e:?}");
        }
        let e = mapped(ErrorKind::Unknown, "something else");
        assert!(!e.is_transient(), "{e:?}");
    }
}
