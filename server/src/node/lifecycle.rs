//! A connection's life on the node: attach (local index, presence, channels, online event), the
//! session itself, detach (the reverse, offline event).
//!
//! Attach and detach run under a per-client async lock, so a device reconnecting while its last
//! other connection closes cannot leave the store and the local index disagreeing. A presence
//! write that fails (the store is unreachable) does not fail the connection: the node marks
//! itself for repair and `upkeep` makes the store match the local truth once it can.

use std::{sync::Arc, time::Instant};

use futures_util::{FutureExt, StreamExt};
use impush_core::{ClientId, DroppedConnection, Event, MessageId};
use tokio_util::sync::CancellationToken;

use super::{
    catch_up::Since,
    history::{ResumeRequest, Unreadable},
    supersede::Listed,
    Node,
};
use crate::{
    metrics::Metrics,
    session::{self, Ackable, Context, End, LinkId, Links, SessionHandle, Socket},
    settle::FrameToken,
};

/// Offline events of dropped connections announced at once (`Node::announce_dropped`).
const ANNOUNCING: usize = 32;

/// What an accepted connect request asked for, read from its token and URL.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) client: ClientId,
    /// What `prepare_connect` signed in; it travels with the online/offline events.
    pub(crate) metadata: serde_json::Value,
    /// The streams to resume (`docs/design.md` section 15).
    pub(crate) resume: Option<Result<ResumeRequest, Unreadable>>,
    /// Its name and the link it replaces (`session::Links`).
    pub(crate) links: Links,
    /// When its upgrade request arrived: connect time ends once it is attached.
    pub(crate) requested: Instant,
}

/// An accepted connect request whose socket is being upgraded: its session exists and, when
/// named, can be replaced by name from now on (`supersede`), before the client has its 101.
#[derive(Debug)]
pub(crate) struct Arrival {
    handle: Arc<SessionHandle>,
    resume: Option<Result<ResumeRequest, Unreadable>>,
    replaces: Option<LinkId>,
    requested: Instant,
    _listed: Option<Listed>,
}

impl Node {
    /// Makes the session of an accepted connect request, before its upgrade is answered.
    pub(crate) fn arrive(self: &Arc<Self>, accepted: Accepted) -> Arrival {
        let Accepted {
            client,
            metadata,
            resume,
            links,
            requested,
        } = accepted;
        let handle = Arc::new(
            SessionHandle::new(
                client,
                self.next_connection_id(),
                metadata,
                &self.limits,
                self.metrics.clone(),
            )
            .linked(links.this),
        );
        Arrival {
            _listed: self.list_arriving(&handle),
            handle,
            resume,
            replaces: links.replaces,
            requested,
        }
    }

    /// Runs one accepted WebSocket until it closes.
    pub(crate) async fn serve_connection(
        self: Arc<Self>,
        socket: Socket,
        arrival: Arrival,
        shutdown: CancellationToken,
    ) {
        let Arrival {
            handle,
            resume,
            replaces,
            requested,
            _listed: listed,
        } = arrival;
        // The link this one replaces hands back what it held before the inbox is read.
        if let Some(old) = replaces {
            self.supersede(&handle, old).await;
        }
        if let Some(Ok(r)) = &resume {
            handle.mute(r.streams.iter().map(|(k, _)| k.clone()).collect());
        }
        // Boxed, as detach and the close handshake below: futures awaited once, whose space
        // the task would otherwise keep for the socket's whole life (an idle socket's memory
        // is mostly this task; the test below keeps it small).
        Box::pin(self.attach(&handle, resume, requested)).await;
        drop(listed);
        // Shutdown closes every session in the index; one attached just after that sweep sees
        // the token instead (the sweep runs after the token is cancelled).
        if shutdown.is_cancelled() {
            handle.close(session::close::GOING_AWAY);
        }
        let ctx = Context {
            limits: &self.limits,
            reports: &self.outcomes.reports,
            must_ack: self.must_ack(),
        };
        let (end, socket) = session::drive(socket, &handle, ctx).await;
        let (unwritten, unacked) = Box::pin(self.detach(handle.clone())).await;
        drop(unwritten);
        self.requeue_unacked(&handle, unacked);
        handle.set_ended();
        if let (End::Close(code), Some(socket)) = (end, socket) {
            Box::pin(session::close_socket(socket, code)).await;
        }
    }

    /// Asks every connection on this node to close with 1001 (node shutdown).
    pub(crate) fn close_sessions(&self) {
        self.registry.for_all(|s| {
            s.close(session::close::GOING_AWAY);
        });
    }

