//! What a message read from the presence topic does to a [`Machine`], and what a request
//! addressed to this node gets.

use std::time::Duration;

use impush_core::{ClientId, ConnectionId, DroppedConnection, NodeId};
use tokio::time::Instant;

use super::{Machine, MIN_ASK_GAP};
use crate::{
    state::digest,
    wire::{Query, Reply, Wire},
};

impl Machine {
    /// What a message read from the presence topic does. Returns a node whose full state this
    /// instance must ask for (its heartbeat shows the view of it drifted). Requests, replies
    /// and barriers are the exchange's: they change nothing here.
    pub(crate) fn apply(&mut self, msg: Wire, now: Instant) -> Option<NodeId> {
        let mine = |node: &NodeId| Some(node) == self.me.as_ref();
        match msg {
            Wire::Connected {
                node,
                client,
                connection,
                seq,
            } if !mine(&node) => {
                self.view.add(&node, &client, &connection, now);
                self.view.changed(&node, seq);
            }
            Wire::Disconnected {
                node,
                client,
                connection,
                cleared,
                seq,
            } if !mine(&node) => {
                self.on_disconnected(&node, &client, &connection, cleared);
                self.view.changed(&node, seq);
            }
            Wire::NodeState {
                node,
                connections,
                seq,
            } if !mine(&node) => {
                // Taken before a change this view already has: applying it would undo that
                // change. The change is applied, so the view is no worse without this state,
                // and the node's next heartbeat says whether it still drifted (`wire`).
                if self.view.node(&node).is_some_and(|v| v.seq > seq) {
                    return None;
                }
                self.view.replace(&node, &connections, now);
                self.view.changed(&node, seq);
            }
            Wire::Dropped {
                node,
                by,
                dropped,
                clear,
            } => self.on_dropped(&node, &by, &dropped, clear),
            Wire::Heartbeat {
                node,
                lease_ms,
                count,
                digest,
                draining,
            } => {
                let lease = Duration::from_millis(lease_ms);
                self.view.set_draining(&node, draining, now);
                if mine(&node) {
                    self.on_echo(lease, now);
                } else {
                    return self.on_heartbeat(node, lease, count, digest, now);
                }
            }
            // This node's own deltas (the view was updated when they were made), and what the
            // exchange handles.
            _ => {}
        }
        None
    }

    fn on_disconnected(
        &mut self,
        node: &NodeId,
        client: &ClientId,
        connection: &ConnectionId,
        cleared: bool,
    ) {
        self.view.remove(node, connection);
        if cleared && self.view.connections_of(client) == 0 {
            self.leave_all_if_kept(client);
        }
    }

    fn on_dropped(
        &mut self,
        node: &NodeId,
        by: &NodeId,
        dropped: &[DroppedConnection],
        clear: bool,
    ) {
        let about_me = Some(node) == self.me.as_ref();
        if about_me && by != node {
            // Declared dead while alive: the cluster no longer counts these connections.
            // Forget them here too, so the node's next sync puts them back (and the node
            // announces them again), told by our next heartbeat.
            self.known = false;
            for d in dropped {
                self.local.remove(&d.connection);
            }
        }
        // A node that cleared itself already dropped them from its own view.
        if !about_me || by != node {
            for d in dropped {
                self.view.remove(&d.node, &d.connection);
            }
        }
        // A node that cleared itself (starting, or stopping) holds no lease until its next
        // heartbeat: it is not live (`docs/design.md` section 16).
        if by == node && !about_me {
            self.view.forget_lease(node);
        }
        if clear {
            for d in dropped.iter().filter(|d| d.last) {
                if self.view.connections_of(&d.client) == 0 {
                    self.leave_all_if_kept(&d.client);
                }
            }
        }
    }

    /// Another node's heartbeat: it is alive for `lease`; if its digest shows the view of it
    /// drifted (or the view never had its full state), ask for its state, at most once a lease.
    fn on_heartbeat(
        &mut self,
        node: NodeId,
        lease: Duration,
        count: u64,
        theirs: u64,
        now: Instant,
    ) -> Option<NodeId> {
        self.view.heard(&node, lease, now);
        let v = self.view.node(&node)?;
        let drifted = !v.synced
            || v.connections.len() as u64 != count
            || digest(v.connections.keys()) != theirs;
        let recently = v
            .asked
            .is_some_and(|t| now.duration_since(t) < lease.max(MIN_ASK_GAP));
        if !drifted || recently {
            return None;
        }
        self.view.mark_asked(&node, now);
        Some(node)
    }

    /// This node's own heartbeat came back through the feed.
    fn on_echo(&mut self, lease: Duration, now: Instant) {
        if self.last_echo.is_none_or(|t| now.duration_since(t) > lease) {
            self.echoing_since = Some(now);
        }
        self.last_echo = Some(now);
    }

    // ---- requests ----

    /// The node that answers a request addressed to `to` (one node, or every node when
    /// `None`): this node, if it is one of them; a helper answers nothing.
    pub(crate) fn answerer(&self, to: Option<&NodeId>) -> Option<NodeId> {
        let me = self.me.as_ref()?;
        if to.is_some_and(|t| t != me) {
            return None;
        }
        Some(me.clone())
    }

    /// This node's answer to `query`, and a message to publish first (its full state, when
    /// asked for it and ready to say it).
    pub(crate) fn answer(&mut self, query: Query) -> (Reply, Option<Wire>) {
        let reply = match query {
            Query::Join { channel, clients } => {
                self.memberships.join(&channel, &clients);
                Reply::Done
            }
            Query::Leave { channel, clients } => {
                self.memberships.leave(&channel, &clients);
                Reply::Done
            }
            Query::ChannelMembers { channel } => Reply::Clients {
                clients: self.memberships.members(&channel),
            },
            Query::ChannelCounts => Reply::Counts {
                counts: self.memberships.counts(&self.view, |c| self.answers_for(c)),
            },
            Query::ClientChannels { client } => Reply::Channels {
                channels: self.memberships.channels_of(&client),
            },
            Query::LeaveIfOffline { client } => {
                let offline = self.view.connections_of(&client) == 0;
                let had = offline && !self.memberships.channels_of(&client).is_empty();
                if had {
                    self.memberships.leave_all(&client);
                }
                Reply::Left { left: had }
            }
            Query::ConnectionsOf { node } => Reply::Connections {
                connections: self.view.connections_on(&node),
            },
            Query::KeptWith { node } => Reply::Kept {
                memberships: self.kept_with(&node),
            },
            Query::State => {
                let state = self.ready.then(|| self.state_message()).flatten();
                return (Reply::Done, state);
            }
        };
        (reply, None)
    }
}
