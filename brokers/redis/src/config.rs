//! [`RedisConfig`]: the `[broker] kind = "redis"` and `[presence] kind = "redis"` sections.

use std::{fmt, time::Duration};

use serde::Deserialize;

/// Connection and layout settings for Redis.
///
/// ```toml
/// [broker]
/// kind = "redis"
/// url = "redis://:password@127.0.0.1:6379/0"   # rediss:// for TLS; the password never reaches logs
/// prefix = "impush"                             # topic prefix (stream keys are `{prefix}.inbox.n1`, ...)
/// pool_size = 4
/// stream_max_len = 100000                       # retention per topic stream (approximate trim)
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
    /// Prefix of every key and topic (default `impush`).
    pub prefix: String,
    /// Connections in the command pool (default 4).
    pub pool_size: usize,
    /// Entries each topic stream keeps; older ones are trimmed (approximately) on publish. An
    /// entry holds one message, or several when publishes to the topic queue up. A node that is
    /// down longer than it takes to publish this many entries to it loses the oldest ones.
    pub stream_max_len: u64,
    /// How long one command may take before it fails with "unavailable" (so the HTTP API
    /// answers 503 instead of hanging while Redis is away).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "impush".to_owned(),
            pool_size: 4,
            stream_max_len: 100_000,
            command_timeout: Duration::from_secs(3),
        }
    }
}

impl RedisConfig {
    /// The defaults with `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// Replaces the userinfo password of a URL with `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("stream_max_len", &self.stream_max_len)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let c = RedisConfig::from_url("redis://:hunter2@db:6379/2");
        assert_eq!(c.redacted_url(), "redis://:***@db:6379/2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(redact("rediss://user:pw@h:1"), "rediss://user:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
