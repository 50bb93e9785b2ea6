//! [`Backends`]: the registry of broker, presence store and offline store factories, each keyed
//! by `kind` (`docs/design.md` section 3, "Backends are plug-ins").
//!
//! A factory gets its own options (deserialised from the section into the factory's config
//! type) and a [`BackendContext`] (the cluster's prefix, nodes, lease, the broker and presence
//! sections, for presence the connected broker, for offline stores the inbox limits), and
//! returns a connected backend. The server and the helper hold a `Backends` and never match on
//! kinds themselves, so a kind registered in code works everywhere a built-in one does (the
//! helper starts a broker and a presence store; only a node opens the offline store).

use std::{collections::BTreeMap, fmt, future::Future, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use impush_core::{
    Broker, Cluster, Error, InboxLimits, NodeId, OfflineStore, PresenceStore, Result,
};
use serde::de::DeserializeOwned;

use crate::section::{Section, DEFAULT_PREFIX};

/// What a factory may use besides its own options.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackendContext {
    /// The cluster's topic/key prefix (`broker.prefix`, default `impush`). A presence section
    /// with its own `prefix` gets that one instead.
    pub prefix: String,
    /// The node this backend serves; `None` in a helper.
    pub node: Option<NodeId>,
    /// Every node of the cluster, in configuration order.
    pub nodes: Vec<NodeId>,
    /// The cluster (nodes and partitioner: which node owns a client), when known.
    pub cluster: Option<Cluster>,
    /// `cluster.node_lease`: how long a silent node counts as alive.
    pub node_lease: Duration,
    /// The `[broker]` section, for presence backends that default from it (Redis presence takes
    /// the broker's URL).
    pub broker_section: Section,
    /// The connected broker; set when a presence store is created (the `cluster` store talks to
    /// the other nodes over it), `None` while the broker itself is being created.
    pub broker: Option<Arc<dyn Broker>>,
    /// The `[presence]` section (offline stores may default from it, e.g. Redis' URL).
    pub presence_section: Section,
    /// The bounds of every offline inbox (`[offline]` ttl, max_per_client, max_bytes).
    pub inbox_limits: InboxLimits,
}

impl BackendContext {
    /// A context for the cluster whose `[broker]` section is `broker_section`.
    pub fn new(broker_section: &Section) -> Self {
        Self {
            prefix: broker_section.prefix().unwrap_or(DEFAULT_PREFIX).to_owned(),
            node: None,
            nodes: Vec::new(),
            cluster: None,
            node_lease: Duration::from_secs(10),
            broker_section: broker_section.clone(),
            broker: None,
            presence_section: Section::default(),
            inbox_limits: InboxLimits::default(),
        }
    }

    /// Sets the node this backend serves (on a node; helpers leave it unset).
    pub fn with_node(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// Sets the cluster (its node list and partitioner) and the node lease.
    pub fn with_cluster(mut self, cluster: &Cluster, node_lease: Duration) -> Self {
        self.nodes = cluster.nodes().iter().map(|n| n.id.clone()).collect();
        self.cluster = Some(cluster.clone());
        self.node_lease = node_lease;
        self
    }
}

type Connect<T> = BoxFuture<'static, Result<Arc<T>>>;
type Factory<T> = Arc<dyn Fn(&Section, &str, BackendContext) -> Result<Connect<T>> + Send + Sync>;
/// Deserialises a section's options as the kind's config type and nothing more: a section
/// that is not used (`[offline]` with `enabled = false`) is still checked for typos without
/// starting anything.
type Check = Arc<dyn Fn(&Section, &str) -> Result<()> + Send + Sync>;

fn check_of<C: DeserializeOwned>() -> Check {
    Arc::new(|section, name| section.options::<C>(name).map(drop))
}

enum Slot<T: ?Sized> {
    Ready(Factory<T>, Check),
    /// Known kind whose crate this build leaves out; the Cargo feature has the kind's name.
    NotCompiled,
}

impl<T: ?Sized> Clone for Slot<T> {
    fn clone(&self) -> Self {
        match self {
            Slot::Ready(f, c) => Slot::Ready(f.clone(), c.clone()),
            Slot::NotCompiled => Slot::NotCompiled,
        }
    }
}

/// The broker, presence store and offline store kinds a server or helper can be configured with.
///
/// ```
/// use impush_brokers::{Backends, Section};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> impush_core::Result<()> {
/// let backends = Backends::with_defaults();
/// let section = Section::new("memory");
/// let broker = backends.connect_broker(&section, &impush_brokers::BackendContext::new(&section)).await?;
/// broker.ping().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Backends {
    brokers: BTreeMap<String, Slot<dyn Broker>>,
    presence: BTreeMap<String, Slot<dyn PresenceStore>>,
    offline: BTreeMap<String, Slot<dyn OfflineStore>>,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends")
            .field("brokers", &self.broker_kinds())
            .field("presence", &self.presence_kinds())
            .field("offline", &self.offline_kinds())
            .finish()
    }
}

