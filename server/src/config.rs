//! [`Config`]: a node's whole configuration file (DESIGN.md section 8).

use std::{path::Path, time::Duration};

use impush_brokers::Section;
use impush_core::{
    config::{AuthConfig, ChannelsConfig, ClusterConfig, LimitsConfig, NodeConfig},
    Error, Result,
};
use impush_helper::HelperConfig;
use serde::Deserialize;

/// `[offline]`: the offline inbox (DESIGN.md section 9).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Keep messages for offline receivers. Not available in this version: `true` is refused.
    pub enabled: bool,
    /// How long a stored message is kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most stored messages per client.
    pub max_per_client: usize,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: Duration::from_secs(2 * 24 * 3600),
            max_per_client: 100,
        }
    }
}

/// Everything a node reads from `impush.toml` and `IMPUSH_*` variables. `Config::default()` is
/// the embedded default: one node `n1` on 127.0.0.1:6001 with memory backends.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[cluster]`.
    pub cluster: ClusterConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[broker]`: `kind` names a registered broker (`memory` by default), `prefix` the topic
    /// prefix; the other keys belong to the kind.
    pub broker: Section,
    /// `[presence]`: `kind` names a registered presence store (`memory` by default).
    pub presence: Section,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[channels]`.
    pub channels: ChannelsConfig,
    /// `[offline]`.
    pub offline: OfflineConfig,
}

const SECTIONS: &[&str] = &[
    "node", "cluster", "auth", "broker", "presence", "limits", "channels", "offline",
];

impl Config {
    /// Loads `file` (if any) overlaid by `IMPUSH_SECTION__KEY` environment variables, and
    /// validates the result.
    ///
    /// # Errors
    /// [`Error::Config`] with a one-line message naming the key.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let config: Config = impush_core::config::load(file, SECTIONS)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: cross-field rules and sane limits.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(Error::Config(format!("config key `{key}`: {why}")));
        if !self.cluster.nodes.is_empty()
            && !self.cluster.nodes.iter().any(|n| n.id == self.node.id)
        {
            return bad(
                "node.id",
                &format!("`{}` is not one of cluster.nodes", self.node.id),
            );
        }
        if self.cluster.nodes.len() > 1 && self.auth.secret.is_none() {
            return bad(
                "auth.secret",
                "required when cluster.nodes lists several nodes (they must share it)",
            );
        }
        if self.cluster.node_lease < Duration::from_millis(300) {
            return bad("cluster.node_lease", "must be at least 300ms");
        }
        if self.auth.token_ttl.is_zero() {
            return bad("auth.token_ttl", "must be greater than zero");
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes),
            ("limits.max_pending_tokens", l.max_pending_tokens),
            ("limits.max_body_bytes", l.max_body_bytes),
        ] {
            if v == 0 {
                return bad(key, "must be greater than zero");
            }
        }
        if l.ping_interval.is_zero() {
            return bad("limits.ping_interval", "must be greater than zero");
        }
        if self.offline.enabled {
            return bad(
                "offline.enabled",
                "the offline inbox is not available in this version of impush",
            );
        }
        Ok(())
    }

    /// The sections a helper in the same process needs.
    pub fn helper_config(&self) -> HelperConfig {
        HelperConfig {
            cluster: self.cluster.clone(),
            auth: self.auth.clone(),
            broker: self.broker.clone(),
            presence: self.presence.clone(),
            limits: self.limits.clone(),
        }
    }
}
