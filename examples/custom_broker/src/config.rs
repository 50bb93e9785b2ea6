//! [`NatsConfig`]: the `[broker] kind = "nats"` section.

use std::{fmt, time::Duration};

use serde::Deserialize;

/// Connection, retention and redelivery settings of the NATS broker.
///
/// ```toml
/// [broker]
/// kind = "nats"
/// url = "nats://user:password@127.0.0.1:4222"  # or nats://TOKEN@host; a list: "nats://a:4222,nats://b:4222"
/// prefix = "impush"            # shared key: topics `impush.inbox.n1`, ... → the stream `impush`
/// stream_max_msgs = 1000000    # retention of the stream (oldest dropped first)
/// stream_max_bytes = 1073741824  # 1 GiB; -1 for no limit
/// stream_max_age = "24h"
/// storage = "file"             # or "memory"
/// ack_wait = "30s"             # an unacked queue delivery goes to another member after this
/// group_idle_ttl = "7d"        # delete groups without a member for this long (default: never)
/// ```
///
/// Every key but `url` has a default. The password or token in `url` never reaches logs or
/// error messages ([`NatsConfig::redacted_url`]).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://[user:password@|token@]host:port`, or several separated by commas (a NATS
    /// cluster); `tls://` for TLS.
    pub url: String,
    /// Messages the stream keeps at most; the oldest are dropped first (default 1,000,000).
    /// The stream holds every topic of the cluster, fanout ones too (see the crate docs).
    pub stream_max_msgs: i64,
    /// Bytes the stream keeps at most (default 1 GiB); `-1` for no limit.
    pub stream_max_bytes: i64,
    /// How long the stream keeps a message (default `24h`): a queue group with no member
    /// (a node that is down) finds what was published for it within this window.
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Duration,
    /// Where the stream lives on the NATS server (default `file`: survives a server restart).
    pub storage: Storage,
    /// How long a queue delivery may stay unacked before NATS hands it to another member of
    /// the group (default `30s`, at least `3s`). This is for members that die: one that leaves
    /// gives back what it held, redelivered after 3 s.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Queue deliveries a group may hold unacked at once (default 10,000); NATS pauses the
    /// group at this many.
    pub max_ack_pending: i64,
    /// Delete a queue group's consumer after it has had no member for this long (default:
    /// never). For clusters where business services make up group names (SSE `?group=`); a
    /// node that stays down longer than this loses what was published for it meanwhile.
    #[serde(with = "humantime_serde::option")]
    pub group_idle_ttl: Option<Duration>,
    /// Messages a queue member asks for per pull (default 64).
    pub prefetch: usize,
    /// Messages a fanout subscription buffers for a subscriber that does not read (default
    /// 16384); past it, messages are dropped and the subscriber gets `Error::Lagged`.
    pub fanout_buffer: usize,
    /// How long a publish (until the server stored it), a JetStream request, `ping` and
    /// connecting may take before failing as unavailable (default `5s`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// Where the stream is kept (`storage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk.
    #[default]
    File,
    /// In the server's memory.
    Memory,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream_max_msgs: 1_000_000,
            stream_max_bytes: 1 << 30,
            stream_max_age: Duration::from_secs(24 * 3600),
            storage: Storage::File,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            group_idle_ttl: None,
            prefetch: 64,
            fanout_buffer: 16 * 1024,
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsConfig {
    /// The defaults with `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The URL with every password or token replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        impush_core::redact::redact_url(&self.url)
    }

    /// The server URLs (`url` split at commas).
    pub(crate) fn servers(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("stream_max_msgs", &self.stream_max_msgs)
            .field("stream_max_bytes", &self.stream_max_bytes)
            .field("stream_max_age", &self.stream_max_age)
            .field("storage", &self.storage)
            .field("ack_wait", &self.ack_wait)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("group_idle_ttl", &self.group_idle_ttl)
            .field("prefetch", &self.prefetch)
            .field("fanout_buffer", &self.fanout_buffer)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let c = NatsConfig::from_url("nats://alice:hunter2@db:4222");
        assert_eq!(c.redacted_url(), "nats://alice:***@db:4222");
        assert!(!format!("{c:?}").contains("hunter2"));
        let shown = |url: &str| NatsConfig::from_url(url).redacted_url();
        assert_eq!(shown("nats://s3cr3t@h:1"), "nats://***@h:1");
        assert_eq!(shown("tls://u:p@ss@h:1"), "tls://u:***@h:1");
        assert_eq!(shown("nats://h:1"), "nats://h:1");
        assert_eq!(shown("h:1"), "h:1");
        let many = NatsConfig::from_url("nats://a:x@h1:1, nats://tok@h2:2");
        assert_eq!(many.redacted_url(), "nats://a:***@h1:1, nats://***@h2:2");
        assert_eq!(many.servers(), ["nats://a:x@h1:1", "nats://tok@h2:2"]);
    }
}
