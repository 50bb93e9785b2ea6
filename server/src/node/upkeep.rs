//! Keeping the presence store true (`docs/design.md` section 13): this node's lease, reaping nodes
//! that died, and repairing what failed writes or a reap of a live node left wrong.
//!
//! Every `lease / 3` the node renews its lease, on time whatever else is under way: the repairs
//! below run beside the heartbeats, one at a time. Then:
//! - if the store no longer knows this node (it was reaped while alive, e.g. after a long
//!   stall, or the store lost its data), or may have reaped it (no heartbeat succeeded for a
//!   whole lease), the node registers its connections and memberships again in one
//!   `sync_node` and re-announces online the ones the store had dropped, so events and
//!   queries agree again;
//! - else, if a connect/disconnect write failed since the last round, `sync_node` replaces the
//!   store's view of this node with the local truth (no ghost, nobody missing);
//! - channel memberships that could not be loaded at connect are loaded again;
//! - only a node that has renewed its own lease without failure for a whole lease reaps other
//!   nodes: after an outage every lease looks expired, and a node must not declare another dead
//!   on such stale data; one lease later the live ones have renewed theirs. It reaps only in a
//!   round that renewed its own lease less than half a lease ago, so a stalled round never
//!   reaps the node itself, and announces what it reaped in the background, so the
//!   heartbeats keep their pace while thousands of offline events go out.

use std::{sync::Arc, time::Duration};

use impush_core::Event;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Node;

