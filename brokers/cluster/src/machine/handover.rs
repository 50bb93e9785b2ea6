//! Handing memberships to their holders (`docs/design.md` section 3).
//!
//! When the live set changes, the holders of some clients change: a node that restarted empty
//! is an owner again, a new backup lacks a copy, a node that is no holder any more still has
//! one. Each node then walks the records it holds, in bounded batches, and copies each record
//! whose holders changed since it was last placed to the other holders; once they confirmed,
//! it marks the record placed, or forgets it when it is no holder any more (and the record did
//! not change meanwhile). Copies merge by stamp (`memberships`), so sending one twice, or late,
//! is harmless. A node that starts empty also asks the others for its records before it
//! serves (`reclaim_page`), so it never answers for its clients with nothing.

use std::collections::{BTreeMap, BTreeSet};

use impush_core::{ClientId, NodeId};
use tokio::time::Instant;

use super::Machine;
use crate::wire::Record;

/// Most channel entries (plus one per client) in one batch or one page, so a message stays
/// far below any broker's size limit.
const BATCH_WEIGHT: usize = 2048;
/// Most records looked at for one batch or page (most are skipped: already placed).
const BATCH_SCAN: usize = 8192;
/// Leaves are remembered for this many leases after they were recorded: by then every copy
/// made before them has arrived (copies are sent within a heartbeat of a change).
const LEAVE_HORIZON_LEASES: u32 = 3;
/// Most leaves remembered at once; past it the oldest are forgotten first.
const LEAVES_CAP: usize = 65_536;

/// What is left to hand over.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    /// The walk over held records: `None` idle, `Some(None)` from the first, `Some(Some(c))`
    /// after `c`.
    scan: Option<Option<ClientId>>,
    /// Records to copy in the next batch whatever their placement says.
    due: BTreeSet<ClientId>,
    /// Records to copy again at the next tick (a copy failed, or a copy arrived here for a
    /// client this node does not hold).
    retry: BTreeSet<ClientId>,
    /// New work since the exchange last looked.
    wake: bool,
}

impl Handover {
    /// Walk every held record again (the live set changed).
    pub(super) fn rescan(&mut self) {
        self.scan = Some(None);
        self.wake = true;
    }

    pub(super) fn due(&mut self, client: ClientId) {
        self.due.insert(client);
        self.wake = true;
    }
}

/// One batch: the copies to send, and what to do with each record once they were confirmed.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Copies per target node.
    pub(crate) sends: BTreeMap<NodeId, Vec<Record>>,
    items: Vec<Item>,
}

