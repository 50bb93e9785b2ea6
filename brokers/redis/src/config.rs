//! [`RedisConfig`]: the `[broker] kind = "redis"` and `[presence] kind = "redis"` sections.

use std::{fmt, time::Duration};

use impush_core::redact::redact_url;
use serde::Deserialize;

/// Connection and layout settings for Redis.
///
/// ```toml
/// [broker]
/// kind = "redis"
/// url = "redis://:password@127.0.0.1:6379/0"   # rediss:// for TLS; the password never reaches logs
/// prefix = "impush"                             # shared key: topic prefix (streams `{prefix}.inbox.n1`, ...)
/// pool_size = 4
/// stream_max_len = 100000                       # retention per topic stream (approximate trim)
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
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
    /// How long a queue entry may stay unacked by a member before another member of the group
    /// takes it over (default 10s). This is how messages a crashed node had read but not yet
    /// delivered reach the restarted node; a live member acks well within it.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            pool_size: 4,
            stream_max_len: 100_000,
            command_timeout: Duration::from_secs(3),
            claim_idle: Duration::from_secs(10),
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

    /// The URL with any password replaced by `***`, for logs and errors
    /// ([`impush_core::redact::redact_url`]).
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("stream_max_len", &self.stream_max_len)
            .field("command_timeout", &self.command_timeout)
            .field("claim_idle", &self.claim_idle)
            .finish_non_exhaustive()
    }
}

/// `[presence] kind = "redis"`: every option defaults to the broker's when the broker is Redis
/// too.
///
/// ```toml
/// [presence]
/// kind = "redis"
/// url = "redis://127.0.0.1:6379"    # default: broker.url when broker.kind = "redis"
/// pool_size = 4
/// command_timeout = "3s"
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisPresenceConfig {
    /// `redis://...`; defaults to `broker.url` when the broker is Redis.
    pub url: Option<String>,
    /// Connections in the pool (default 4).
    pub pool_size: Option<usize>,
    /// How long a command may take before it fails as unavailable (default 3s).
    #[serde(default, with = "humantime_serde::option")]
    pub command_timeout: Option<Duration>,
}

impl RedisPresenceConfig {
    /// The connection settings, taking what is not set here from `broker` (the `[broker]`
    /// section when it is Redis too). The same options serve `[offline] kind = "redis"`;
    /// `section` names the section in errors.
    ///
    /// # Errors
    /// `Error::Config` naming `<section>.url` when neither this section nor the broker gives
    /// one.
    pub fn resolve(
        &self,
        broker: Option<RedisConfig>,
        section: &str,
    ) -> impush_core::Result<RedisConfig> {
        let mut cfg = match (&self.url, broker) {
            (Some(url), Some(b)) => RedisConfig {
                url: url.clone(),
                ..b
            },
            (Some(url), None) => RedisConfig::from_url(url.clone()),
            (None, Some(b)) => b,
            (None, None) => {
                return Err(impush_core::Error::Config(format!(
                    "config key `{section}.url`: required when the broker is not Redis"
                )))
            }
        };
        if let Some(n) = self.pool_size {
            cfg.pool_size = n;
        }
        if let Some(t) = self.command_timeout {
            cfg.command_timeout = t;
        }
        Ok(cfg)
    }
}

impl fmt::Debug for RedisPresenceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPresenceConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("pool_size", &self.pool_size)
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
        let c = RedisConfig::from_url("rediss://user:sec@ret-tail@h:1");
        assert_eq!(c.redacted_url(), "rediss://user:***@h:1");
        assert_eq!(
            RedisConfig::from_url("redis://h:1").redacted_url(),
            "redis://h:1"
        );
        let p = RedisPresenceConfig {
            url: Some("redis://:hunter2@ret-tail@db:6379".into()),
            ..Default::default()
        };
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!format!("{p:?}").contains("ret-tail"));
    }

    #[test]
    fn presence_takes_what_it_lacks_from_the_broker() {
        let broker = RedisConfig {
            pool_size: 9,
            ..RedisConfig::from_url("redis://b:1")
        };
        let p = RedisPresenceConfig::default();
        assert_eq!(
            p.resolve(Some(broker.clone()), "presence").unwrap().url,
            "redis://b:1"
        );
        let p = RedisPresenceConfig {
            url: Some("redis://p:2".into()),
            ..Default::default()
        };
        let c = p.resolve(Some(broker), "presence").unwrap();
        assert_eq!((c.url.as_str(), c.pool_size), ("redis://p:2", 9));
        let err = RedisPresenceConfig::default()
            .resolve(None, "offline")
            .unwrap_err();
        assert!(err.to_string().contains("offline.url"), "{err}");
    }
}
