//! Configuration sections shared by nodes and helpers, and the loader (TOML file overlaid by
//! `IMPUSH_SECTION__KEY` environment variables, via figment).
//!
//! The root structs live where all their sections are known: `impush_server::Config` for a node,
//! `impush_helper::HelperConfig` for a helper. Broker and presence sections are in
//! `impush-brokers`, next to the backends they select. Every loading error is turned into one line
//! naming the offending key and where it came from.

use std::{fmt, net::SocketAddr, path::Path, time::Duration};

use figment::{
    error::Kind,
    providers::{Env, Format, Toml},
    Figment,
};
use serde::{de::DeserializeOwned, Deserialize, Deserializer};

use crate::{Error, NodeEntry, NodeId, PartitionerKind, Result};

/// Prefix of environment overrides: `IMPUSH_NODE__LISTEN=...` sets `node.listen`.
pub const ENV_PREFIX: &str = "IMPUSH_";

/// `[node]`: this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id, one of `cluster.nodes` (default `n1`).
    pub id: NodeId,
    /// Address to listen on (default `127.0.0.1:6001`).
    pub listen: SocketAddr,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: NodeId::new("n1").expect("`n1` is a valid node id"),
            listen: SocketAddr::from(([127, 0, 0, 1], 6001)),
        }
    }
}

/// `[cluster]`: the static node list and the partitioner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `rendezvous` (default) or `modulo`.
    pub partitioner: PartitionerKind,
    /// All nodes. Empty means "this node alone, advertised as `ws://<listen address>`".
    pub nodes: Vec<NodeEntry>,
    /// How long a node's presence entries outlive its last heartbeat. A node that dies without
    /// a goodbye has its clients dropped (and offline events published) within this time.
    /// Nodes heartbeat every third of it.
    #[serde(with = "humantime_serde")]
    pub node_lease: Duration,
    /// How long a draining node (SIGTERM, or `POST /api/v1/node/drain`) takes to move its
    /// clients to their next node: it closes them with 1012 spread over this time, jittered,
    /// so they reconnect at a bounded rate (default `10s`).
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// How long a node takes to send clients home once their owner is live again: the same
    /// gradual 1012 closes (default `10s`).
    #[serde(with = "humantime_serde")]
    pub rebalance_period: Duration,
    /// How long a connection closed to move its client (drain, return home) still counts in
    /// presence, so the client reconnecting elsewhere never looks offline (default `5s`).
    #[serde(with = "humantime_serde")]
    pub move_grace: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            partitioner: PartitionerKind::default(),
            nodes: Vec::new(),
            node_lease: Duration::from_secs(10),
            drain_period: Duration::from_secs(10),
            rebalance_period: Duration::from_secs(10),
            move_grace: Duration::from_secs(5),
        }
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // figment parses env values as TOML-ish, so `IMPUSH_AUTH__SECRET=111111` arrives as an
        // integer; a secret is text, so take numbers as their digits instead of failing.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            U(u64),
        }
        Ok(Secret(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::U(u) => u.to_string(),
        }))
    }
}

/// `[auth]`: token signing secret, HTTP API key, token lifetime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC key for connect tokens, shared by all nodes and helpers. Generated when absent
    /// (single node only).
    pub secret: Option<Secret>,
    /// Bearer key for the HTTP API. Generated when absent.
    pub api_key: Option<Secret>,
    /// How long a connect token stays valid (default `30s`).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secret: None,
            api_key: None,
            token_ttl: Duration::from_secs(30),
        }
    }
}

