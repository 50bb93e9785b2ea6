//! [`Memberships`]: the channel memberships one node holds (`docs/design.md` section 3).
//!
//! A node holds the memberships of the clients it is a *holder* of (the first two live nodes in
//! the client's order, see `machine/holders.rs`), and for a while those it is handing over.
//! Two holders receive the same joins and leaves, and copy records to each other when the
//! live set changes, so every membership carries the [`Stamp`] of the change that made it and
//! every leave is remembered for a while: a copy merges by the latest stamp, so copies and
//! changes give the same result in any order, and a copy still in flight cannot bring back a
//! membership that ended. Leaves are forgotten after a horizon (a few leases: by then every
//! copy made before them has arrived) or past a cap, so memory stays bounded.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    ops::Bound,
};

use impush_core::{ChannelName, ClientId};

use crate::{
    state::View,
    wire::{Record, Stamp},
};

/// What this node holds of one client.
#[derive(Debug, Default)]
struct Held {
    joined: BTreeMap<ChannelName, Stamp>,
    left: BTreeMap<ChannelName, Stamp>,
    left_all: Option<Stamp>,
    /// Digest of the holders this record is known to be complete at (0: not known).
    placed: u64,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty() && self.left_all.is_none()
    }

    /// The latest leave that ended `channel` here, if any.
    fn ended(&self, channel: &ChannelName) -> Option<Stamp> {
        self.left.get(channel).copied().max(self.left_all)
    }
}

/// The memberships this node holds, indexed both ways.
#[derive(Debug, Default)]
pub(crate) struct Memberships {
    held: BTreeMap<ClientId, Held>,
    of_channel: BTreeMap<ChannelName, BTreeSet<ClientId>>,
    /// Clients with a leave remembered, in the order recorded, with when (this node's clock).
    leaves: VecDeque<(Stamp, ClientId)>,
}

impl Memberships {
    // ---- changes asked by a requester: they apply in the order they arrive ----

    /// `clients` joined `channel` at `at` (stamped after any leave this node remembers, so the
    /// join wins wherever this record is copied).
    pub(crate) fn join(&mut self, channel: &ChannelName, clients: &[ClientId], at: Stamp) {
        for c in clients {
            let h = self.held.entry(c.clone()).or_default();
            let after_leave = h.ended(channel).map_or(at, |e| at.max(e + 1));
            let s = after_leave.max(h.joined.get(channel).copied().unwrap_or(0));
            h.left.remove(channel);
            h.joined.insert(channel.clone(), s);
            self.of_channel
                .entry(channel.clone())
                .or_default()
                .insert(c.clone());
        }
    }

    /// `clients` left `channel` at `at`; remembered (recorded at `now`) even for a client this
    /// node had no record of, since a copy may still bring the membership.
    pub(crate) fn leave(
        &mut self,
        channel: &ChannelName,
        clients: &[ClientId],
        at: Stamp,
        now: Stamp,
    ) {
        for c in clients {
            let h = self.held.entry(c.clone()).or_default();
            let joined = h.joined.remove(channel);
            let s = joined
                .map_or(at, |j| at.max(j + 1))
                .max(h.left.get(channel).copied().unwrap_or(0));
            if h.left_all.is_none_or(|la| s > la) {
                h.left.insert(channel.clone(), s);
            }
            if joined.is_some() {
                unindex(&mut self.of_channel, channel, c);
            }
            self.leaves.push_back((now, c.clone()));
            self.tidy(c);
        }
    }

    /// `client` left every channel at `at`; returns whether it had any here.
    pub(crate) fn leave_all(&mut self, client: &ClientId, at: Stamp, now: Stamp) -> bool {
        let h = self.held.entry(client.clone()).or_default();
        let had = !h.joined.is_empty();
        let s = h.joined.values().max().map_or(at, |m| at.max(m + 1));
        for ch in std::mem::take(&mut h.joined).into_keys() {
            unindex(&mut self.of_channel, &ch, client);
        }
        h.left.retain(|_, l| *l > s);
        h.left_all = Some(h.left_all.map_or(s, |la| la.max(s)));
        self.leaves.push_back((now, client.clone()));
        had
    }

    // ---- copies from another holder: the latest stamp wins ----

