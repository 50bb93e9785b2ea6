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

use impush_core::{ClientId, MessageId, ReceiptStatus};

use super::Node;
use crate::session::{Ackable, SessionHandle};

/// Messages being kept in the inbox store right now, and whether their client acked them
/// meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Keeping(Mutex<HashMap<(ClientId, MessageId), bool>>);

impl Keeping {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ClientId, MessageId), bool>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A keep of `id` for `client` starts.
    pub(crate) fn start(&self, client: &ClientId, id: &MessageId) {
        self.lock().insert((client.clone(), id.clone()), false);
    }

    /// The keep is done; returns whether the client acked meanwhile (remove it again).
    pub(crate) fn finish(&self, client: &ClientId, id: &MessageId) -> bool {
        self.lock()
            .remove(&(client.clone(), id.clone()))
            .unwrap_or(false)
    }

    /// The client acked `id`: returns `true` when a keep is in flight (it will remove the
    /// message when done), `false` when the ack must remove it now.
    pub(crate) fn acked(&self, client: &ClientId, id: &MessageId) -> bool {
        match self.lock().get_mut(&(client.clone(), id.clone())) {
            Some(acked) => {
                *acked = true;
                true
            }
            None => false,
        }
    }
}

impl Node {
    /// Whether every point-to-point message stays pending until the client acks it.
    pub(crate) fn must_ack(&self) -> bool {
        self.offline.as_ref().is_some_and(|o| o.require_ack)
    }

    /// A socket of `handle.client` closed with messages written and never acked: those no
    /// other socket of the client still holds went back to the inbox (they were kept there
    /// when they settled), and their senders hear `stored`.
    pub(crate) fn requeue_unacked(
        &self,
        handle: &SessionHandle,
        unacked: Vec<(MessageId, Ackable)>,
    ) {
        if unacked.is_empty() {
            return;
        }
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