impl Node {
    /// The upkeep loop; runs until `cancel`.
    pub(crate) async fn run_upkeep(self: Arc<Self>, lease: Duration, cancel: CancellationToken) {
        let every = lease / 3;
        let mut first = true;
        // Whether heartbeats have succeeded for a whole lease without a failure: only then are
        // other nodes' expired leases evidence of their death.
        let mut judge = impush_core::DeathJudge::new(lease);
        // Offline events of reaped connections being published: one publish each, so a big
        // reap takes a while, and the heartbeats must not wait for it (this node's lease would
        // run out, and the others would declare it dead too).
        let mut announcing = tokio::task::JoinSet::new();
        // Repairs (a sync with the store, channels to load again) run beside the heartbeats,
        // one at a time: re-registering thousands of connections after this node was reaped
        // while alive takes seconds, and a heartbeat waiting for it would let the lease run
        // out, so the others would reap this node again.
        let mut repairing: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
        // The store forgot this node: told by one heartbeat only (the next one registers it
        // again), so kept until a repair takes it.
        let mut forgotten = false;
        let mut last_beat: Option<Instant> = None;
        // When the last heartbeat that succeeded began: the lease it renewed ran out a lease
        // later at the earliest.
        let mut renewed: Option<Instant> = None;
        loop {
            while announcing.try_join_next().is_some() {}
            while repairing.try_join_next().is_some() {}
            // This node's lease runs from here (the store sets it to now + lease).
            let beat = Instant::now();
            if let Some(gap) = last_beat.map(|t| beat.duration_since(t)) {
                if gap > lease / 2 {
                    tracing::warn!(
                        ?gap,
                        ?lease,
                        "heartbeat late: this node's lease may run out"
                    );
                }
            }
            last_beat = Some(beat);
            match self.presence.heartbeat(&self.id, lease, self.state()).await {
                Ok(known) => {
                    let trusted = judge.read_succeeded(Instant::now().into_std());
                    // The very first heartbeat of a run finds no entry: start-up cleared it.
                    if !known && !first {
                        tracing::warn!(
                            "presence store forgot this node; registering its connections again"
                        );
                        forgotten = true;
                    }
                    // A whole lease without a heartbeat: another node may have reaped this
                    // one (and announced its connections offline) even though the store knows
                    // it now. A heartbeat sent during the outage can land late, after the
                    // reap (a link that stalled and then delivered what it held), and
                    // register this node again; "known" then hides the reap. The sync adds
                    // back, and announces online, only the connections the store lacks.
                    if renewed.is_some_and(|t| t.elapsed() > lease) && !forgotten {
                        tracing::warn!(
                            "no heartbeat for a whole lease; registering this node's connections again"
                        );
                        forgotten = true;
                    }
                    renewed = Some(beat);
                    if repairing.is_empty() && (forgotten || self.needs_repair()) {
                        let node = self.clone();
                        let forgotten = std::mem::take(&mut forgotten);
                        repairing.spawn(async move { node.repair(forgotten).await });
                    }
                    self.tidy_history();
                    // Like reaping, judging other nodes dead waits for a lease of healthy
                    // heartbeats (after an outage, or at start-up, every other lease may look
                    // expired); who came back is learned at once.
                    self.refresh_view(trusted).await;
                    first = false;
                    // A round that stalled (a starved process, a slow store) may end after
                    // this node's own lease ran out: the store then lists this node among the
                    // expired, and a reap would drop its live connections and announce them
                    // offline. Reap only while the lease just renewed surely still runs.
                    if judge.trusted(Instant::now().into_std()) && beat.elapsed() < lease / 2 {
                        if let Some(dropped) = self.reap_dead_nodes().await {
                            let node = self.clone();
                            announcing.spawn(async move { node.announce_dropped(dropped).await });
                        }
                    }
                }
                Err(e) => {
                    self.presence_error("heartbeat", &e);
                    judge.read_failed();
                }
            }
            // The next beat is due a third of a lease after this one began, however long the
            // round took; after a round that took longer than that, a short pause still, so a
            // starved node does not hammer its store back to back.
            let next = (beat + every).max(Instant::now() + every / 4);
            tokio::select! {
                () = cancel.cancelled() => {
                    // Shutdown waits for this loop (up to its grace): what was reaped is told.
                    while announcing.join_next().await.is_some() {}
                    return;
                }
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Whether a failed write or a failed channel load left something to repair.
    fn needs_repair(&self) -> bool {
        self.repair.dirty.load(std::sync::atomic::Ordering::Acquire)
            || self.repair.unloaded.lock().is_ok_and(|u| !u.is_empty())
    }

    /// Makes the store agree with this node again (all of it when the store `forgotten` it),
    /// then loads the channels that failed to load at connect.
    async fn repair(self: Arc<Self>, forgotten: bool) {
        if forgotten || self.repair.dirty.load(std::sync::atomic::Ordering::Acquire) {
            self.sync_presence(forgotten).await;
        }
        self.reload_channels().await;
    }

    /// Reaps the nodes whose lease ran out; their connections, to be announced offline.
    async fn reap_dead_nodes(self: &Arc<Self>) -> Option<Vec<impush_core::DroppedConnection>> {
        match self.presence.reap_expired(self.clear_channels_now()).await {
            Ok(dropped) if dropped.is_empty() => None,
            Ok(dropped) => {
                self.linger(Self::gone_clients(&dropped));
                Some(dropped)
            }
            Err(e) => {
                self.presence_error("reap_expired", &e);
                None
            }
        }
    }

    /// Makes the store hold exactly this node's connections, and (when `forgotten`) its local
    /// channel memberships, announcing re-registered connections online again.
    async fn sync_presence(self: &Arc<Self>, forgotten: bool) {
        let _gate = self.repair.gate.write().await;
        self.repair
            .dirty
            .store(false, std::sync::atomic::Ordering::Release);
        let (connections, memberships) = self.registry.snapshot();
        let sync = match self
            .presence
            .sync_node(&self.id, &connections, !self.persist_channels)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.presence_error("sync_node", &e);
                self.mark_dirty();
                return;
            }
        };
        tracing::info!(
            added = sync.added.len(),
            removed = sync.removed.len(),
            "presence store synced with this node's connections"
        );
        if !forgotten {
            // Ghosts were announced offline, and missing ones online, when they happened.
            return;
        }
        for (channel, members) in &memberships {
            if let Err(e) = self.presence.join_channel(channel, members).await {
                self.presence_error("join_channel (sync)", &e);
                self.mark_dirty();
            }
        }
        let mut back: Vec<impush_core::ClientId> = Vec::new();
        for added in sync.added {
            back.push(added.client.clone());
            let metadata = self
                .registry
                .metadata_of(&added.client, &added.connection)
                .unwrap_or_default();
            self.publish_event(&Event::Online {
                client: added.client,
                node: self.id.clone(),
                connection: added.connection,
                metadata,
                first: added.first,
            })
            .await;
        }
        // While the cluster counted them gone, messages for these clients were kept in their
        // inboxes (`docs/design.md` section 15); they are still connected here, so nothing
        // else would push them until they reconnect. (Not under the repair gate: connects
        // need it.)
        drop(_gate);
        if self.offline.is_some() {
            back.sort();
            back.dedup();
            for client in back {
                let _guard = self.client_lock(&client).lock().await;
                if self.registry.is_local(&client) {
                    self.drain_inbox(&client).await;
                    // And once more when what other nodes were still storing is in.
                    self.drain_again_later(&client);
                }
            }
        }
    }

    async fn reload_channels(&self) {
        let clients: Vec<_> = match self.repair.unloaded.lock() {
            Ok(u) if !u.is_empty() => u.iter().cloned().collect(),
            _ => return,
        };
        for client in clients {
            let _guard = self.client_lock(&client).lock().await;
            if self.registry.is_local(&client) {
                self.load_channels(&client).await;
            } else if let Ok(mut u) = self.repair.unloaded.lock() {
                u.remove(&client);
            }
        }
    }
}
