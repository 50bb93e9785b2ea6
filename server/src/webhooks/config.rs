//! `[webhooks]`: where hooks go, which kinds each endpoint wants, how they are batched and
//! retried (`docs/design.md` section 17).

use std::time::Duration;

use impush_core::config::Secret;
use serde::Deserialize;

/// A kind of hook an endpoint can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A connection opened (`first`: the client's only one now).
    Online,
    /// A connection closed (`last`: the client has none left; `moved`: closed for a planned
    /// move to another node).
    Offline,
    /// A point-to-point message was kept in the offline inbox for a receiver that was not
    /// connected: the hook for a mobile push.
    Stored,
    /// A client joined a channel.
    #[serde(alias = "join")]
    Joined,
    /// A client left a channel.
    #[serde(alias = "leave")]
    Left,
}

impl EventKind {
    /// The `type` of the hook in a webhook body.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Online => "online",
            EventKind::Offline => "offline",
            EventKind::Stored => "stored",
            EventKind::Joined => "joined",
            EventKind::Left => "left",
        }
    }
}

/// `[webhooks]`: hooks POSTed to the business, signed, batched and retried.
///
/// ```toml
/// [webhooks]
/// batch_size = 100        # hooks per POST at most
/// linger = "100ms"        # how long a POST waits for more hooks to fill it
/// queue = 10000           # hooks waiting per endpoint; beyond it new ones are dropped (counted)
/// timeout = "10s"         # per POST
/// [webhooks.retry]
/// initial_backoff = "500ms"
/// max_backoff = "30s"
/// max_attempts = 0        # 0: retried until max_age
/// max_age = "5m"          # the retry window: a hook older than this is dropped (counted)
/// [[webhooks.endpoints]]
/// url = "https://backend.example.com/impush/hooks"
/// events = ["online", "offline", "stored", "joined", "left"]
/// secret = "32 random bytes, hex"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where hooks go; none (the default) turns webhooks off.
    pub endpoints: Vec<EndpointConfig>,
    /// Most hooks in one POST (default 100).
    pub batch_size: usize,
    /// How long the first hook of a POST waits for others to join it (default 100 ms).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most hooks waiting per endpoint besides the POST in flight (default 10,000); a hook that
    /// finds the queue full is dropped and counted, never waited for.
    pub queue: usize,
    /// How long one POST may take, connecting included (default 10 s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How failed POSTs are retried.
    pub retry: RetryConfig,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            batch_size: 100,
            linger: Duration::from_millis(100),
            queue: 10_000,
            timeout: Duration::from_secs(10),
            retry: RetryConfig::default(),
        }
    }
}

/// `[webhooks.retry]`: exponential backoff with jitter, bounded by attempts and age.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// The wait after the first failure (default 500 ms); it doubles after each failure.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The longest wait between two attempts (default 30 s).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Most attempts per POST; 0 (the default) retries until `max_age`.
    pub max_attempts: u32,
    /// The retry window (default 5 min): a POST is not tried again once its oldest hook is
    /// this old, and its hooks are dropped (counted). An endpoint down for less loses nothing
    /// the queue could hold.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 0,
            max_age: Duration::from_secs(300),
        }
    }
}

/// One `[[webhooks.endpoints]]` entry. `Debug` shows the URL with its credentials hidden.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `http://` or `https://` URL the hooks are POSTed to.
    pub url: String,
    /// The kinds this endpoint gets.
    pub events: Vec<EventKind>,
    /// The HMAC-SHA256 key of the `Impush-Signature` header (at least 16 bytes).
    pub secret: Secret,
    /// Put the message's `data` in `stored` hooks (default false: it may be sensitive, and
    /// the business usually has it already).
    #[serde(default)]
    pub include_data: bool,
    /// Only `online` hooks with `first: true` and `offline` hooks with `last: true`: users
    /// coming and going rather than sockets (default false).
    #[serde(default)]
    pub first_last_only: bool,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A receiver's URL often carries a token (`?token=...`, `user:pass@`).
        f.debug_struct("EndpointConfig")
            .field("url", &impush_core::redact::redact_url(&self.url))
            .field("events", &self.events)
            .field("secret", &self.secret)
            .field("include_data", &self.include_data)
            .field("first_last_only", &self.first_last_only)
            .finish()
    }
}

/// The longest any webhook duration may be (as for every other duration key).
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Secrets shorter than this are refused: an HMAC key an attacker can guess signs anything.
const MIN_SECRET_BYTES: usize = 16;

