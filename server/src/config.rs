//! [`Config`]: a node's whole configuration file (`docs/design.md` section 8).

use std::{path::Path, time::Duration};

use impush_brokers::Section;
use impush_core::{
    config::{AuthConfig, ChannelsConfig, ClusterConfig, HistoryConfig, LimitsConfig, NodeConfig},
    Error, InboxLimits, Result,
};
use impush_helper::HelperConfig;
use serde::Deserialize;

use crate::{admin::AdminConfig, webhooks::WebhooksConfig};

/// `[offline]`: the offline inbox (`docs/design.md` section 9): keys every store shares, plus
/// `kind` (`memory`, `redis`, `disk`, or one registered in code) and that kind's own keys.
///
/// ```toml
/// [offline]
/// enabled = true
/// kind = "disk"                 # memory (one node) | redis | disk (the owning node's file)
/// path = "/var/lib/impush/offline-n1.redb"
/// ttl = "2days"
/// max_per_client = 100
/// max_bytes = 1048576
/// require_ack = true            # false: a stored message leaves once written to a socket
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OfflineConfig {
    /// Keep point-to-point messages for receivers that are not connected.
    pub enabled: bool,
    /// How long a stored message is kept after it was sent (default 2 days).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most stored messages per client; the oldest are dropped beyond it (default 100).
    pub max_per_client: usize,
    /// Most stored bytes per client; the oldest are dropped beyond it (default 1 MiB).
    pub max_bytes: usize,
    /// Stored messages leave the inbox when the client acks them (default); with `false`,
    /// once written to one of its sockets.
    pub require_ack: bool,
    /// `kind` and the store's own keys.
    #[serde(flatten)]
    pub store: Section,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        let limits = InboxLimits::default();
        Self {
            enabled: false,
            ttl: limits.ttl,
            max_per_client: limits.max_per_client,
            max_bytes: limits.max_bytes,
            require_ack: true,
            store: Section::default(),
        }
    }
}

