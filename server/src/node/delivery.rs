//! Turning broker commands into frames for this node's sockets. Every message is serialised
//! once and the frame shared by all its sockets.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use impush_core::{
    envelope::{ClusterCommand, Deliver},
    protocol::ServerFrame,
    Acker, ChannelName, ClientId,
};

use super::{history, Node};
use crate::{
    metrics::{self, Metrics, OutKind},
    session::Outgoing,
    settle::{Settlement, Tracked},
    stream::StreamKey,
    webhooks::EventKind,
};

impl Node {
    /// A point-to-point message for receivers this node owns. The broker delivery is acked once
    /// every frame is written or dropped (see `settle`), and a message seen before is dropped.
    pub(super) fn deliver(self: &Arc<Self>, d: Deliver, acker: Acker) {
        // A receiver listed twice gets the message once.
        let mut d = d;
        let mut receivers = std::mem::take(&mut d.to);
        receivers.sort_unstable();
        receivers.dedup();
        if !self.recent.first_time_part(&d.id, &receivers) {
            Metrics::bump(&self.metrics.duplicates_dropped);
            acker.ack();
            return;
        }
        let frame: Utf8Bytes = ServerFrame::Message {
            id: &d.id,
            from: &d.from,
            data: &d.data,
            ts: d.ts,
            receipt: d.receipt,
            stored: false,
            redelivered: false,
            ack: self.must_ack(),
        }
        .to_json()
        .into();
        // Without an inbox, a receiver neither here nor owned here is sent on to its owner
        // (`forward`), once: a message sent on already ends here.
        let may_forward = self.offline.is_none() && !d.forwarded;
        let settlement = Settlement::begin(d, receivers, acker, self.outcomes.settled.clone());
        let mut written = 0u64;
        let keep_absent = self.offline.is_some();
        let mut absent = Vec::new();
        let mut elsewhere = Vec::new();
        for (i, to) in settlement.receivers().iter().enumerate() {
            let mut took = false;
            self.registry.for_client(to, |s| {
                let token = settlement.token(i);
                // Pushed from the offline inbox already (a redelivery after a crash racing
                // the client's reconnect): that socket has it; never twice on one socket.
                if s.sent_from_inbox(settlement.id()) {
                    token.written();
                    took = true;
                    return;
                }
                let out = Outgoing {
                    frame: frame.clone(),
                    token: Some(Tracked::Live(token)),
                    published: 0,
                };
                let pushed = s.push(out);
                took |= pushed;
                written += u64::from(pushed);
            });
            if !took && keep_absent {
                // No socket here, or only closing ones that refused it: kept in its inbox
                // now, for this receiver alone (not when the message settles for all its
                // receivers, which a slow socket elsewhere can hold up), so its next
                // connection, which waits for that before reading the inbox, gets it before
                // anything newer (order per sender).
                absent.push((to.clone(), settlement.token(i)));
            } else if !took && may_forward {
                if let Some(owner) = self.owner_elsewhere(to) {
                    elsewhere.push((owner, to.clone(), settlement.token(i)));
                }
            }
        }
        if !absent.is_empty() {
            self.keep_for_absent(&settlement, absent);
        }
        if !elsewhere.is_empty() {
            self.forward(&settlement, elsewhere);
        }
        settlement.queued();
        self.metrics.out(OutKind::Message, written);
    }

    /// Closes every local connection of `client` with 4001.
    pub(super) fn kick(&self, client: &ClientId) {
        let n = self.registry.for_client(client, |s| s.kick());
        tracing::info!(%client, connections = n, "kicked");
    }

    /// Every node reads membership changes; the owner of each client (live ownership) posts
    /// its hook, so each is posted once.
    fn membership_hooks(&self, kind: EventKind, channel: &ChannelName, clients: &[ClientId]) {
        if self.webhooks.wants(kind) {
            let mine = clients
                .iter()
                .filter(|c| self.cluster.owner(c).id == self.id);
            self.webhooks.membership(kind, channel, mine);
        }
    }

    /// A command every node acts on, applied to local connections only.
    pub(super) fn on_cluster_command(&self, cmd: ClusterCommand) {
        let frame = history::frame_of(&cmd);
        match (cmd, frame) {
            (
                ClusterCommand::Channel {
                    channel, pos, ts, ..
                },
                Some(frame),
            ) => {
                let key = StreamKey::Channel(channel);
                let deliver = || {
                    let StreamKey::Channel(channel) = &key else {
                        return;
                    };
                    let mut nth = 0;
                    let n = self.registry.for_channel(channel, |s| {
                        let sampled = metrics::sampled_ts(nth, ts);
                        s.push_stream(&key, Outgoing::published(frame.clone(), sampled));
                        nth += 1;
                    });
                    self.metrics.out(OutKind::Channel, n as u64);
                };
                match &pos {
                    Some(pos) => self.deliver_numbered(&key, pos, &frame, deliver),
                    None => deliver(),
                }
            }
            (ClusterCommand::Broadcast { pos, ts, .. }, Some(frame)) => {
                let key = StreamKey::Broadcast;
                let deliver = || {
                    let mut nth = 0;
                    let n = self.registry.for_all(|s| {
                        let sampled = metrics::sampled_ts(nth, ts);
                        s.push_stream(&key, Outgoing::published(frame.clone(), sampled));
                        nth += 1;
                    });
                    self.metrics.out(OutKind::Broadcast, n as u64);
                };
                match &pos {
                    Some(pos) => self.deliver_numbered(&key, pos, &frame, deliver),
                    None => deliver(),
                }
            }
            (ClusterCommand::Joined { channel, clients }, _) => {
                self.membership_hooks(EventKind::Joined, &channel, &clients);
                self.registry.join(&channel, &clients)
            }
            (ClusterCommand::Left { channel, clients }, _) => {
                self.membership_hooks(EventKind::Left, &channel, &clients);
                self.registry.leave(&channel, &clients)
            }
            _ => {}
        }
    }
}