    /// Merges another holder's record of a client (recorded at `now`).
    pub(crate) fn merge(&mut self, r: &Record, now: Stamp) {
        let c = &r.client;
        let h = self.held.entry(c.clone()).or_default();
        let mut remembered = false;
        if let Some(la) = r.left_all.filter(|la| h.left_all.is_none_or(|x| *la > x)) {
            let gone: Vec<ChannelName> = h
                .joined
                .iter()
                .filter(|(_, s)| **s < la)
                .map(|(ch, _)| ch.clone())
                .collect();
            for ch in gone {
                h.joined.remove(&ch);
                unindex(&mut self.of_channel, &ch, c);
            }
            h.left.retain(|_, l| *l > la);
            h.left_all = Some(la);
            remembered = true;
        }
        for (ch, s) in &r.left {
            if h.joined.get(ch).is_some_and(|j| s > j) {
                h.joined.remove(ch);
                unindex(&mut self.of_channel, ch, c);
            }
            if !h.joined.contains_key(ch) && h.ended(ch).is_none_or(|e| *s > e) {
                h.left.insert(ch.clone(), *s);
                remembered = true;
            }
        }
        for (ch, s) in &r.joined {
            if h.ended(ch).is_some_and(|e| e >= *s) {
                continue; // a later leave
            }
            match h.joined.get(ch) {
                Some(j) if j >= s => {}
                Some(_) => {
                    h.joined.insert(ch.clone(), *s);
                }
                None => {
                    h.left.remove(ch);
                    h.joined.insert(ch.clone(), *s);
                    self.of_channel
                        .entry(ch.clone())
                        .or_default()
                        .insert(c.clone());
                }
            }
        }
        if remembered {
            self.leaves.push_back((now, c.clone()));
        }
        self.tidy(c);
    }

    /// What this node holds of `client`, as a copy for another holder.
    pub(crate) fn record(&self, client: &ClientId) -> Option<Record> {
        let h = self.held.get(client)?;
        let pairs = |m: &BTreeMap<ChannelName, Stamp>| {
            m.iter().map(|(ch, s)| (ch.clone(), *s)).collect::<Vec<_>>()
        };
        Some(Record {
            client: client.clone(),
            joined: pairs(&h.joined),
            left: pairs(&h.left),
            left_all: h.left_all,
        })
    }

    /// Forgets `client` entirely (handed over to its holders).
    pub(crate) fn remove(&mut self, client: &ClientId) {
        if let Some(h) = self.held.remove(client) {
            for ch in h.joined.keys() {
                unindex(&mut self.of_channel, ch, client);
            }
        }
    }

    /// Forgets leaves recorded more than `horizon` before `now`, and the oldest ones past
    /// `cap` records.
    pub(crate) fn prune(&mut self, now: Stamp, horizon: Stamp, cap: usize) {
        while let Some((at, _)) = self.leaves.front() {
            let over = self.leaves.len() > cap;
            if !over && now.saturating_sub(*at) <= horizon {
                break;
            }
            let Some((_, c)) = self.leaves.pop_front() else {
                break;
            };
            let cutoff = if over {
                Stamp::MAX
            } else {
                now.saturating_sub(horizon)
            };
            if let Some(h) = self.held.get_mut(&c) {
                h.left.retain(|_, l| *l > cutoff);
                if h.left_all.is_some_and(|la| la <= cutoff) {
                    h.left_all = None;
                }
            }
            self.tidy(&c);
        }
    }

    fn tidy(&mut self, client: &ClientId) {
        if self.held.get(client).is_some_and(Held::is_empty) {
            self.held.remove(client);
        }
    }

    // ---- what a holder knows ----

    /// Whether this node has a record of `client` (memberships or remembered leaves).
    pub(crate) fn holds(&self, client: &ClientId) -> bool {
        self.held.contains_key(client)
    }

    /// The holders digest `client`'s record is known to be complete at (0: none).
    pub(crate) fn placed(&self, client: &ClientId) -> u64 {
        self.held.get(client).map_or(0, |h| h.placed)
    }

    pub(crate) fn set_placed(&mut self, client: &ClientId, digest: u64) {
        if let Some(h) = self.held.get_mut(client) {
            h.placed = digest;
        }
    }

    /// The clients held, in order, after `after` (from the first when `None`).
    pub(crate) fn clients_after<'a>(
        &'a self,
        after: Option<&'a ClientId>,
    ) -> impl Iterator<Item = &'a ClientId> + 'a {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.held
            .range::<ClientId, _>((from, Bound::Unbounded))
            .map(|(c, _)| c)
    }

    pub(crate) fn members(&self, channel: &ChannelName) -> Vec<ClientId> {
        self.of_channel
            .get(channel)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn channels_of(&self, client: &ClientId) -> Vec<ChannelName> {
        self.held
            .get(client)
            .map(|h| h.joined.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Per channel: the members `counted` keeps, and how many of them `view` has online
    /// (channels where it keeps none are left out).
    pub(crate) fn counts(
        &self,
        view: &View,
        counted: impl Fn(&ClientId) -> bool,
    ) -> Vec<(ChannelName, usize, usize)> {
        self.of_channel
            .iter()
            .filter_map(|(ch, members)| {
                let (mut n, mut online) = (0, 0);
                for c in members.iter().filter(|c| counted(c)) {
                    n += 1;
                    if view.connections_of(c) > 0 {
                        online += 1;
                    }
                }
                (n > 0).then(|| (ch.clone(), n, online))
            })
            .collect()
    }
}

fn unindex(
    of_channel: &mut BTreeMap<ChannelName, BTreeSet<ClientId>>,
    ch: &ChannelName,
    c: &ClientId,
) {
    if let Some(members) = of_channel.get_mut(ch) {
        members.remove(c);
        if members.is_empty() {
            of_channel.remove(ch);
        }
    }
}

#[cfg(test)]
mod tests;
