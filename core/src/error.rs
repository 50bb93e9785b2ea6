//! The one error type every impush crate speaks.
//!
//! The traits ([`Broker`](crate::Broker), [`PresenceStore`](crate::PresenceStore)) return this
//! type so that `Arc<dyn Broker>` works; backend crates keep their own private errors and convert
//! them into the variants here (`Unavailable`, `Lagged`, ...) so that the server can react to the
//! condition without knowing which backend produced it.

use std::fmt;

/// A boxed error from a backend library, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in impush-core and the backends behind its traits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A client id, channel name or node id did not pass validation.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// What was being validated: "client id", "channel name", "node id", ...
        kind: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// An argument was syntactically fine but makes no sense (empty receiver list, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A value is larger than the configured limit.
    #[error("{what} is too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A connect token was refused.
    #[error("connect token refused: {0}")]
    TokenInvalid(TokenError),
    /// The backend cannot be reached right now; retrying later may succeed.
    #[error("{backend} is unavailable")]
    Unavailable {
        /// Which backend ("redis", "memory", ...).
        backend: &'static str,
        /// The underlying cause, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A subscriber fell behind and messages were dropped for it.
    #[error("subscriber lagged behind; {dropped} messages were dropped")]
    Lagged {
        /// How many messages were lost.
        dropped: u64,
    },
    /// The component was shut down.
    #[error("{0} is shut down")]
    Closed(&'static str),
    /// The configuration asks for a backend this build does not contain (the Cargo feature has
    /// the backend's name).
    #[error("backend `{0}` is not compiled in; rebuild with `--features {0}`")]
    NotCompiled(String),
    /// A configured backend could not be started; `source` says why (and where, never with a
    /// password).
    #[error("cannot start {role} `{kind}`")]
    Start {
        /// `broker` or `presence`.
        role: &'static str,
        /// The configured kind.
        kind: String,
        /// What the backend reported.
        #[source]
        source: Box<Error>,
    },
    /// The configuration is invalid; the message names the key.
    #[error("{0}")]
    Config(String),
    /// A payload could not be encoded or decoded.
    #[error("could not encode or decode {what}")]
    Codec {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Any other backend failure.
    #[error("{backend} backend error")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The underlying cause.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed (a reconnect is under way, ...).
    ///
    /// The server's retry and resubscribe logic calls this instead of matching backend details.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Lagged { .. } => true,
            Error::Start { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn invalid_id(kind: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidId {
            kind,
            reason: reason.into(),
        }
    }

    /// Shorthand for a [`Error::Codec`] error.
    pub fn codec(what: &'static str, source: serde_json::Error) -> Self {
        Error::Codec { what, source }
    }
}

/// Why a connect token was refused. The server answers all of them with HTTP 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// No token in the request.
    Missing,
    /// Not a token of ours (bad encoding, bad fields).
    Malformed,
    /// The signature does not match: forged or signed with another secret.
    BadSignature,
    /// Past its expiry.
    Expired,
    /// Already used once.
    Reused,
    /// Minted for another node.
    WrongNode,
    /// Issued before this node started: the node cannot know whether it was used before its
    /// restart, so it refuses it (ask for a new URL).
    Stale,
    /// The node remembers too many unexpired tokens to accept one more right now.
    Overloaded,
}

impl TokenError {
    /// A short machine-readable code, used in HTTP error bodies and metrics labels.
    pub fn code(self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed => "token_malformed",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::Reused => "token_reused",
            TokenError::WrongNode => "token_wrong_node",
            TokenError::Stale => "token_stale",
            TokenError::Overloaded => "token_overloaded",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "no token given",
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad signature",
            TokenError::Expired => "token expired",
            TokenError::Reused => "token already used",
            TokenError::WrongNode => "token was issued for another node",
            TokenError::Stale => {
                "token was issued before this node started (it may have been used already); \
                 ask for a new URL"
            }
            TokenError::Overloaded => "too many outstanding tokens",
        })
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::TokenInvalid(e)
    }
}
