//! This crate's private error and its mapping onto `impush_core::Error`.
//!
//! Messages name the broker by its redacted URL (`amqp://guest:***@host:5672/%2f`): neither
//! lapin's errors nor ours ever carry the password.

use std::time::Duration;

use impush_core::Error as CoreError;
use lapin::ErrorKind;

pub(crate) const BACKEND: &str = "rabbitmq";

/// What can go wrong talking to RabbitMQ, before it is mapped to a core error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// `url` is not an AMQP URL (`url` is redacted).
    #[error("config key `broker.url`: invalid RabbitMQ URL {url}: {reason}")]
    Url { url: String, reason: String },
    /// The connection could not be opened.
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("cannot connect to {url}: no answer within {after:?}")]
    ConnectTimeout { url: String, after: Duration },
    /// The connection is down and being re-established.
    #[error("not connected to {url} (reconnecting)")]
    Down { url: String },
    /// An AMQP operation failed.
    #[error("rabbitmq {op} failed")]
    Op {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation got no answer in time (`publish_timeout`).
    #[error("rabbitmq {op}: no answer within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// RabbitMQ refused to take a published message (`basic.nack`).
    #[error("rabbitmq refused a publish to {topic} (nack)")]
    Nack { topic: String },
    /// A topic or queue name RabbitMQ cannot take.
    #[error("{0}")]
    Name(String),
}

impl Error {
    pub(crate) fn op(op: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Error::Op { op, source }
    }
}

/// Whether the failure is about reaching RabbitMQ, so that retrying later may work: I/O, a
/// connection or channel that is closed or closing, a missing heartbeat, a refusal because of
/// resources (connection-level errors RabbitMQ sends when shutting down are included).
fn transient(e: &lapin::Error) -> bool {
    match e.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::ChannelsLimitReached => true,
        // 320 CONNECTION_FORCED (broker shutting down), 505/506 frame/resource errors.
        ErrorKind::ProtocolError(p) => matches!(p.get_id(), 320 | 506),
        _ => false,
    }
}

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        match &e {
            Error::Url { .. } => CoreError::Config(e.to_string()),
            Error::Name(msg) => CoreError::InvalidArgument(msg.clone()),
            Error::Connect { source, .. } | Error::Op { source, .. } if !transient(source) => {
                CoreError::Backend {
                    backend: BACKEND,
                    source: Box::new(e),
                }
            }
            _ => CoreError::Unavailable {
                backend: BACKEND,
                source: Some(Box::new(e)),
            },
        }
    }
}
