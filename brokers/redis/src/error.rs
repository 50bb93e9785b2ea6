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

/// Whether the failure is about reaching Redis (retrying later may work).
fn unreachable(e: &FredError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure
    )
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