impl Default for Backends {
    fn default() -> Self {
        Self::with_defaults()
    }
}

impl Backends {
    /// No kind at all (not even `memory`): for a build that wants full control.
    pub fn empty() -> Self {
        Self {
            brokers: BTreeMap::new(),
            presence: BTreeMap::new(),
            offline: BTreeMap::new(),
        }
    }

    /// Registers (or replaces) broker kind `kind`. `factory` gets the section's options as `C`
    /// (make it `#[serde(deny_unknown_fields)]` so typos are refused) and the context.
    pub fn register_broker<C, F, Fut, B>(&mut self, kind: &str, factory: F) -> &mut Self
    where
        C: DeserializeOwned + Send + 'static,
        F: Fn(C, BackendContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<B>> + Send + 'static,
        B: Broker,
    {
        let f: Factory<dyn Broker> = Arc::new(move |section, name, ctx| {
            let cfg = section.options::<C>(name)?;
            let fut = factory(cfg, ctx);
            Ok(Box::pin(async move {
                Ok(Arc::new(fut.await?) as Arc<dyn Broker>)
            }))
        });
        self.brokers
            .insert(kind.to_owned(), Slot::Ready(f, check_of::<C>()));
        self
    }

    /// Registers (or replaces) presence kind `kind`; see [`Backends::register_broker`].
    pub fn register_presence<C, F, Fut, P>(&mut self, kind: &str, factory: F) -> &mut Self
    where
        C: DeserializeOwned + Send + 'static,
        F: Fn(C, BackendContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<P>> + Send + 'static,
        P: PresenceStore,
    {
        let f: Factory<dyn PresenceStore> = Arc::new(move |section, name, ctx| {
            let cfg = section.options::<C>(name)?;
            let fut = factory(cfg, ctx);
            Ok(Box::pin(async move {
                Ok(Arc::new(fut.await?) as Arc<dyn PresenceStore>)
            }))
        });
        self.presence
            .insert(kind.to_owned(), Slot::Ready(f, check_of::<C>()));
        self
    }

    /// Registers (or replaces) offline store kind `kind`; see [`Backends::register_broker`].
    /// The factory builds the store with `ctx.inbox_limits`.
    pub fn register_offline<C, F, Fut, O>(&mut self, kind: &str, factory: F) -> &mut Self
    where
        C: DeserializeOwned + Send + 'static,
        F: Fn(C, BackendContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static,
        O: OfflineStore,
    {
        let f: Factory<dyn OfflineStore> = Arc::new(move |section, name, ctx| {
            let cfg = section.options::<C>(name)?;
            let fut = factory(cfg, ctx);
            Ok(Box::pin(async move {
                Ok(Arc::new(fut.await?) as Arc<dyn OfflineStore>)
            }))
        });
        self.offline
            .insert(kind.to_owned(), Slot::Ready(f, check_of::<C>()));
        self
    }

    /// Marks offline store kind `kind` as known but left out of this build.
    #[allow(dead_code)] // used by builds without some features
    pub(crate) fn offline_not_compiled(&mut self, kind: &str) {
        self.offline.insert(kind.to_owned(), Slot::NotCompiled);
    }

    /// Marks broker kind `kind` as known but left out of this build (feature `kind`).
    #[allow(dead_code)] // used by builds without some features
    pub(crate) fn broker_not_compiled(&mut self, kind: &str) {
        self.brokers.insert(kind.to_owned(), Slot::NotCompiled);
    }

    /// Marks presence kind `kind` as known but left out of this build (feature `kind`).
    #[cfg(not(feature = "redis"))]
    pub(crate) fn presence_not_compiled(&mut self, kind: &str) {
        self.presence.insert(kind.to_owned(), Slot::NotCompiled);
    }

    /// The broker kinds that can be started, sorted.
    pub fn broker_kinds(&self) -> Vec<&str> {
        ready(&self.brokers)
    }

    /// The presence kinds that can be started, sorted.
    pub fn presence_kinds(&self) -> Vec<&str> {
        ready(&self.presence)
    }

    /// The offline store kinds that can be started, sorted.
    pub fn offline_kinds(&self) -> Vec<&str> {
        ready(&self.offline)
    }

    /// Starts the broker `section` names.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown kind (listing the registered ones) or a bad option
    /// (naming `broker.<key>`); [`Error::NotCompiled`] for a kind this build leaves out;
    /// [`Error::Start`] wrapping the factory's own error.
    pub async fn connect_broker(
        &self,
        section: &Section,
        ctx: &BackendContext,
    ) -> Result<Arc<dyn Broker>> {
        connect(&self.brokers, "broker", section, ctx.clone()).await
    }

    /// Starts the presence store `section` names; `ctx.broker` should be the connected broker.
    ///
    /// # Errors
    /// As [`Backends::connect_broker`], for `presence.<key>`.
    pub async fn connect_presence(
        &self,
        section: &Section,
        ctx: &BackendContext,
    ) -> Result<Arc<dyn PresenceStore>> {
        let mut ctx = ctx.clone();
        if let Some(prefix) = section.prefix() {
            prefix.clone_into(&mut ctx.prefix);
        }
        connect(&self.presence, "presence", section, ctx).await
    }
}

impl Backends {
    /// Starts the offline store `section` (the `[offline]` section without its shared keys)
    /// names.
    ///
    /// # Errors
    /// As [`Backends::connect_broker`], for `offline.<key>`.
    pub async fn connect_offline(
        &self,
        section: &Section,
        ctx: &BackendContext,
    ) -> Result<Arc<dyn OfflineStore>> {
        connect(&self.offline, "offline", section, ctx.clone()).await
    }

    /// Checks the offline store `section` as [`Backends::connect_offline`] would (its kind is
    /// known and compiled in, its options are the kind's), without opening anything: a node
    /// whose `[offline]` is disabled still refuses a typo in it (`IMPUSH_OFFLINE__ENABLE=true`
    /// would otherwise leave the inbox silently off).
    ///
    /// # Errors
    /// As [`Backends::connect_offline`], before any connection.
    pub fn check_offline(&self, section: &Section) -> Result<()> {
        let (_, check) = slot(&self.offline, "offline", section)?;
        check(section, "offline")
    }
}

fn ready<T: ?Sized>(slots: &BTreeMap<String, Slot<T>>) -> Vec<&str> {
    slots
        .iter()
        .filter(|(_, s)| matches!(s, Slot::Ready(..)))
        .map(|(k, _)| k.as_str())
        .collect()
}

/// The factory and check of the kind `section` names.
fn slot<'a, T: ?Sized>(
    slots: &'a BTreeMap<String, Slot<T>>,
    role: &'static str,
    section: &Section,
) -> Result<(&'a Factory<T>, &'a Check)> {
    let kind = section.kind();
    match slots.get(kind) {
        Some(Slot::Ready(f, c)) => Ok((f, c)),
        Some(Slot::NotCompiled) => Err(Error::NotCompiled(kind.to_owned())),
        None => Err(Error::Config(format!(
            "config key `{role}.kind`: unknown {role} kind `{kind}`; this build has: {} \
             (a custom kind must be registered with Backends::register_{role})",
            ready(slots).join(", ")
        ))),
    }
}

async fn connect<T: ?Sized>(
    slots: &BTreeMap<String, Slot<T>>,
    role: &'static str,
    section: &Section,
    ctx: BackendContext,
) -> Result<Arc<T>> {
    let kind = section.kind();
    let (factory, _) = slot(slots, role, section)?;
    let fut = factory(section, role, ctx)?;
    fut.await.map_err(|source| Error::Start {
        role,
        kind: kind.to_owned(),
        source: Box::new(source),
    })
}
