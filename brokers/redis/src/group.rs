//! Consumer groups (`Queue` subscriptions): acknowledgement and taking over the entries of
//! members that died.
//!
//! Entries are read without `NOACK`, so Redis keeps each one in the group's pending entries list
//! until it is acked. One stream entry may carry several payloads (publishes batched behind an
//! `XADD` in flight), so the entry is acked once all its payloads are ([`EntryAcks`]). Acks go
//! to a task per subscription that sends one `XACK` per batch, off the subscriber's path.
//!
//! A read whose answer never arrived (the connection timed out or broke with the reply on its
//! way) leaves entries pending under the reader's own consumer name, which no sweep of its
//! own claims and no other member claims while it stays active: after a failed read the reader
//! reads its own pending entries again (`XREADGROUP` from id 0), skipping those its subscriber
//! still holds ([`InFlight`]).
//!
//! A member that dies leaves its entries pending under its consumer name. Every member sweeps
//! the group now and then ([`claim_orphans`]): entries pending on *another* consumer for longer
//! than `claim_idle` are claimed (`XCLAIM`) and delivered again; consumers with nothing pending
//! that stayed idle for long are deleted, so restarts do not grow the group without bound.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::{
    clients::{Client, Pool},
    interfaces::StreamsInterface,
    types::{streams::XPendingArgs, Value},
};
use impush_core::Acknowledge;
use tokio::sync::mpsc;

use crate::error::Error;

/// Most ids in one `XACK`, and most pending entries looked at per sweep.
const ACK_BATCH: usize = 512;
/// Acks kept for a retry while Redis is unreachable; beyond this the oldest are given up (their
/// entries are then delivered again after a restart: at-least-once still holds).
const MAX_UNSENT_ACKS: usize = 100_000;

/// The entries a consumer has handed to its subscriber that the subscriber still holds (an
/// entry leaves when its last delivery is acked or dropped): what a re-read of the consumer's
/// own pending entries must not deliver a second time. One the subscriber let go unacked is
/// pending and not held: a re-read delivers it again.
pub(crate) type InFlight = Arc<Mutex<HashSet<String>>>;

/// The payloads of one stream entry still to be acked.
#[derive(Debug)]
pub(crate) struct EntryAcks {
    remaining: AtomicUsize,
    id: String,
    acks: mpsc::UnboundedSender<String>,
    in_flight: InFlight,
}

impl EntryAcks {
    /// Counts `payloads` acks for entry `id`, which is in flight until its deliveries are
    /// gone (acked, or dropped unacked).
    pub(crate) fn new(
        id: String,
        payloads: usize,
        acks: mpsc::UnboundedSender<String>,
        in_flight: &InFlight,
    ) -> Arc<Self> {
        in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone());
        Arc::new(Self {
            remaining: AtomicUsize::new(payloads),
            id,
            acks,
            in_flight: in_flight.clone(),
        })
    }
}

impl Drop for EntryAcks {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Acks one payload of an entry; the last one acks the entry.
pub(crate) struct PayloadAck(pub(crate) Arc<EntryAcks>);

impl Acknowledge for PayloadAck {
    fn ack(self: Box<Self>) {
        if self.0.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The task is gone only when the subscription is: the entry stays pending and is
            // claimed by the next member, which is what an unacked delivery means.
            let _ = self.0.acks.send(self.0.id.clone());
        }
    }
}

/// Sends the acks of one subscription in batches until the subscription and every delivery of
/// it are gone, retrying while Redis is unreachable.
pub(crate) async fn run_acker(
    pool: Pool,
    topic: String,
    group: String,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let mut unsent: Vec<String> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if unsent.is_empty() {
            match rx.recv().await {
                Some(id) => unsent.push(id),
                None => return,
            }
        }
        while unsent.len() < MAX_UNSENT_ACKS {
            match rx.try_recv() {
                Ok(id) => unsent.push(id),
                Err(_) => break,
            }
        }
        let n = unsent.len().min(ACK_BATCH);
        let batch: Vec<&str> = unsent[..n].iter().map(String::as_str).collect();
        match pool
            .xack::<Value, _, _, _>(topic.as_str(), group.as_str(), batch)
            .await
        {
            Ok(_) => {
                unsent.drain(..n);
                backoff = Duration::from_millis(100);
            }
            // The group is gone (Redis restarted without persistence): nothing to ack.
            Err(e) if e.details().starts_with("NOGROUP") => unsent.clear(),
            Err(e) => {
                tracing::debug!(%topic, error = &e as &dyn std::error::Error, "XACK failed; retrying");
                if unsent.len() >= MAX_UNSENT_ACKS {
                    let over = unsent.len() + 1 - MAX_UNSENT_ACKS;
                    unsent.drain(..over);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One consumer of a group, as `XINFO CONSUMERS` lists it.
struct ConsumerInfo {
    name: String,
    pending: u64,
    idle_ms: u64,
}

fn consumers_of(v: Value) -> Vec<ConsumerInfo> {
    let Ok(list) = v.convert::<Vec<HashMap<String, Value>>>() else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|mut m| {
            Some(ConsumerInfo {
                name: m.remove("name")?.convert().ok()?,
                pending: m.remove("pending")?.convert().ok()?,
                idle_ms: m.remove("idle")?.convert().ok()?,
            })
        })
        .collect()
}

/// Claims, for consumer `me`, the entries other consumers of `group` left pending for longer
/// than `idle`, and returns them as read. Also deletes consumers that have nothing pending and
/// were idle for a long while (dead members of earlier runs).
pub(crate) async fn claim_orphans(
    reader: &Client,
    topic: &str,
    group: &str,
    me: &str,
    idle: Duration,
) -> Result<Vec<(String, HashMap<String, Bytes>)>, Error> {
    let idle_ms = idle.as_millis() as u64;
    let args = XPendingArgs {
        idle: Some(idle_ms),
        start: Some("-".into()),
        end: Some("+".into()),
        count: Some(ACK_BATCH as u64),
        consumer: None,
    };
    let pending: Vec<(String, String, u64, u64)> = reader
        .xpending::<Value, _, _, _>(topic, group, args)
        .await
        .map_err(Error::command("XPENDING"))?
        .convert()
        .map_err(Error::command("parse XPENDING"))?;
    let orphans: Vec<String> = pending
        .into_iter()
        .filter(|(_, consumer, _, _)| consumer != me)
        .map(|(id, ..)| id)
        .collect();
    let claimed = if orphans.is_empty() {
        Vec::new()
    } else {
        let v: Value = reader
            .xclaim(
                topic, group, me, idle_ms, orphans, None, None, None, false, false,
            )
            .await
            .map_err(Error::command("XCLAIM"))?;
        // Entries trimmed from the stream meanwhile come back as nil: skip them.
        let entries: Vec<Value> = v.convert().map_err(Error::command("parse XCLAIM"))?;
        entries
            .into_iter()
            .filter(|e| !e.is_null())
            .filter_map(|e| e.convert::<(String, HashMap<String, Bytes>)>().ok())
            .collect()
    };

    let long_idle = idle_ms.saturating_mul(10).max(60_000);
    let info: Value = reader
        .xinfo_consumers(topic, group)
        .await
        .map_err(Error::command("XINFO CONSUMERS"))?;
    for c in consumers_of(info) {
        if c.name != me && c.pending == 0 && c.idle_ms > long_idle {
            let _: Result<Value, _> = reader
                .xgroup_delconsumer(topic, group, c.name.as_str())
                .await;
        }
    }
    Ok(claimed)
}