/// `[limits]`: sizes, queues and timers that keep a node's memory and CPU bounded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest inbound WebSocket frame/message; larger closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Outbound queue per connection, in frames; a full queue closes the socket with 4008.
    pub outbound_queue: usize,
    /// Outbound queue per connection, in bytes; exceeding it closes the socket with 4008.
    pub outbound_queue_bytes: usize,
    /// Interval of server WebSocket pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection silent for `ping_interval + pong_timeout` is closed as dead.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Largest connect metadata, in bytes of JSON.
    pub max_metadata_bytes: usize,
    /// Most unexpired connect tokens a node remembers (single-use check).
    pub max_pending_tokens: usize,
    /// Most receipt-requesting messages per connection awaiting the client's ack.
    pub max_pending_acks: usize,
    /// With the offline inbox on and `offline.require_ack`: most point-to-point messages a
    /// connection may hold written but unacked. Past it the node stops writing that
    /// connection's frames until acks come (flow control, never a drop; the outbound queue
    /// still bounds what waits).
    pub max_unacked: usize,
    /// Connections allowed per client id; the oldest is closed with 4009 beyond it.
    /// `0` means unlimited (the default).
    pub max_connections_per_client: usize,
    /// Largest HTTP API request body.
    pub max_body_bytes: usize,
    /// How long shutdown waits for connections to close.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Bytes of outgoing frames a connection gathers before one write to the socket. Larger
    /// batches fewer syscalls under load; the buffer is per connection and keeps the size it
    /// reached, so idle connections (which never fill it) cost nothing either way.
    pub write_buffer: usize,
    /// Interval of keep-alive comments on the Server-Sent Events stream.
    #[serde(with = "humantime_serde")]
    pub sse_keep_alive: Duration,
    /// Most TCP connections open on this node at once: HTTP requests, SSE streams and WebSocket
    /// sessions together. Beyond it a new connection is answered `503` at once, without reading
    /// its request, and closed (`impush_http_connections_refused_total`). Keep it under the
    /// process's open-files limit, leaving room for broker connections (default 19000).
    pub max_connections: usize,
    /// A connection must send a complete request head within this time of opening, and within
    /// this time of the first byte of each later request; otherwise it is closed (default `10s`).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection (between requests) is closed after this long (default `60s`).
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// A request body must arrive whole within this time of its head; otherwise the request is
    /// answered `408` and the connection closed (default `30s`).
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// Web origins allowed to open WebSockets, e.g. `["https://chat.example.com"]`: an upgrade
    /// request with another `Origin` header gets `403` before the upgrade. Empty (the default)
    /// allows any; a request without `Origin` (not from a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Most distinct `?group=` names of `GET /api/v1/events` this node serves at once; a new
    /// group beyond it gets `429` (default 100). With the memory broker each group keeps its
    /// own queue of events (about 32 bytes per event) while it has no reader connected.
    pub max_event_groups: usize,
    /// How long a `?group=` keeps its place after its last reader on this node left (default
    /// `60s`); then a new group may take it.
    #[serde(with = "humantime_serde")]
    pub event_group_idle: Duration,
    /// Most receivers (`to`) in one HTTP API message, and in all the messages of one batch
    /// together; more is refused with `413` (default 100000).
    pub max_receivers_per_message: usize,
    /// Most messages in one `POST /api/v1/messages/batch`; more is refused with `413`
    /// (default 1000).
    pub max_batch_messages: usize,
    /// Most client ids in one HTTP API channel join, and most channels in one leave of several
    /// channels; more is refused with `413` (default 10000).
    pub max_clients_per_join: usize,
    /// Most frames per second a client may send (averaged over `inbound_burst` frames); a
    /// client over it is closed with 1008 (default 20).
    pub inbound_rate: u32,
    /// How many frames a client may send at once before `inbound_rate` applies (default 40).
    pub inbound_burst: u32,
    /// WebSocket connects per second this node accepts (a second's worth at once); beyond it
    /// `/ws` answers `503` with `Retry-After` before any token work. `0` (the default) means no
    /// limit.
    pub connect_rate: u32,
    /// WebSocket connects per second one IP address may make; beyond it `/ws` answers `429`
    /// with `Retry-After`. `0` (the default) means no limit (clients behind one NAT share an
    /// address).
    pub connect_rate_per_ip: u32,
    /// How long a node remembers the id of a point-to-point message it delivered, and a
    /// stream's sequencer the id of a publication it numbered: a send retried with the same
    /// `Idempotency-Key` or `id` within it is not delivered twice (default `5m`;
    /// `docs/design.md` section 7).
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Most ids a node remembers for that, per kind (messages, publications): past it the
    /// oldest are forgotten before their window ends, so a node that takes more than this many
    /// messages per window dedupes over a shorter time. About 140 bytes each (measured with
    /// 32-character ids: the default 65536 hold about 9 MB per kind when full).
    pub idempotency_max_ids: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(20),
            max_metadata_bytes: 1024,
            max_pending_tokens: 1_000_000,
            max_pending_acks: 256,
            max_unacked: 256,
            max_connections_per_client: 0,
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            sse_keep_alive: Duration::from_secs(15),
            write_buffer: 16 * 1024,
            max_connections: 19_000,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            max_event_groups: 100,
            event_group_idle: Duration::from_secs(60),
            max_receivers_per_message: 100_000,
            max_batch_messages: 1000,
            max_clients_per_join: 10_000,
            inbound_rate: 20,
            inbound_burst: 40,
            connect_rate: 0,
            connect_rate_per_ip: 0,
            idempotency_window: Duration::from_secs(300),
            idempotency_max_ids: 64 * 1024,
        }
    }
}

/// `[history]`: what nodes keep of channel and broadcast streams so a reconnecting client
/// resumes where it left off (`docs/design.md` section 15). Nodes and helpers read it: with
/// history, a publication goes to its stream's sequencer (a node) to be numbered first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Publications kept per channel (and for the broadcast stream); `0` keeps none and
    /// publishes without positions, as before (default 100).
    pub size: usize,
    /// How long a publication is kept (default `5m`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Bytes of kept frames per node, all streams together; the oldest go first beyond it
    /// (default 64 MiB).
    pub max_bytes: usize,
}