    /// Registers a new connection: the local index (live messages from here on, held with an
    /// inbox), stored messages queued ahead of them, presence, channels, online event. Connect time (from
    /// `requested`) is observed once it is attached; observing it here, inside the boxed
    /// future, keeps the start time out of the session task that lives as long as the socket.
    async fn attach(
        self: &Arc<Self>,
        handle: &Arc<SessionHandle>,
        resume: Option<Result<ResumeRequest, Unreadable>>,
        requested: Instant,
    ) {
        let client = &handle.client;
        let _guard = self.client_lock(client).lock().await;
        // With an inbox, live messages arriving while this attaches are held until the inbox
        // was read at the end (they would overtake messages on their way into it). Held, not
        // kept: the socket is in the index before the inbox is read, so no write for this
        // client starts after the wait below, and the inbox it reads holds everything older.
        // (Read before the socket was in the index, a message kept meanwhile could land
        // before an older one still being written: `30 32`, then `31` from the later read.)
        if self.offline.is_some() {
            handle.hold();
        }
        let (first, excess) = self
            .registry
            .add(handle, self.limits.max_connections_per_client);
        for old in excess {
            old.replace();
        }
        if self.offline.is_some() {
            self.wait_for_inbox_writes(client).await;
            self.drain_into(handle).await;
        }
        self.metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Metrics::bump(&self.metrics.connections_total);
        let count = {
            let _gate = self.repair.gate.read().await;
            match self
                .presence
                .connect(&self.id, client, &handle.connection)
                .await
            {
                Ok(n) => Some(n),
                Err(e) => {
                    self.presence_error("connect", &e);
                    self.mark_dirty();
                    None
                }
            }
        };
        if first {
            self.load_channels(client).await;
        }
        // Its channels are known now: replay what it missed of the streams it asked for,
        // before their live frames (`docs/design.md` section 15).
        if let Some(request) = resume {
            self.resume(handle, request);
        }
        // The store counts connections on every node (a client moving here from another node
        // still has its old one there for a moment); without it, what this node knows.
        let first_anywhere = count.map_or(first, |n| n == 1);
        if self.offline.is_some() {
            // Messages stored while the inbox was being read above, then the live ones that
            // arrived meanwhile, in that order.
            self.wait_for_inbox_writes(client).await;
            self.drain_inbox(client).await;
            let refused = handle.release_held();
            // Replaced while it attached: what it held goes to the inbox now, counted in
            // flight, so the client's next connection reads it before anything newer.
            if !refused.is_empty() {
                self.keep_orphans(handle, &refused, &[]);
            }
            self.drain_again_later(client);
        }
        tracing::info!(%client, connection = %handle.connection, first = first_anywhere, "connected");
        self.publish_event(&Event::Online {
            client: client.clone(),
            node: self.id.clone(),
            connection: handle.connection.clone(),
            metadata: handle.metadata.clone(),
            first: first_anywhere,
        })
        .await;
        self.metrics.connect.observe(requested.elapsed());
    }

    /// Unregisters a closed connection: local index, then presence (and channel membership
    /// when it was the client's last) and the offline event; for a connection closed to move
    /// its client, presence only after `cluster.move_grace` (see `moves`). Returns what it
    /// never wrote and what was never acked, whose inbox writes have started.
    async fn detach(
        self: &Arc<Self>,
        handle: Arc<SessionHandle>,
    ) -> (Vec<FrameToken>, Vec<(MessageId, Ackable)>) {
        let client = &handle.client;
        let _guard = self.client_lock(client).lock().await;
        let last = self.registry.remove(&handle);
        // Nobody can push to it any more: what it never wrote (or got no ack for) goes to the
        // inbox, its writes counted in flight before the client lock is let go, so a next
        // connection of the client, which waits for them, reads them before anything newer
        // (counted after the lock, a reconnect in between read the inbox without them and got
        // them after newer messages stored meanwhile).
        let unwritten = handle.take_unwritten();
        let unacked = handle.take_unacked();
        self.keep_orphans(&handle, &unwritten, &unacked);
        self.metrics
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if handle.close_code() == session::close::MOVED {
            self.park(handle.clone(), last);
            return (unwritten, unacked);
        }
        self.leave_presence(&handle, false).await;
        if last {
            self.registry.forget_channels(client);
            if let Ok(mut unloaded) = self.repair.unloaded.lock() {
                unloaded.remove(client);
            }
        }
        (unwritten, unacked)
    }

