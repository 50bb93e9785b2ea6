//! `[admin]`: the admin console's secret and sessions (`docs/design.md` section 17).

use std::time::Duration;

use impush_core::config::{AuthConfig, Secret};
use serde::Deserialize;

/// Fewest characters of a configured `admin.secret`: the login is rate limited, but a short
/// secret is still guessable from many addresses.
pub(crate) const MIN_SECRET_CHARS: usize = 16;

/// `[admin]`: the admin console at `/admin` (`docs/design.md` section 17).
///
/// ```toml
/// [admin]
/// enabled = true               # false: no console; GET /api/v1/node/stats is still served
/// secret = "a long random string, not the API key"   # generated and printed when absent
/// session_ttl = "8h"           # a login lasts this long
/// secure_cookie = false        # true: the session cookie is always `Secure` (HTTPS only)
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the console at `/admin` (default true).
    pub enabled: bool,
    /// What the console's login asks for: at least 16 characters, and neither `auth.api_key`
    /// nor `auth.secret`. When absent a random one is generated at start and printed.
    pub secret: Option<Secret>,
    /// How long a login lasts (default 8 h).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` on every answer. Without it the cookie is `Secure` when
    /// the login came over HTTPS as far as the node can tell: a proxy's
    /// `X-Forwarded-Proto: https`, or an `https://` `Origin`.
    pub secure_cookie: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            secret: None,
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookie: false,
        }
    }
}

impl AdminConfig {
    /// Checks the keys serde cannot, as `(key, why)`.
    pub(crate) fn check(&self, auth: &AuthConfig, max: Duration) -> Result<(), (String, String)> {
        let bad = |key: &str, why: String| Err((key.to_owned(), why));
        if self.session_ttl.is_zero() {
            return bad("admin.session_ttl", "must be greater than zero".into());
        }
        if self.session_ttl > max {
            return bad("admin.session_ttl", "must be at most 7days".into());
        }
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        let s = secret.expose();
        if s.chars().count() < MIN_SECRET_CHARS {
            return bad(
                "admin.secret",
                format!("must be at least {MIN_SECRET_CHARS} characters"),
            );
        }
        // The console is a separate door: a leaked API key must not open it, nor the other
        // way round.
        for (key, other) in [
            ("auth.api_key", &auth.api_key),
            ("auth.secret", &auth.secret),
        ] {
            if other.as_ref().is_some_and(|o| o.expose() == s) {
                return bad("admin.secret", format!("must differ from {key}"));
            }
        }
        Ok(())
    }
}