impl HistoryConfig {
    /// Whether publications are numbered and kept.
    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[channels]`: channel membership policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Keep a client's memberships after its last connection closes, until it leaves
    /// (default: they end `linger` after it).
    pub persist: bool,
    /// Without `persist`, how long a client whose last connection closed keeps its
    /// memberships: one that reconnects within it (a dropped link) is still in its channels and
    /// can resume them (`docs/design.md` section 15). `0s` ends them at once (default `60s`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            persist: false,
            linger: Duration::from_secs(60),
        }
    }
}

/// Figment over an optional TOML file and the `IMPUSH_` environment, restricted to `sections`.
///
/// Environment variables whose first segment is not one of `sections` are ignored, so unrelated
/// variables such as `IMPUSH_TEST_REDIS_URL` never reach the config.
pub fn figment(file: Option<&Path>, sections: &'static [&'static str]) -> Figment {
    let mut fig = Figment::new();
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    fig.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(move |key| {
                let first = key.as_str().split("__").next().unwrap_or("");
                key.as_str().contains("__")
                    && sections.iter().any(|s| s.eq_ignore_ascii_case(first))
            })
            .split("__"),
    )
}

/// Extracts `T` from [`figment`], turning any error into a one-line [`Error::Config`].
///
/// # Errors
/// [`Error::Config`] naming the key and its source.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    sections: &'static [&'static str],
) -> Result<T> {
    if let Some(path) = file {
        if !path.is_file() {
            return Err(Error::Config(format!(
                "config file {} does not exist or is not a file",
                path.display()
            )));
        }
    }
    figment(file, sections)
        .extract()
        .map_err(|e| Error::Config(describe(&e)))
}

/// One line naming the key, the problem and where the value came from.
pub fn describe(err: &figment::Error) -> String {
    let mut path = err.path.clone();
    match &err.kind {
        Kind::MissingField(f) => path.push(f.to_string()),
        Kind::UnknownField(f, _) => path.push(f.clone()),
        _ => {}
    }
    let origin = err.metadata.as_ref().map(|m| {
        // figment names env keys `NODE.ID`; show the variable the user actually sets.
        let native = if m.name.contains("environment") {
            format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
        } else {
            path.join(".")
        };
        match (&m.source, native.is_empty()) {
            (Some(src), true) => src.to_string(),
            (Some(src), false) => format!("{native} in {src}"),
            (None, _) => native,
        }
    });
    // Parser errors come with a multi-line source excerpt (`1 | ...`, `^`); keep the prose.
    let problem = err
        .kind
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect::<Vec<_>>()
        .join(": ");
    let subject = if path.is_empty() {
        "config".to_owned()
    } else {
        format!("config key `{}`", path.join("."))
    };
    let line = match origin {
        Some(o) => format!("{subject}: {problem} (from {o})"),
        None => format!("{subject}: {problem}"),
    };
    // Keys and values are the user's and may hold line breaks (a quoted TOML key can): the
    // message stays one line.
    line.replace('\n', "\\n").replace('\r', "\\r")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        #[serde(default)]
        node: NodeConfig,
        #[serde(default)]
        auth: AuthConfig,
        #[serde(default)]
        #[allow(dead_code)]
        limits: LimitsConfig,
    }

    const SECTIONS: &[&str] = &["node", "auth", "limits"];

    #[test]
    fn file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "impush.toml",
                "[node]\nid = \"a1\"\nlisten = \"127.0.0.1:7000\"\n[auth]\ntoken_ttl = \"5s\"\n",
            )?;
            jail.set_env("IMPUSH_NODE__LISTEN", "127.0.0.1:7001");
            jail.set_env("IMPUSH_AUTH__SECRET", "111111");
            jail.set_env("IMPUSH_TEST_REDIS_URL", "redis://ignored");
            let root: Root = load(Some(Path::new("impush.toml")), SECTIONS).unwrap();
            assert_eq!(root.node.id.as_str(), "a1");
            assert_eq!(root.node.listen.port(), 7001);
            assert_eq!(root.auth.token_ttl, Duration::from_secs(5));
            assert_eq!(root.auth.secret.unwrap().expose(), "111111");
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[limits]\nmax_frame_bytes = \"big\"\n")?;
            let err = load::<Root>(Some(Path::new("bad.toml")), SECTIONS).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("limits.max_frame_bytes"), "{msg}");
            assert!(!msg.contains('\n'));

            jail.create_file("typo.toml", "[limits]\nmax_frame_bytez = 1\n")?;
            let msg = load::<Root>(Some(Path::new("typo.toml")), SECTIONS)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("limits.max_frame_bytez"), "{msg}");

            jail.set_env("IMPUSH_NODE__ID", "bad id!");
            let msg = load::<Root>(None, SECTIONS).unwrap_err().to_string();
            assert!(msg.contains("node.id"), "{msg}");
            assert!(msg.contains("IMPUSH_NODE__ID"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<Root>(Some(Path::new("/nonexistent/impush.toml")), SECTIONS).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