impl OfflineConfig {
    /// The bounds every inbox is kept within.
    pub fn limits(&self) -> InboxLimits {
        InboxLimits {
            ttl: self.ttl,
            max_per_client: self.max_per_client,
            max_bytes: self.max_bytes,
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
    /// `[history]`: channel and broadcast history for resume (`docs/design.md` section 15).
    pub history: HistoryConfig,
    /// `[webhooks]`: hooks POSTed to the business (`docs/design.md` section 17).
    pub webhooks: WebhooksConfig,
    /// `[admin]`: the admin console (`docs/design.md` section 17).
    pub admin: AdminConfig,
}

const SECTIONS: &[&str] = &[
    "node", "cluster", "auth", "broker", "presence", "limits", "channels", "offline", "history",
    "webhooks", "admin",
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
        check_bounds(self)?;
        if let Err((key, why)) = self.webhooks.check() {
            return bad(&key, &why);
        }
        if let Err((key, why)) = self.admin.check(&self.auth, MAX_DURATION) {
            return bad(&key, &why);
        }
        let o = &self.offline;
        if o.enabled {
            if o.ttl.is_zero() || o.ttl > Duration::from_secs(365 * 24 * 3600) {
                return bad("offline.ttl", "must be between 1ms and 365 days");
            }
            if o.max_per_client == 0 || o.max_per_client > 1_000_000 {
                return bad("offline.max_per_client", "must be between 1 and 1000000");
            }
            if o.max_bytes == 0 {
                return bad("offline.max_bytes", "must be greater than zero");
            }
            // A connecting client is handed its whole inbox at once: an inbox its outbound
            // queue cannot hold would close it with 4008 on every connect, and it would never
            // drain. Half the queue's bytes leaves room for frame envelopes and live messages.
            if o.max_per_client >= self.limits.outbound_queue {
                return bad(
                    "offline.max_per_client",
                    &format!(
                        "must be below limits.outbound_queue ({}): a connecting client gets its \
                         whole inbox at once; raise limits.outbound_queue to store more",
                        self.limits.outbound_queue
                    ),
                );
            }
            if o.max_bytes > self.limits.outbound_queue_bytes / 2 {
                return bad(
                    "offline.max_bytes",
                    &format!(
                        "must be at most half of limits.outbound_queue_bytes ({}): a connecting \
                         client gets its whole inbox at once; raise limits.outbound_queue_bytes \
                         to store more",
                        self.limits.outbound_queue_bytes
                    ),
                );
            }
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
            history: self.history.clone(),
        }
    }
}

/// The longest any duration key may be. Longer values are mistakes, and would overflow the
/// deadline arithmetic and millisecond casts that timers are built from.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Values that would make a node panic or spin at run time, refused at start-up: durations that
/// are zero (timers firing back to back, intervals that panic) or over [`MAX_DURATION`], limits
/// that would refuse everything, and `allowed_origins` that no browser could ever send.
fn check_bounds(c: &Config) -> Result<()> {
    let bad = |key: &str, why: &str| Err(Error::Config(format!("config key `{key}`: {why}")));
    let l = &c.limits;
    for (key, d, zero_ok) in [
        ("auth.token_ttl", c.auth.token_ttl, false),
        ("cluster.node_lease", c.cluster.node_lease, false),
        ("limits.ping_interval", l.ping_interval, false),
        ("limits.pong_timeout", l.pong_timeout, false),
        ("limits.sse_keep_alive", l.sse_keep_alive, false),
        ("limits.shutdown_grace", l.shutdown_grace, true),
        ("limits.header_read_timeout", l.header_read_timeout, false),
        ("limits.keep_alive_timeout", l.keep_alive_timeout, false),
        ("limits.request_body_timeout", l.request_body_timeout, false),
        ("limits.event_group_idle", l.event_group_idle, false),
        ("limits.idempotency_window", l.idempotency_window, false),
        ("cluster.drain_period", c.cluster.drain_period, false),
        (
            "cluster.rebalance_period",
            c.cluster.rebalance_period,
            false,
        ),
        ("cluster.move_grace", c.cluster.move_grace, false),
        ("history.ttl", c.history.ttl, false),
    ] {
        if d.is_zero() && !zero_ok {
            return bad(key, "must be greater than zero");
        }
        if d > MAX_DURATION {
            return bad(key, "must be at most 7days");
        }
    }
    for (key, v) in [
        ("limits.max_connections", l.max_connections),
        ("limits.max_event_groups", l.max_event_groups),
        (
            "limits.max_receivers_per_message",
            l.max_receivers_per_message,
        ),
        ("limits.max_clients_per_join", l.max_clients_per_join),
        ("limits.max_batch_messages", l.max_batch_messages),
        ("limits.inbound_rate", l.inbound_rate as usize),
        ("limits.inbound_burst", l.inbound_burst as usize),
        ("limits.max_unacked", l.max_unacked),
        ("limits.idempotency_max_ids", l.idempotency_max_ids),
        ("history.max_bytes", c.history.max_bytes),
    ] {
        if v == 0 {
            return bad(key, "must be greater than zero");
        }
    }
    if let Some(o) = l.allowed_origins.iter().find(|o| !is_origin(o)) {
        return bad(
            "limits.allowed_origins",
            // Debug-quoted: the value is the user's and may hold a newline; the error stays
            // one line.
            &format!("{o:?} is not an origin like `https://chat.example.com` (scheme://host[:port], no path, no wildcard)"),
        );
    }
    Ok(())
}

/// `scheme://host[:port]` (a trailing `/` is tolerated), or `null`: what browsers send as
/// `Origin`.
fn is_origin(o: &str) -> bool {
    let o = o.strip_suffix('/').unwrap_or(o);
    let Some((scheme, host)) = o.split_once("://") else {
        return o == "null";
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#' | '*' | '@'))
}
