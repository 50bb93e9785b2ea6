//! What this node's own presence operations do to its [`Machine`] (connections opened and
//! closed, a clear or a sync at start-up, heartbeats, reaping the dead), and the messages each
//! one publishes. The store checked that `me` is this node.

use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use impush_core::{AddedConnection, ClientId, ConnectionId, DroppedConnection, NodeId, NodeSync};
use tokio::time::Instant;

use super::{dropped_message, sorted, Machine, FALLBACK_LEASE};
use crate::{state::digest, wire::Wire};

impl Machine {
    /// A connection opened here: the client's connection count, and the delta to publish.
    pub(crate) fn connect(
        &mut self,
        me: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        now: Instant,
    ) -> (usize, Wire) {
        self.local.insert(connection.clone(), client.clone());
        self.view.add(me, client, connection, now);
        let msg = Wire::Connected {
            node: me.clone(),
            client: client.clone(),
            connection: connection.clone(),
            seq: self.next_seq(),
        };
        (self.view.live_connections_of(client, me, now), msg)
    }

    /// A connection closed here: the client's remaining connections, and the delta to publish.
    /// With `clear_channels`, a client left with none leaves its channels.
    pub(crate) fn disconnect(
        &mut self,
        me: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        clear_channels: bool,
        now: Instant,
    ) -> (usize, Wire) {
        self.local.remove(connection);
        self.view.remove(me, connection);
        let left = self.view.live_connections_of(client, me, now);
        let cleared = clear_channels && left == 0;
        if cleared {
            self.leave_all_if_kept(client);
        }
        let msg = Wire::Disconnected {
            node: me.clone(),
            client: client.clone(),
            connection: connection.clone(),
            cleared,
            seq: self.next_seq(),
        };
        (left, msg)
    }

    /// Whether this node holds connections (a node starting after a crash holds none, and asks
    /// the others what they saw of it).
    pub(crate) fn has_local(&self) -> bool {
        !self.local.is_empty()
    }

    /// Clears this node: everything it held (`held`: what the others' views say, plus its own
    /// connections and view) is dropped, returned with the message announcing it.
    pub(crate) fn clear(
        &mut self,
        me: &NodeId,
        mut held: BTreeSet<(ClientId, ConnectionId)>,
        clear_channels: bool,
    ) -> (Vec<DroppedConnection>, Option<Wire>) {
        held.extend(self.local.drain().map(|(conn, client)| (client, conn)));
        held.extend(self.view.connections_on(me));
        self.view.drop_node(me);
        self.known = false;
        self.ready = true;
        let dropped = self.view.mark_last(me, held.into_iter().collect());
        if clear_channels {
            self.leave_all_of_last(&dropped);
        }
        let msg = dropped_message(me, me, &dropped, clear_channels);
        (dropped, msg)
    }

    /// Makes this node's connections exactly `connections`: what was added, what was removed,
    /// and the messages to publish in order (the removed ones, if any, then the full state).
    pub(crate) fn sync(
        &mut self,
        me: &NodeId,
        connections: &[(ClientId, ConnectionId)],
        clear_channels: bool,
        now: Instant,
    ) -> (NodeSync, Vec<Wire>) {
        self.ready = true;
        let mut added = Vec::new();
        for (client, connection) in connections {
            if !self.local.contains_key(connection) {
                let first = self.view.live_connections_of(client, me, now) == 0;
                self.local.insert(connection.clone(), client.clone());
                self.view.add(me, client, connection, now);
                added.push(AddedConnection {
                    client: client.clone(),
                    connection: connection.clone(),
                    first,
                });
            }
        }
        let want: HashSet<&ConnectionId> = connections.iter().map(|(_, c)| c).collect();
        let mut ghosts: Vec<(ClientId, ConnectionId)> = self
            .local
            .iter()
            .filter(|(conn, _)| !want.contains(conn))
            .map(|(conn, client)| (client.clone(), conn.clone()))
            .collect();
        ghosts.sort();
        for (_, conn) in &ghosts {
            self.local.remove(conn);
            self.view.remove(me, conn);
        }
        let removed = self.view.mark_last(me, ghosts);
        if clear_channels {
            self.leave_all_of_last(&removed);
        }
        added.sort_by(|a, b| (&a.client, &a.connection).cmp(&(&b.client, &b.connection)));
        let mut out: Vec<Wire> = dropped_message(me, me, &removed, clear_channels)
            .into_iter()
            .collect();
        out.push(Wire::NodeState {
            node: me.clone(),
            connections: sorted(&self.local),
            seq: self.next_seq(),
        });
        (NodeSync { removed, added }, out)
    }

    /// The heartbeat to publish: alive for `lease`, and a digest of this node's connections.
    pub(crate) fn heartbeat_message(&self, me: &NodeId, lease: Duration) -> Wire {
        Wire::Heartbeat {
            node: me.clone(),
            lease_ms: lease.as_millis() as u64,
            count: self.local.len() as u64,
            digest: digest(self.local.keys()),
            draining: self.draining,
        }
    }

    /// The heartbeat was published: returns whether the cluster still knew this node (else it
    /// registers its connections again), and counts it as known from now on.
    pub(crate) fn heartbeat_sent(&mut self, me: &NodeId, lease: Duration, now: Instant) -> bool {
        self.view.heard(me, lease, now);
        self.view.set_draining(me, self.draining, now);
        self.ready = true;
        std::mem::replace(&mut self.known, true)
    }

    /// Forgets every node whose lease ran out, if this node is the one to do it: the lowest id
    /// among the live nodes, reading a feed whose own heartbeats have come back for a lease
    /// without a gap. Returns each reaped node with the connections it held.
    pub(crate) fn reap(
        &mut self,
        me: &NodeId,
        clear_channels: bool,
        now: Instant,
    ) -> Vec<(NodeId, Vec<DroppedConnection>)> {
        if !self.may_reap(me, now) {
            return Vec::new();
        }
        let expired: Vec<NodeId> = self
            .view
            .nodes()
            .filter(|(n, v)| *n != me && !v.alive(now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for n in expired {
            let dropped = self.view.drop_node(&n);
            if clear_channels {
                self.leave_all_of_last(&dropped);
            }
            if !dropped.is_empty() {
                out.push((n, dropped));
            }
        }
        out
    }

    /// Whether this node judges the others now: its feed is fresh, and (so that exactly one
    /// survivor reaps) it has the lowest id among the nodes still alive.
    fn may_reap(&self, me: &NodeId, now: Instant) -> bool {
        let lease = self.view.node(me).map_or(FALLBACK_LEASE, |v| v.lease);
        let feed_fresh = self
            .last_echo
            .is_some_and(|t| now.duration_since(t) <= lease)
            && self
                .echoing_since
                .is_some_and(|t| now.duration_since(t) >= lease);
        if !feed_fresh {
            return false;
        }
        let lowest_alive = self
            .view
            .nodes()
            .filter(|(n, v)| *n == me || v.alive(now))
            .map(|(n, _)| n)
            .chain(std::iter::once(me))
            .min();
        lowest_alive == Some(me)
    }
}
