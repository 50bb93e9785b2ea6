//! [`ClusterPresenceConfig`]: the `[presence] kind = "cluster"` section.

use std::time::Duration;

use serde::Deserialize;

/// Options of cluster presence.
///
/// ```toml
/// [presence]
/// kind = "cluster"
/// query_timeout = "2s"   # how long a query waits for the other nodes before answering partially
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterPresenceConfig {
    /// How long a query (or a channel join) waits for the nodes it asks; nodes that did not
    /// answer by then are reported (`partial`), never waited for longer.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
}

impl Default for ClusterPresenceConfig {
    fn default() -> Self {
        Self {
            query_timeout: Duration::from_secs(2),
        }
    }
}

impl ClusterPresenceConfig {
    /// Checks values that would make queries useless or spin.
    ///
    /// # Errors
    /// `Error::Config` naming `presence.query_timeout`.
    pub fn validate(&self) -> impush_core::Result<()> {
        if self.query_timeout < Duration::from_millis(10)
            || self.query_timeout > Duration::from_secs(600)
        {
            return Err(impush_core::Error::Config(
                "config key `presence.query_timeout`: must be between 10ms and 10m".into(),
            ));
        }
        Ok(())
    }
}