impl Batch {
    /// How many records this batch hands over.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[derive(Debug)]
struct Item {
    record: Record,
    targets: Vec<NodeId>,
    /// The holders digest when the batch was made.
    placed: u64,
    /// This node was one of the holders.
    keep: bool,
}

impl Machine {
    /// Whether there is new hand-over work since the last call.
    pub(crate) fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.handover.wake)
    }

    /// The tick: copies that failed (or must be passed on) are due again.
    pub(crate) fn retry_due(&mut self) {
        let retry = std::mem::take(&mut self.handover.retry);
        self.handover.due.extend(retry);
    }

    /// The next batch to hand over at `now`, or `None` when there is nothing to do. A batch may
    /// have no copies (every record it looked at was placed) while the walk goes on.
    pub(crate) fn next_handover(&mut self, now: Instant) -> Option<Batch> {
        self.refresh_live(now);
        let stamp = self.stamp(now);
        let horizon = self.lease.as_micros() as u64 * u64::from(LEAVE_HORIZON_LEASES);
        self.memberships.prune(stamp, horizon, LEAVES_CAP);
        if self.handover.due.is_empty() && self.handover.scan.is_none() {
            return None;
        }
        let mut batch = Batch::default();
        let mut weight = 0;
        let mut due = BTreeSet::new();
        while weight < BATCH_WEIGHT {
            let Some(c) = self.handover.due.pop_first() else {
                break;
            };
            weight += self.add_to(&mut batch, &c, true);
            due.insert(c);
        }
        let mut scanned = 0;
        while weight < BATCH_WEIGHT && scanned < BATCH_SCAN {
            let Some(after) = self.handover.scan.clone() else {
                break;
            };
            let next = self
                .memberships
                .clients_after(after.as_ref())
                .next()
                .cloned();
            let Some(c) = next else {
                self.handover.scan = None;
                break;
            };
            scanned += 1;
            if !due.contains(&c) {
                weight += self.add_to(&mut batch, &c, false);
            }
            self.handover.scan = Some(Some(c));
        }
        Some(batch)
    }

    /// Adds `client`'s record to `batch` if it must move (always when `due`); returns its weight.
    fn add_to(&mut self, batch: &mut Batch, client: &ClientId, due: bool) -> usize {
        let Some(record) = self.memberships.record(client) else {
            return 0;
        };
        let h = self.holders(client);
        let keep = self.me.as_ref().is_some_and(|me| h.contains(me));
        let placed = h.digest();
        if !due && keep && self.memberships.placed(client) == placed {
            return 0;
        }
        let targets = h.others(self.me.as_ref());
        for t in &targets {
            batch
                .sends
                .entry(t.clone())
                .or_default()
                .push(record.clone());
        }
        let weight = record.weight();
        batch.items.push(Item {
            record,
            targets,
            placed,
            keep,
        });
        weight
    }

    /// The copies of `batch` were sent; `failed` names the targets that did not confirm. A
    /// record whose targets all confirmed is placed, or forgotten if this node is no holder and
    /// it did not change meanwhile; the others are tried again at the next tick.
    pub(crate) fn handed_over(&mut self, batch: Batch, failed: &BTreeSet<NodeId>, now: Instant) {
        self.refresh_live(now);
        for item in batch.items {
            let c = &item.record.client;
            if item.targets.iter().any(|t| failed.contains(t)) {
                self.handover.retry.insert(c.clone());
                continue;
            }
            let unchanged = self.memberships.record(c).as_ref() == Some(&item.record);
            let holders = self.holders(c);
            let still = self.me.as_ref().is_some_and(|me| holders.contains(me));
            if item.keep && still && holders.digest() == item.placed {
                self.memberships.set_placed(c, item.placed);
            } else if !item.keep && !still && unchanged {
                self.memberships.remove(c);
            } else if self.memberships.holds(c) {
                // The live set or the record changed while the copies were out: look again.
                self.handover.due(c.clone());
            }
        }
    }

    /// Copies another node sent (`view`: the digest of its live view). A record new here is
    /// placed if this node is a holder and both saw the same live set (the sender copied it to
    /// every holder); a record this node is no holder of is passed on at the next tick.
    pub(super) fn take_copies(&mut self, records: &[Record], view: u64, now: Instant) {
        let stamp = self.stamp(now);
        for r in records {
            let fresh = !self.memberships.holds(&r.client);
            self.memberships.merge(r, stamp);
            if !self.memberships.holds(&r.client) {
                continue;
            }
            let h = self.holders(&r.client);
            if !self.me.as_ref().is_some_and(|me| h.contains(me)) {
                self.handover.retry.insert(r.client.clone());
            } else if fresh && view == self.view_digest {
                self.memberships.set_placed(&r.client, h.digest());
            }
        }
    }

    /// Records this node took back from another one while starting (see the module docs).
    pub(crate) fn take_reclaimed(&mut self, records: &[Record], now: Instant) {
        let view = self.view_digest;
        self.take_copies(records, view, now);
    }

    /// One page of the records `node` holds or will hold (its home clients, and the clients it
    /// is a holder of by this node's view), after `after`: the records and where the next page
    /// starts.
    pub(super) fn reclaim_page(
        &self,
        node: &NodeId,
        after: Option<&ClientId>,
    ) -> (Vec<Record>, Option<ClientId>) {
        let (mut records, mut weight, mut scanned) = (Vec::new(), 0, 0);
        let mut last = None;
        for c in self.memberships.clients_after(after) {
            if weight >= BATCH_WEIGHT || scanned >= BATCH_SCAN {
                return (records, last);
            }
            scanned += 1;
            last = Some(c.clone());
            if self.cluster.home(c).id != *node && !self.holders(c).contains(node) {
                continue;
            }
            if let Some(r) = self.memberships.record(c) {
                weight += r.weight();
                records.push(r);
            }
        }
        (records, None)
    }

    /// Direct changes of `clients` arrived (`fresh[i]`: client `i` had no record here before;
    /// `view`: the requester's live view). A new record is placed when the requester saw the
    /// live set as this node does (it sent the change to every holder); when it did not, or
    /// this node is no holder, the records are copied to the holders at once.
    pub(super) fn after_direct(&mut self, clients: &[ClientId], fresh: &[bool], view: u64) {
        let same_view = view == self.view_digest;
        for (c, fresh) in clients.iter().zip(fresh) {
            if !self.memberships.holds(c) {
                continue;
            }
            let h = self.holders(c);
            if !same_view || !self.me.as_ref().is_some_and(|me| h.contains(me)) {
                self.handover.due(c.clone());
            } else if *fresh {
                self.memberships.set_placed(c, h.digest());
            }
        }
    }

    /// A requester saw a holder of `clients` miss a change: copy them again at the next tick.
    pub(super) fn hand_over_again(&mut self, clients: &[ClientId]) {
        for c in clients.iter().filter(|c| self.memberships.holds(c)) {
            self.handover.retry.insert(c.clone());
        }
    }
}
