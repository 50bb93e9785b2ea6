//! Point-to-point messages pending until the device acks them (`docs/design.md` section 15).
//!
//! With the offline inbox on and `offline.require_ack`, a message written to a socket is kept
//! in the inbox store as soon as it settles (marked `written`), and removed when the client
//! acks it. So a link that dies before the ack (close, reset, dead peer, a killed node) loses
//! nothing: the next connection, on whichever node owns the client then, gets it again with
//! `"redelivered": true`, before live messages. Keeping it after the write (not before) adds
//! no latency to delivery; the broker delivery is acked only once it is kept, so a crash in
//! between redelivers it.
//!
//! An ack can overtake the write to the store. [`Keeping`] remembers the keeps in flight: an
//! ack that arrives meanwhile is applied once the keep is done, never lost.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Mutex},
};

use std::sync::Arc;

use futures_util::StreamExt;
use impush_core::{ClientId, MessageId, ReceiptStatus, StoredMessage};

use super::Node;
use crate::{
    session::{AckSource, Ackable, SessionHandle},
    settle::FrameToken,
};

/// Receivers of one message kept for at once when they have no socket here.
const KEEP_CONCURRENCY: usize = 32;

/// Messages being written to the inbox store right now (kept as pending, or stored for a
/// receiver that did not get them), per client, and whether the client acked each meanwhile.
///
/// A client's new connection waits for its writes in flight before it reads its inbox, so a
/// message on its way to the store is not overtaken by a newer live one (order per sender).
#[derive(Debug, Default)]
pub(crate) struct Keeping {
    writes: Mutex<HashMap<ClientId, HashMap<MessageId, Writes>>>,
    /// Writes finished so far, of any client: while it grows the store is making progress.
    done: std::sync::atomic::AtomicU64,
}

/// The writes of one message for one client in flight, and whether it was acked meanwhile.
#[derive(Debug, Default)]
struct Writes {
    count: usize,
    acked: bool,
}

