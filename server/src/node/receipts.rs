//! The receipts task: acts on settled messages (the offline inbox, receipt frames, then the
//! broker ack) and on what sessions report (acks, written inbox frames).
//!
//! A receipt frame covers one message and one status for all the receivers settled together
//! (`docs/design.md` section 4), so a message to 10,000 receivers costs its sender a handful of
//! frames. Acks (and deliveries from the offline inbox) of one message trickle in one by one; they
//! are gathered for [`GATHER_WINDOW`] before a frame goes out, and inbox removals likewise.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;
use impush_core::{
    envelope::{self, NodeCommand},
    protocol::ServerFrame,
    Acker, ClientId, MessageId, ReceiptStatus,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::{
    metrics::{Metrics, OutKind},
    session::Outgoing,
    settle::{ClientReport, Settled},
};

/// How long acks of one message (and inbox deliveries) are gathered into one receipt.
const GATHER_WINDOW: Duration = Duration::from_millis(20);

/// The receiving ends of the outcome channels sessions and settlements report to.
#[derive(Debug)]
pub(crate) struct Inboxes {
    pub(crate) settled: mpsc::UnboundedReceiver<Settled>,
    pub(crate) reports: mpsc::UnboundedReceiver<ClientReport>,
}

/// Receipts and inbox removals waiting for the gather window to close.
#[derive(Debug, Default)]
struct Gathered {
    receipts: HashMap<(MessageId, ClientId, ReceiptStatus), Vec<ClientId>>,
    removals: HashMap<ClientId, Vec<MessageId>>,
}

impl Node {
    /// Runs until `stop`, then finishes what is already settled (acking it to the broker).
    pub(crate) async fn run_receipts(
        self: Arc<Self>,
        mut inboxes: Inboxes,
        stop: CancellationToken,
    ) {
        let mut gathered = Gathered::default();
        let mut flush_at: Option<Instant> = None;
        loop {
            let deadline = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(s) = inboxes.settled.recv() => self.on_settled(s),
                Some(r) = inboxes.reports.recv() => {
                    self.on_report(r, &mut gathered);
                    flush_at.get_or_insert_with(|| Instant::now() + GATHER_WINDOW);
                }
                () = tokio::time::sleep_until(deadline), if flush_at.is_some() => {
                    flush_at = None;
                    self.flush(&mut gathered);
                }
                () = stop.cancelled() => {
                    while let Ok(s) = inboxes.settled.try_recv() {
                        self.on_settled(s);
                    }
                    while let Ok(r) = inboxes.reports.try_recv() {
                        self.on_report(r, &mut gathered);
                    }
                    self.flush(&mut gathered);
                    return;
                }
            }
        }
    }

    fn on_report(&self, r: ClientReport, g: &mut Gathered) {
        let require_ack = self.offline.as_ref().is_none_or(|o| o.require_ack);
        match r {
            ClientReport::Acked {
                id,
                sender,
                receiver,
                receipt,
                remove,
            } => {
                // The client has it: its other sockets here stop waiting for it (see
                // `SessionHandle::acked_elsewhere`); the one that acked holds it no longer.
                self.registry
                    .for_client(&receiver, |s| s.acked_elsewhere(&id));
                // A keep still in flight removes the message itself once it is done.
                if remove && !self.keeping.acked(&receiver, &id) {
                    g.removals
                        .entry(receiver.clone())
                        .or_default()
                        .push(id.clone());
                }
                if receipt {
                    g.receipts
                        .entry((id, sender, ReceiptStatus::Acked))
                        .or_default()
                        .push(receiver);
                }
            }
            ClientReport::StoredWritten {
                id,
                sender,
                receiver,
                receipt,
            } => {
                if !require_ack {
                    g.removals
                        .entry(receiver.clone())
                        .or_default()
                        .push(id.clone());
                }
                if receipt {
                    g.receipts
                        .entry((id, sender, ReceiptStatus::Delivered))
                        .or_default()
                        .push(receiver);
                }
            }
        }
    }

    fn flush(self: &Arc<Self>, g: &mut Gathered) {
        for ((id, sender, status), to) in g.receipts.drain() {
            self.metrics.receipt(status, to.len() as u64);
            self.send_receipt(id, sender, to, status, None);
        }
        if !g.removals.is_empty() {
            let removals = std::mem::take(&mut g.removals);
            let node = self.clone();
            tokio::spawn(async move {
                for (client, ids) in removals {
                    node.remove_from_inbox(&client, &ids).await;
                }
            });
        }
    }

    fn on_settled(self: &Arc<Self>, s: Settled) {
        let keep_written = self.must_ack() && s.delivered.len() > s.acked.len();
        match &self.offline {
            Some(_) if !s.undelivered.is_empty() || keep_written => {
                // Storing is I/O: one slow store must not hold up the other receipts.
                let written = if keep_written {
                    s.delivered
                        .iter()
                        .filter(|c| !s.acked.contains(c))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                // (Receivers with no socket when it arrived were kept then: `deliver`.)
                for c in written.iter().chain(&s.undelivered) {
                    self.keeping.start(c, &s.id);
                }
                let node = self.clone();
                tokio::spawn(async move { node.settle_with_inbox(s, written).await });
            }
            _ => {
                let delivered = s.delivered.clone();
                let stored = s.kept.clone();
                let mut offline = s.undelivered.clone();
                offline.extend(s.not_kept.iter().cloned());
                self.finish(s, delivered, stored, offline);
            }
        }
    }

    /// Keeps the message as pending for `written` (receivers it was written to, unacked; see
    /// `pending`), stores it for the receivers that did not get it, then finishes it; pushes
    /// it at once to a receiver that connected meanwhile.
    async fn settle_with_inbox(self: Arc<Self>, s: Settled, written: Vec<ClientId>) {
        let Some(inbox) = &self.offline else { return };
        if !written.is_empty() {
            let mut pending = s.stored();
            pending.written = true;
            let _ = self.store_for(inbox, &pending, &written).await;
            let (acked, pending): (Vec<ClientId>, Vec<ClientId>) = written
                .into_iter()
                .partition(|c| self.keeping.finish(c, &s.id));
            for client in acked {
                self.remove_from_inbox(&client, std::slice::from_ref(&s.id))
                    .await;
            }
            // A socket that took it may have closed before it was kept, and its client come
            // back already: a socket that attached after the message went out live gets it
            // now. Not the older ones: they were offered it live, and one that took it and
            // acked it since (its ack's removal from the inbox still on its way) would be
            // shown it twice.
            for client in &pending {
                let mut newer = false;
                self.registry
                    .for_client(client, |session| newer |= session.came_after(s.mark));
                if newer {
                    let _guard = self.client_lock(client).lock().await;
                    self.drain_inbox_where(client, |session| session.came_after(s.mark))
                        .await;
                }
            }
        }
        let message = s.stored();
        let undelivered = s.undelivered.clone();
        let (mut stored, mut not_kept) = self.store_for(inbox, &message, &undelivered).await;
        for c in &undelivered {
            self.keeping.finish(c, &s.id);
        }
        // (Those with no socket when it arrived were kept then, and hooked: `deliver`.)
        let early = s.kept.clone();
        let delivered = s.delivered.clone();
        // Receivers that connected meanwhile get it just below; the others wait for it, and
        // that is the hook for a mobile push.
        let (connected, waiting): (Vec<ClientId>, Vec<ClientId>) = stored
            .iter()
            .cloned()
            .partition(|c| self.registry.is_local(c));
        self.webhooks.stored(&waiting, &message);
        for client in &waiting {
            self.tell_where_it_may_be(client).await;
        }
        stored.extend(early);
        not_kept.extend(s.not_kept.iter().cloned());
        self.finish(s, delivered, stored, not_kept);
        for client in connected {
            let _guard = self.client_lock(&client).lock().await;
            self.drain_inbox(&client).await;
        }
    }

    /// Sends the message's receipts (when asked for), then acks its broker delivery.
    fn finish(
        &self,
        s: Settled,
        delivered: Vec<ClientId>,
        stored: Vec<ClientId>,
        offline: Vec<ClientId>,
    ) {
        let Settled {
            id,
            sender,
            receipt,
            acker,
            ..
        } = s;
        if !receipt {
            acker.ack();
            return;
        }
        let mut parts = Vec::with_capacity(3);
        for (to, status) in [
            (delivered, ReceiptStatus::Delivered),
            (stored, ReceiptStatus::Stored),
            (offline, ReceiptStatus::Offline),
        ] {
            if !to.is_empty() {
                self.metrics.receipt(status, to.len() as u64);
                parts.push((to, status));
            }
        }
        // The broker ack follows the last receipt out, so a crash in between redelivers the
        // message rather than losing its receipt.
        let mut acker = Some(acker);
        let n = parts.len();
        for (i, (to, status)) in parts.into_iter().enumerate() {
            let last = (i + 1 == n).then(|| acker.take()).flatten();
            self.send_receipt(id.clone(), sender.clone(), to, status, last);
        }
        if let Some(a) = acker {
            a.ack();
        }
    }

    /// Sends a receipt to `sender`'s connections: pushed here when this node owns the sender,
    /// else published to the owner's inbox. `then` is acked once that is done.
    pub(super) fn send_receipt(
        &self,
        id: MessageId,
        sender: ClientId,
        to: Vec<ClientId>,
        status: ReceiptStatus,
        then: Option<Acker>,
    ) {
        let owner = self.cluster.owner(&sender).id.clone();
        if owner == self.id {
            self.push_receipt(&id, &sender, &to, status);
            if let Some(a) = then {
                a.ack();
            }
            return;
        }
        let cmd = NodeCommand::Receipt {
            id,
            sender,
            to,
            status,
        };
        let payload = match envelope::encode("receipt", &cmd) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "cannot encode receipt"
                );
                return;
            }
        };
        // Not awaited here: one slow publish must not hold up every other receipt and ack.
        let broker = self.broker.clone();
        let topic = self.topics.inbox(&owner);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.publish(&topic, payload).await {
                Metrics::bump(&metrics.broker_publish_errors);
                tracing::warn!(%topic, error = &e as &dyn std::error::Error, "receipt publish failed");
                return; // unacked: the message is delivered again, and its receipt with it
            }
            if let Some(a) = then {
                a.ack();
            }
        });
    }

    /// Pushes one receipt frame to every local connection of `sender`.
    pub(super) fn push_receipt(
        &self,
        id: &MessageId,
        sender: &ClientId,
        to: &[ClientId],
        status: ReceiptStatus,
    ) {
        let frame: Utf8Bytes = ServerFrame::Receipt { id, to, status }.to_json().into();
        let n = self.registry.for_client(sender, |s| {
            s.push(Outgoing::plain(frame.clone()));
        });
        self.metrics.out(OutKind::Receipt, n as u64);
    }
}
