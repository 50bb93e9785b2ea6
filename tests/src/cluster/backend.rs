//! [`Backend`]: what a backbone's cluster suite runs over: the node binary, its config
//! sections, where the shared broker is, the helper's registry, and optionally a private
//! broker instance the fault cases may stop and freeze.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use impush_helper::Backends;

use super::brokers::PrivateBroker;

/// Starts a private broker instance, or `None` when it cannot be installed here (skipped).
pub type StartPrivate = fn() -> Option<Box<dyn PrivateBroker>>;

/// Starts a private Kafka-protocol broker on `port` that advertises `advertise`, or `None`
/// when it is not installed here (skipped).
pub type StartAdvertising = fn(port: u16, advertise: SocketAddr) -> Option<Box<dyn PrivateBroker>>;

/// How a backbone's clients find the broker, and so how a node's link is put behind a proxy.
#[derive(Clone, Copy, Debug, Default)]
pub enum BrokerLink {
    /// They connect to the address in the URL (Redis, RabbitMQ, NATS): the cut node's URL
    /// names the proxy, in front of the shared broker.
    #[default]
    Url,
    /// The broker advertises where to connect (Kafka): a private broker that advertises the
    /// proxy, which faults only the cut node's connections, told by their client id.
    KafkaAdvertised(StartAdvertising),
}

/// Deletes what a broker at `url` keeps for a cluster's `prefix`; see [`Backend::cleanup`].
pub type Cleanup = fn(url: &str, prefix: &str);

/// A backbone the cluster cases run over: the node binary, its config sections, where the
/// shared broker is, and optionally a private instance the fault cases may stop and freeze.
///
/// Built with [`Backend::new`] and the builder methods; see the module docs of
/// [`cluster`](crate::cluster) for a whole example.
pub struct Backend {
    pub(super) name: &'static str,
    pub(super) bin: PathBuf,
    pub(super) sections: fn(url: &str) -> String,
    pub(super) shared_url: fn() -> Option<String>,
    pub(super) private: Option<StartPrivate>,
    pub(super) offline: String,
    pub(super) shared_offline: bool,
    pub(super) helper_backends: fn() -> Backends,
    pub(super) cleanup: Option<Cleanup>,
    pub(super) refusal_within: Duration,
    pub(super) link: BrokerLink,
}

impl Backend {
    /// A backend named `name` (for messages), whose nodes run `bin` (pass
    /// `env!("CARGO_BIN_EXE_<your binary>")` from an integration test of the crate that builds
    /// it).
    ///
    /// `sections(url)` is the TOML every node and the helper get for a broker at `url`: a
    /// `[broker]` table first (the harness adds `prefix` to it, one per cluster), then
    /// `[presence]` and any other table the backend needs, except `[node]`, `[cluster]`,
    /// `[auth]`, `[limits]` and `[offline]`, which the harness writes. `shared_url()` is the
    /// broker the cases share, or `None` to skip them (use
    /// [`env_or_skip`](crate::env_or_skip)).
    pub fn new(
        name: &'static str,
        bin: impl Into<PathBuf>,
        sections: fn(url: &str) -> String,
        shared_url: fn() -> Option<String>,
    ) -> Self {
        Self {
            name,
            bin: bin.into(),
            sections,
            shared_url,
            private: None,
            offline: "kind = \"memory\"".into(),
            shared_offline: false,
            helper_backends: Backends::with_defaults,
            cleanup: None,
            refusal_within: Duration::from_secs(4),
            link: BrokerLink::Url,
        }
    }

    /// A private instance of the broker that the `private_broker` cases stop, freeze and
    /// restart. Without one, leave that group out of `cluster_suite!`.
    pub fn private(mut self, start: StartPrivate) -> Self {
        self.private = Some(start);
        self
    }

    /// The offline store's keys for `[offline]` (after `enabled`) when a case turns the inbox
    /// on: `{dir}` becomes the cluster's directory and `{node}` the node id. Default
    /// `kind = "memory"`.
    ///
    /// Whether that store is shared by every node (see [`Backend::shared_offline`]) is taken
    /// from the kind: `redis` is, `memory` and `disk` are kept per node.
    pub fn offline(mut self, keys: impl Into<String>) -> Self {
        self.offline = keys.into();
        self.shared_offline = self
            .offline
            .lines()
            .any(|l| l.replace(' ', "") == "kind=\"redis\"");
        self
    }

    /// Says whether the offline store of [`Backend::offline`] is one store every node reads
    /// (`true`: a message waiting for a client reaches it on any node at once) or one per node
    /// (`false`: what a node stored waits for that node, `docs/design.md` section 16). Call it
    /// after [`Backend::offline`] for a store registered in code; the built-in kinds need not.
    pub fn shared_offline(mut self, shared: bool) -> Self {
        self.shared_offline = shared;
        self
    }

    /// The registry the helper in the test process is built with: the nodes' own (a custom
    /// broker registers its `kind` here as in its binary). Default
    /// [`Backends::with_defaults`].
    pub fn helper_backends(mut self, backends: fn() -> Backends) -> Self {
        self.helper_backends = backends;
        self
    }

    /// Called when a cluster is dropped, after its nodes stopped, with the broker URL and the
    /// cluster's prefix: deletes what the broker keeps for a prefix (a stream, a topic). Best
    /// effort: it must not panic or hang, the broker may be down.
    pub fn cleanup(mut self, cleanup: Cleanup) -> Self {
        self.cleanup = Some(cleanup);
        self
    }

    /// How quickly a node refuses a send (503) while the broker is down: what the `[broker]`
    /// timeouts in `sections` allow, plus slack. Default 4 s.
    pub fn refusal_within(mut self, within: Duration) -> Self {
        self.refusal_within = within;
        self
    }

    /// How the clients find the broker, for the cases that put a node's broker link behind a
    /// proxy ([`Backend::proxied_broker`]). Default [`BrokerLink::Url`].
    pub fn broker_link(mut self, link: BrokerLink) -> Self {
        self.link = link;
        self
    }

    /// The name given to [`Backend::new`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The shared broker's URL, or `None` (the case is skipped).
    pub fn shared_url(&self) -> Option<String> {
        (self.shared_url)()
    }

    /// Whether the offline store is shared by every node (see [`Backend::shared_offline`]).
    pub fn offline_is_shared(&self) -> bool {
        self.shared_offline
    }

    /// See [`Backend::refusal_within`].
    pub fn refusal_bound(&self) -> Duration {
        self.refusal_within
    }

    /// Starts a private broker, or `None` when it is not installed here (skipped).
    ///
    /// # Panics
    /// When the backend has none: a suite that lists the `private_broker` group needs
    /// [`Backend::private`].
    pub fn start_private(&self) -> Option<Box<dyn PrivateBroker>> {
        let Some(start) = self.private else {
            panic!(
                "[{}] has no private broker (Backend::private): leave `private_broker` out of \
                 its cluster_suite! groups",
                self.name
            )
        };
        tokio::task::block_in_place(start)
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("bin", &self.bin)
            .field("private", &self.private.is_some())
            .field("offline", &self.offline)
            .field("shared_offline", &self.shared_offline)
            .finish_non_exhaustive()
    }
}