impl Keeping {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, HashMap<MessageId, Writes>>> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write of `id` for `client` starts (several may be in flight: the message's settling,
    /// and a socket that closed with it).
    pub(crate) fn start(&self, client: &ClientId, id: &MessageId) {
        self.lock()
            .entry(client.clone())
            .or_default()
            .entry(id.clone())
            .or_default()
            .count += 1;
    }

    /// A write is done; returns whether the client acked meanwhile and this was the last
    /// write in flight (then remove it again).
    pub(crate) fn finish(&self, client: &ClientId, id: &MessageId) -> bool {
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut map = self.lock();
        let Some(ids) = map.get_mut(client) else {
            return false;
        };
        let Some(w) = ids.get_mut(id) else {
            return false;
        };
        w.count = w.count.saturating_sub(1);
        if w.count > 0 {
            return false;
        }
        let acked = w.acked;
        ids.remove(id);
        if ids.is_empty() {
            map.remove(client);
        }
        acked
    }

    /// The client acked `id`: returns `true` when a write is in flight (the last one will
    /// remove the message when done), `false` when the ack must remove it now.
    pub(crate) fn acked(&self, client: &ClientId, id: &MessageId) -> bool {
        match self.lock().get_mut(client).and_then(|ids| ids.get_mut(id)) {
            Some(w) => {
                w.acked = true;
                true
            }
            None => false,
        }
    }

    /// Whether writes for `client` are in flight.
    pub(crate) fn busy(&self, client: &ClientId) -> bool {
        self.lock().contains_key(client)
    }

    /// Writes finished so far (of any client).
    fn done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Node {
    /// Waits (briefly) until no inbox write for `client` is in flight, so its new connection
    /// reads an inbox that holds everything older than what it will get live.
    pub(crate) async fn wait_for_inbox_writes(&self, client: &ClientId) {
        // As long as the store makes progress (a busy store works through a queue of writes,
        // with a slow disk seconds long), up to a minute; a store that finishes nothing for
        // 5 s is down, and a connect is delayed by it, never stopped.
        use tokio::time::{Duration, Instant};
        let started = Instant::now();
        let (mut seen, mut progressed) = (self.keeping.done(), started);
        while self.keeping.busy(client) {
            let now = Instant::now();
            let done = self.keeping.done();
            if done != seen {
                (seen, progressed) = (done, now);
            }
            if now - progressed > Duration::from_secs(5) || now - started > Duration::from_secs(60)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A socket closed with point-to-point messages it never wrote or whose ack never came:
    /// they are written to its client's inbox now, for this one receiver, instead of when
    /// their message settles for all its receivers (which a slow socket elsewhere can hold up
    /// for seconds), so the client's next connection, which waits for writes in flight, finds
    /// them before anything newer (order per sender). Storing twice is harmless: a store keeps
    /// an id once.
    pub(crate) fn keep_orphans(
        self: &Arc<Self>,
        handle: &SessionHandle,
        unwritten: &[FrameToken],
        unacked: &[(MessageId, Ackable)],
    ) {
        if self.offline.is_none() {
            return;
        }
        let mut orphans: Vec<StoredMessage> = unwritten
            .iter()
            .map(|t| t.settlement().stored_message(false))
            .collect();
        if self.must_ack() {
            orphans.extend(unacked.iter().filter_map(|(_, a)| match &a.source {
                AckSource::Live { settlement, .. } => Some(settlement.stored_message(true)),
                AckSource::Stored => None, // in the inbox already
            }));
        }
        if orphans.is_empty() {
            return;
        }
        let client = handle.client.clone();
        let moved = handle.close_code() == crate::session::close::MOVED;
        tracing::debug!(
            %client,
            connection = %handle.connection,
            orphans = ?orphans.iter().map(|m| &m.id).collect::<Vec<_>>(),
            "keeping what a closed socket did not deliver"
        );
        for m in &orphans {
            self.keeping.start(&client, &m.id);
        }
        let node = self.clone();
        tokio::spawn(async move {
            let Some(inbox) = &node.offline else { return };
            let mut waiting = Vec::new();
            for m in orphans {
                let id = m.id.clone();
                let (kept, _) = node
                    .store_for(inbox, &m, std::slice::from_ref(&client))
                    .await;
                if node.keeping.finish(&client, &id) {
                    node.remove_from_inbox(&client, std::slice::from_ref(&id))
                        .await;
                } else if !kept.is_empty() {
                    waiting.push(m);
                }
            }
            if !node.registry.is_local(&client) {
                // They wait for a client with no socket here now: the hook for a mobile
                // push, as for a message that found it offline (`keep_for_absent`); not for a
                // planned move (1012), whose client is connecting to its next node.
                if !moved {
                    for m in &waiting {
                        node.webhooks.stored(std::slice::from_ref(&client), m);
                    }
                }
                node.tell_where_it_may_be(&client).await;
            }
        });
    }

    /// Keeps a message in the inboxes of receivers with no socket here, now; each token
    /// reports to the message's settlement whether it was kept (for the `stored` or `offline`
    /// receipt, and the broker ack, which waits for it).
    pub(crate) fn keep_for_absent(
        self: &Arc<Self>,
        settlement: &Arc<crate::settle::Settlement>,
        absent: Vec<(ClientId, FrameToken)>,
    ) {
        let message = settlement.stored_message(false);
        for (client, _) in &absent {
            self.keeping.start(client, &message.id);
        }
        let node = self.clone();
        tokio::spawn(async move {
            let Some(inbox) = &node.offline else { return };
            // Each receiver on its own: one slow write or drain does not hold up the others'
            // (a reconnecting client waits only for its own writes).
            futures_util::stream::iter(absent)
                .for_each_concurrent(KEEP_CONCURRENCY, |(client, token)| {
                    let node = &node;
                    let message = &message;
                    async move {
                        let (kept, _) = node
                            .store_for(inbox, message, std::slice::from_ref(&client))
                            .await;
                        node.keeping.finish(&client, &message.id);
                        let was_kept = !kept.is_empty();
                        tracing::debug!(%client, id = %message.id, was_kept, "kept for an absent receiver");
                        token.kept(was_kept);
                        if node.registry.is_local(&client) {
                            // Connected meanwhile (its connection read its inbox before this
                            // was in): push it now.
                            let _guard = node.client_lock(&client).lock().await;
                            node.drain_inbox(&client).await;
                        } else if was_kept {
                            // It waits for an offline client: the hook for a mobile push.
                            node.webhooks.stored(&kept, message);
                            node.tell_where_it_may_be(&client).await;
                        }
                    }
                })
                .await;
        });
    }

    /// Stored `client`'s messages in a shared inbox although it may be connected elsewhere:
    /// asks the other nodes it may be on to push its inbox, so nothing waits there for its
    /// next connection. While every node has been live for a while a client sits at its home,
    /// so only a node that is not its home asks (its home and its owner by this node's view);
    /// while ownership is moving (a node not live, or the view changed within two leases)
    /// views can differ, so every other node is asked.
    pub(crate) async fn tell_where_it_may_be(&self, client: &ClientId) {
        let shared = self.offline.as_ref().is_some_and(|o| o.store.is_shared());
        let home = self.cluster.home(client).id.clone();
        let unsettled = self.ownership_unsettled();
        if !shared || (home == self.id && !unsettled) {
            return;
        }
        let targets: Vec<impush_core::NodeId> = if unsettled {
            self.cluster.nodes().iter().map(|n| n.id.clone()).collect()
        } else {
            vec![home, self.cluster.owner(client).id.clone()]
        };
        let cmd = impush_core::envelope::NodeCommand::Drain {
            client: client.clone(),
        };
        let Ok(payload) = impush_core::envelope::encode("node command", &cmd) else {
            return;
        };
        tracing::debug!(%client, ?targets, "asking where the client may be to push its inbox");
        let mut told = std::collections::HashSet::new();
        for node in targets {
            if node != self.id && told.insert(node.clone()) {
                let _ = self
                    .broker
                    .publish(&self.topics.inbox(&node), payload.clone())
                    .await;
            }
        }
    }

    /// Whether every point-to-point message stays pending until the client acks it.
    pub(crate) fn must_ack(&self) -> bool {
        self.offline.as_ref().is_some_and(|o| o.require_ack)
    }

    /// A socket of `handle.client` closed with messages written and never acked: those no
    /// other socket of the client still holds went back to the inbox (they were kept there
    /// when they settled), and their senders hear `stored`.
    ///
    /// The client may already have its next connection, here or on another node, and that
    /// one read the inbox when it attached. A message this socket had from the inbox (not
    /// live) may have gone in after that read: stored by a node that saw this socket and
    /// pushed it here only, telling nobody else. So the inbox is pushed where the client may
    /// be now; left alone, it would wait for the client's next connect. (Live ones are
    /// stored again and pushed on by `keep_orphans`.)
    pub(crate) fn requeue_unacked(
        self: &Arc<Self>,
        handle: &SessionHandle,
        unacked: Vec<(MessageId, Ackable)>,
    ) {
        if unacked.is_empty() {
            return;
        }
        tracing::debug!(
            client = %handle.client,
            connection = %handle.connection,
            unacked = ?unacked.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            "a socket closed with messages not acked"
        );
        let mut back = Vec::new();
        for (id, a) in unacked {
            let mut elsewhere = false;
            self.registry.for_client(&handle.client, |other| {
                elsewhere |= !std::ptr::eq(other, handle) && other.awaits_ack(&id);
            });
            if !elsewhere {
                back.push((id, a));
            }
        }
        self.metrics
            .unacked_requeued
            .fetch_add(back.len() as u64, Ordering::Relaxed);
        if back
            .iter()
            .any(|(_, a)| matches!(a.source, AckSource::Stored))
        {
            let (node, client) = (self.clone(), handle.client.clone());
            tokio::spawn(async move {
                if node.registry.is_local(&client) {
                    let _guard = node.client_lock(&client).lock().await;
                    node.drain_inbox(&client).await;
                } else {
                    node.tell_where_it_may_be(&client).await;
                }
            });
        }
        for (id, a) in back {
            if a.receipt {
                self.metrics.receipt(ReceiptStatus::Stored, 1);
                self.send_receipt(
                    id,
                    a.sender,
                    vec![handle.client.clone()],
                    ReceiptStatus::Stored,
                    None,
                );
            }
        }
    }
}
