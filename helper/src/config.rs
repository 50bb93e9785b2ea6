//! [`HelperConfig`]: the parts of an impush configuration file a helper needs.

use std::path::Path;

use impush_brokers::Section;
use impush_core::{
    config::{AuthConfig, ClusterConfig, HistoryConfig, LimitsConfig},
    Result,
};
use serde::Deserialize;

/// What a helper reads from the cluster's configuration (the same file the nodes use; sections
/// a helper does not need, such as `[node]`, are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HelperConfig {
    /// `[cluster]`: nodes and partitioner; `nodes` must be listed.
    pub cluster: ClusterConfig,
    /// `[auth]`: `secret` is required, `token_ttl` applies.
    pub auth: AuthConfig,
    /// `[broker]`: the same section the nodes read.
    pub broker: Section,
    /// `[presence]`: the same section the nodes read.
    pub presence: Section,
    /// `[limits]`: `max_metadata_bytes` applies.
    pub limits: LimitsConfig,
    /// `[history]`: with history (the default), channel messages and broadcasts go to their
    /// stream's sequencer node to be numbered first; the same section the nodes read.
    pub history: HistoryConfig,
}

const SECTIONS: &[&str] = &["cluster", "auth", "broker", "presence", "limits", "history"];

impl HelperConfig {
    /// Loads the helper's sections from `file` (if any) and `IMPUSH_*` environment overrides.
    ///
    /// # Errors
    /// [`impush_core::Error::Config`] naming the bad key.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        impush_core::config::load(file, SECTIONS)
    }
}