impl WebhooksConfig {
    /// Whether any endpoint is configured.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Checks what serde cannot; the error is `(key, why)` for the caller's one-line message.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: &str| Err((format!("webhooks.{key}"), why.to_owned()));
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return bad("batch_size", "must be between 1 and 10000");
        }
        if self.queue == 0 || self.queue > 10_000_000 {
            return bad("queue", "must be between 1 and 10000000");
        }
        let r = &self.retry;
        for (key, d, zero_ok) in [
            ("linger", self.linger, true),
            ("timeout", self.timeout, false),
            ("retry.initial_backoff", r.initial_backoff, false),
            ("retry.max_backoff", r.max_backoff, false),
            ("retry.max_age", r.max_age, false),
        ] {
            if d.is_zero() && !zero_ok {
                return bad(key, "must be greater than zero");
            }
            if d > MAX_DURATION {
                return bad(key, "must be at most 7days");
            }
        }
        if self.linger > Duration::from_secs(60) {
            return bad(
                "linger",
                "must be at most 60s (hooks wait that long to be sent)",
            );
        }
        if r.max_backoff < r.initial_backoff {
            return bad(
                "retry.max_backoff",
                "must be at least webhooks.retry.initial_backoff",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let key = |k: &str| format!("endpoints.{i}.{k}");
            match reqwest::Url::parse(&e.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(u) => {
                    // Only the scheme is shown: the rest may hold a credential.
                    return bad(
                        &key("url"),
                        &format!(
                            "must be an http:// or https:// URL with a host (the scheme is {:?})",
                            u.scheme()
                        ),
                    );
                }
                Err(err) => {
                    return bad(
                        &key("url"),
                        &format!("is not a URL ({err}); write it like https://host/path"),
                    );
                }
            }
            if e.events.is_empty() {
                return bad(
                    &key("events"),
                    "must list at least one of online, offline, stored, joined, left",
                );
            }
            if e.secret.expose().len() < MIN_SECRET_BYTES {
                return bad(
                    &key("secret"),
                    "must be at least 16 bytes (for example `openssl rand -hex 32`)",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn endpoint() -> EndpointConfig {
        EndpointConfig {
            url: "https://backend.example.com/hooks".into(),
            events: vec![EventKind::Online],
            secret: Secret::new("0123456789abcdef"),
            include_data: false,
            first_last_only: false,
        }
    }

    fn key_of(c: &WebhooksConfig) -> String {
        c.check().unwrap_err().0
    }

    #[test]
    fn defaults_and_a_plain_endpoint_pass() {
        let mut c = WebhooksConfig::default();
        assert!(!c.enabled());
        c.check().unwrap();
        c.endpoints.push(endpoint());
        c.check().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let with = |f: &dyn Fn(&mut WebhooksConfig)| {
            let mut c = WebhooksConfig {
                endpoints: vec![endpoint()],
                ..WebhooksConfig::default()
            };
            f(&mut c);
            key_of(&c)
        };
        assert_eq!(with(&|c| c.batch_size = 0), "webhooks.batch_size");
        assert_eq!(with(&|c| c.queue = 0), "webhooks.queue");
        assert_eq!(with(&|c| c.timeout = Duration::ZERO), "webhooks.timeout");
        assert_eq!(
            with(&|c| c.retry.max_backoff = Duration::from_millis(1)),
            "webhooks.retry.max_backoff"
        );
        assert_eq!(
            with(&|c| c.retry.max_age = Duration::from_secs(8 * 24 * 3600)),
            "webhooks.retry.max_age"
        );
        assert_eq!(
            with(&|c| c.endpoints[0].url = "ftp://x/secret-token".into()),
            "webhooks.endpoints.0.url"
        );
        assert_eq!(
            with(&|c| c.endpoints[0].url = "no url".into()),
            "webhooks.endpoints.0.url"
        );
        assert_eq!(
            with(&|c| c.endpoints[0].events.clear()),
            "webhooks.endpoints.0.events"
        );
        assert_eq!(
            with(&|c| c.endpoints[0].secret = Secret::new("short")),
            "webhooks.endpoints.0.secret"
        );
    }

    #[test]
    fn debug_hides_the_secret_and_url_credentials() {
        let mut e = endpoint();
        e.url = "https://user:pw1@backend.example.com/hooks?token=hunter2".into();
        let shown = format!("{e:?}");
        for secret in ["pw1", "hunter2", "0123456789abcdef"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("backend.example.com/hooks"), "{shown}");
    }

    #[test]
    fn a_bad_url_error_does_not_show_the_url() {
        let mut c = WebhooksConfig::default();
        let mut e = endpoint();
        e.url = "ftp://host/path?token=hunter2".into();
        c.endpoints.push(e);
        let (_, why) = c.check().unwrap_err();
        assert!(!why.contains("hunter2"), "{why}");
    }
}
