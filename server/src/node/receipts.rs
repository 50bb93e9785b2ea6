//! The receipts task: acts on settled messages (receipt frames, then the broker ack) and turns
//! client acks into `acked` receipts.
//!
//! A receipt frame covers one message and one status for all the receivers settled together
//! (DESIGN section 4), so a message to 10,000 receivers costs its sender a handful of frames.
//! Client acks of one message trickle in one by one; they are gathered for [`ACK_WINDOW`]
//! before a frame goes out.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;
use impush_core::{
    envelope::{self, NodeCommand},
    protocol::ServerFrame,
    ClientId, MessageId, ReceiptStatus,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::{
    metrics::OutKind,
    session::Outgoing,
    settle::{AckEvent, Settled},
};

/// How long acks of one message are gathered into one `acked` receipt.
const ACK_WINDOW: Duration = Duration::from_millis(20);

/// The receiving ends of the outcome channels sessions and settlements report to.
#[derive(Debug)]
pub(crate) struct Inboxes {
    pub(crate) settled: mpsc::UnboundedReceiver<Settled>,
    pub(crate) acks: mpsc::UnboundedReceiver<AckEvent>,
}

type AckKey = (MessageId, ClientId);

impl Node {
    /// Runs until `stop`, then finishes what is already settled (acking it to the broker).
    pub(crate) async fn run_receipts(
        self: Arc<Self>,
        mut inboxes: Inboxes,
        stop: CancellationToken,
    ) {
        let mut acked: HashMap<AckKey, Vec<ClientId>> = HashMap::new();
        let mut flush_at: Option<Instant> = None;
        loop {
            let deadline = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(s) = inboxes.settled.recv() => self.on_settled(s),
                Some(a) = inboxes.acks.recv() => {
                    self.metrics.receipt(ReceiptStatus::Acked, 1);
                    acked.entry((a.id, a.sender)).or_default().push(a.receiver);
                    flush_at.get_or_insert_with(|| Instant::now() + ACK_WINDOW);
                }
                () = tokio::time::sleep_until(deadline), if flush_at.is_some() => {
                    flush_at = None;
                    self.flush_acked(&mut acked);
                }
                () = stop.cancelled() => {
                    while let Ok(s) = inboxes.settled.try_recv() {
                        self.on_settled(s);
                    }
                    self.flush_acked(&mut acked);
                    return;
                }
            }
        }
    }

    fn flush_acked(&self, acked: &mut HashMap<AckKey, Vec<ClientId>>) {
        for ((id, sender), to) in acked.drain() {
            self.send_receipt(id, sender, to, ReceiptStatus::Acked, None);
        }
    }

    fn on_settled(&self, s: Settled) {
        let Settled {
            id,
            sender,
            receipt,
            delivered,
            undelivered,
            acker,
        } = s;
        if !receipt {
            acker.ack();
            return;
        }
        let mut parts = Vec::with_capacity(2);
        for (to, status) in [
            (delivered, ReceiptStatus::Delivered),
            (undelivered, ReceiptStatus::Offline),
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
    fn send_receipt(
        &self,
        id: MessageId,
        sender: ClientId,
        to: Vec<ClientId>,
        status: ReceiptStatus,
        then: Option<impush_core::Acker>,
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
                crate::metrics::Metrics::bump(&metrics.broker_publish_errors);
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
