//! The offline inbox on the node (`docs/design.md` section 9): storing a message for the receivers
//! none of whose sockets took it, pushing stored messages to a client that connects (oldest first,
//! before live messages, `"stored": true`), and removing them once acked (or once written, for
//! clients that never ack).
//!
//! A message's broker delivery is acked only after it is stored, so a store that is down holds
//! the message (retried here, redelivered after a crash) instead of losing it.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use impush_core::{protocol::ServerFrame, ClientId, MessageId, OfflineStore, StoredMessage};

use super::Node;
use crate::{
    metrics::{Metrics, OutKind},
    session::SessionHandle,
    settle::StoredFrame,
};

/// Inbox writes of one message (one per receiver) in flight at once.
const STORE_CONCURRENCY: usize = 32;

/// The node's offline inbox: the store and how messages leave it.
#[derive(Debug)]
pub(crate) struct OfflineInbox {
    pub(crate) store: Arc<dyn OfflineStore>,
    /// Stored messages leave when acked (else once written).
    pub(crate) require_ack: bool,
    /// How many stored messages a connecting client gets (the inbox holds no more anyway).
    pub(crate) max_per_client: usize,
}

/// The frame of a stored message: as it was first sent, plus `"stored": true`, or
/// `"redelivered": true` when it had been written to a socket that closed before the ack.
fn stored_frame(m: &StoredMessage, ack: bool) -> Utf8Bytes {
    ServerFrame::Message {
        id: &m.id,
        from: &m.from,
        data: &m.data,
        ts: m.ts,
        receipt: m.receipt,
        stored: !m.written,
        redelivered: m.written,
        ack,
    }
    .to_json()
    .into()
}

impl Node {
    /// Stores `message` for each of `receivers`, retrying while the store is unreachable (the
    /// broker delivery stays unacked meanwhile). Returns the receivers it was stored for and
    /// those it was not (too large, or already expired).
    pub(super) async fn store_for(
        &self,
        inbox: &OfflineInbox,
        message: &StoredMessage,
        receivers: &[ClientId],
    ) -> (Vec<ClientId>, Vec<ClientId>) {
        // One receiver's write does not wait for another's: a fan-out to hundreds of absent
        // receivers would otherwise take hundreds of round trips, and a client that
        // reconnects meanwhile waits for its own writes (`Node::wait_for_inbox_writes`).
        let outcomes: Vec<(ClientId, bool)> = futures_util::stream::iter(receivers.iter().cloned())
            .map(|to| async move {
                let kept = self.store_one(inbox, message, &to).await;
                (to, kept)
            })
            .buffer_unordered(STORE_CONCURRENCY)
            .collect()
            .await;
        let mut kept = Vec::new();
        let mut not_kept = Vec::new();
        for (to, was_kept) in outcomes {
            if was_kept {
                kept.push(to);
            } else {
                not_kept.push(to);
            }
        }
        (kept, not_kept)
    }

    /// Stores `message` for `to`, retrying while the store is unreachable; returns whether the
    /// store kept it.
    async fn store_one(
        &self,
        inbox: &OfflineInbox,
        message: &StoredMessage,
        to: &ClientId,
    ) -> bool {
        let mut backoff = Duration::from_millis(100);
        let stored = loop {
            match inbox.store.store(to, message.clone()).await {
                Ok(r) => break r,
                Err(e) => {
                    Metrics::bump(&self.metrics.offline_errors);
                    tracing::warn!(client = %to, error = &e as &dyn std::error::Error, "cannot store a message in the offline inbox; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.metrics
            .offline_evicted
            .fetch_add(stored.evicted as u64, std::sync::atomic::Ordering::Relaxed);
        if stored.kept && !message.written {
            Metrics::bump(&self.metrics.offline_stored);
        }
        stored.kept
    }

    /// `client`'s stored messages as frames, oldest first (none when the store cannot be read:
    /// they stay for the next connect).
    async fn inbox_frames(&self, client: &ClientId) -> Vec<(Utf8Bytes, StoredFrame)> {
        let Some(inbox) = &self.offline else {
            return Vec::new();
        };
        match inbox.store.fetch(client, inbox.max_per_client).await {
            Ok(messages) => messages
                .iter()
                .map(|m| {
                    let stored = StoredFrame {
                        id: m.id.clone(),
                        sender: m.from.clone(),
                        receipt: m.receipt,
                    };
                    (stored_frame(m, inbox.require_ack), stored)
                })
                .collect(),
            Err(e) => {
                Metrics::bump(&self.metrics.offline_errors);
                tracing::warn!(%client, error = &e as &dyn std::error::Error, "cannot read the offline inbox");
                Vec::new()
            }
        }
    }

    fn count_drained(&self, pushed: u64) {
        self.metrics.out(OutKind::Message, pushed);
        self.metrics
            .offline_drained
            .fetch_add(pushed, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues `session`'s stored messages ahead of the live ones held while it attaches.
    pub(super) async fn drain_into(&self, session: &SessionHandle) {
        // Which ids went to which socket is for the debug log only: gathered only for it.
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let (mut pushed, mut ids) = (0u64, Vec::new());
        for (frame, stored) in self.inbox_frames(&session.client).await {
            let id = debug.then(|| stored.id.clone());
            if session.push_stored(frame, stored) {
                pushed += 1;
                ids.extend(id);
            }
        }
        tracing::debug!(client = %session.client, connection = %session.connection, pushed = ?ids, "inbox read on connect");
        self.count_drained(pushed);
    }

    /// Pushes `client`'s stored messages to each of its local sockets that does not have them
    /// yet (a message stored while the client was connecting).
    pub(super) async fn drain_inbox(&self, client: &ClientId) {
        self.drain_inbox_where(client, |_| true).await;
    }

    /// [`Node::drain_inbox`], to the sockets `to` picks only.
    pub(super) async fn drain_inbox_where(
        &self,
        client: &ClientId,
        to: impl Fn(&SessionHandle) -> bool,
    ) {
        let frames = self.inbox_frames(client).await;
        if frames.is_empty() {
            return;
        }
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let mut pushed = 0u64;
        self.registry.for_client(client, |session| {
            if !to(session) {
                return;
            }
            let mut ids = Vec::new();
            for (frame, stored) in &frames {
                if session.push_stored(frame.clone(), stored.clone()) {
                    pushed += 1;
                    ids.extend(debug.then_some(&stored.id));
                }
            }
            tracing::debug!(%client, connection = %session.connection, pushed = ?ids, "inbox pushed");
        });
        self.count_drained(pushed);
    }

    /// Removes acked (or written) messages from `client`'s inbox.
    pub(super) async fn remove_from_inbox(&self, client: &ClientId, ids: &[MessageId]) {
        let Some(inbox) = &self.offline else { return };
        if let Err(e) = inbox.store.remove(client, ids).await {
            // They stay and are pushed again at the next connect: a duplicate the client
            // drops, not a loss.
            Metrics::bump(&self.metrics.offline_errors);
            tracing::warn!(%client, error = &e as &dyn std::error::Error, "cannot remove acked messages from the offline inbox");
        }
    }
}