    /// With a shared inbox, another node may still store messages for this client for a
    /// moment after it connected here (its view of who owns the client lags by up to a third
    /// of a lease): its inbox is read once more after that.
    pub(super) fn drain_again_later(self: &Arc<Self>, client: &ClientId) {
        if !self.offline.as_ref().is_some_and(|o| o.store.is_shared()) {
            return;
        }
        let node = self.clone();
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(node.lease / 3 + std::time::Duration::from_millis(250)).await;
            if node.registry.is_local(&client) {
                let _guard = node.client_lock(&client).lock().await;
                node.drain_inbox(&client).await;
            }
        });
    }

    /// Loads `client`'s channel memberships into the local index; on failure, remembers to
    /// try again (the client would otherwise miss its channels' messages).
    pub(super) async fn load_channels(&self, client: &ClientId) -> bool {
        match self.presence.client_channels(client).await {
            // A partial answer (cluster presence: no keeper of its memberships answered) is
            // not the whole truth: what it says is joined, and they are asked again later.
            Ok(chans) if !chans.missing.is_empty() => {
                self.registry.join_all(client, &chans);
                tracing::warn!(%client, missing = ?chans.missing, "channel memberships not all known: asking again later");
                if let Ok(mut unloaded) = self.repair.unloaded.lock() {
                    unloaded.insert(client.clone());
                }
                false
            }
            Ok(chans) => {
                self.registry.join_all(client, &chans);
                if let Ok(mut unloaded) = self.repair.unloaded.lock() {
                    unloaded.remove(client);
                }
                true
            }
            Err(e) => {
                self.presence_error("client_channels", &e);
                if let Ok(mut unloaded) = self.repair.unloaded.lock() {
                    unloaded.insert(client.clone());
                }
                false
            }
        }
    }

    /// Publishes offline events for connections that ended without their node saying so (a
    /// crashed node, this node's previous run, ghosts). Their metadata is unknown here.
    ///
    /// A crashed node's client may have connected again elsewhere since its connection was
    /// judged its last (a reap's announcements go out in the background, thousands of them,
    /// and the nodes' views of each other lag): each `last` is asked again just before it goes
    /// out, of a store caught up since (`docs/design.md` section 16), and once more after
    /// (`crossed`).
    ///
    /// [`ANNOUNCING`] at a time: one by one, each waiting for its catch-up and its publish,
    /// a crashed node's 1,500 connections took more than 30 s over Kafka (tansu), far past
    /// the lease the events are due within; at once, the ones asking together share a
    /// catch-up (`CatchUps::wait_fresh`).
    pub(crate) async fn announce_dropped(self: &Arc<Self>, dropped: Vec<DroppedConnection>) {
        futures_util::stream::iter(dropped)
            .for_each_concurrent(ANNOUNCING, |d| self.announce_one_dropped(d))
            .await;
    }

    async fn announce_one_dropped(self: &Arc<Self>, mut d: DroppedConnection) {
        if d.last && self.connected_now(&d.client).await {
            d.last = false;
        }
        tracing::warn!(node = %d.node, client = %d.client, connection = %d.connection, last = d.last, "publishing offline for a connection that ended without a goodbye");
        self.publish_offline(Event::Offline {
            client: d.client,
            node: d.node,
            connection: d.connection,
            metadata: serde_json::Value::Null,
            last: d.last,
            moved: false,
        })
        .await;
    }

    /// Catches the presence store up with every node's writes, by a catch-up begun `since`
    /// (one catch-up serves the callers of the same moment: `catch_up`); on failure, logs it
    /// and goes on with the view as it is.
    pub(super) async fn catch_up_presence(&self, since: Since) {
        let presence = self.presence.clone();
        let start = move || async move { presence.catch_up().await.map_err(Arc::new) }.boxed();
        let outcome = match since {
            Since::Recently => self.catch_ups.wait(start).await,
            Since::Now => self.catch_ups.wait_fresh(start).await,
        };
        if let Err(e) = outcome {
            self.presence_error("catch_up", &e);
        }
    }

    pub(super) fn mark_dirty(&self) {
        self.repair
            .dirty
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<F, A, B, C, D, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// A connection's task keeps the space of its largest state for the socket's whole life,
    /// and for an idle socket that task is most of what it costs: with the close handshake
    /// awaited inline (a timeout, the socket's parts) the task took ~2 KiB of the ~3.7 KiB an
    /// idle socket cost in a release build, ~1 KiB with it boxed (BENCHMARKS.md, issue 25).
    /// The bounds are for the unoptimized test build (serve_connection 736 B, drive 536 B
    /// here; 1,792 B with the close inline): a large future awaited inline breaks them.
    #[test]
    fn a_connections_task_stays_small() {
        let serve = returned_size(Node::serve_connection);
        let drive = returned_size(|s: Socket, h: &SessionHandle, c: Context<'_>, (): ()| {
            session::drive(s, h, c)
        });
        assert!(serve <= 800, "serve_connection's future is {serve} B");
        assert!(drive <= 600, "drive's future is {drive} B");
    }
}
