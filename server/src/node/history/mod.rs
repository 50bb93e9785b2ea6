//! Channel and broadcast history on the node, and resume (`docs/design.md` section 15).
//!
//! - `sequencer`: this node numbers the streams it owns and publishes them in order;
//! - `ring`: every node keeps every stream's recent publications as read on `{prefix}.all`;
//! - `resume`: what a reconnecting client missed, replayed before its live frames.
//!
//! One lock orders the two sides: a numbered publication is kept and handed to the local
//! sockets under it, and a resume replays and lets the socket's live frames through under it,
//! so a publication reaches a resuming socket exactly once (replayed, or live), never both and
//! never neither.

mod resume;
mod ring;
mod sequencer;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;
use impush_core::{
    config::HistoryConfig,
    envelope::{self, ClusterCommand, NodeCommand, Position, Publication},
    protocol::ServerFrame,
    Acker,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) use resume::{ResumeRequest, Unreadable};
use ring::{Appended, Rings};
use sequencer::{Sequencer, LANES, LANE_DEPTH};

use super::Node;
use crate::{
    metrics::Metrics,
    session::{Outgoing, SessionHandle},
    stream::StreamKey,
};

/// A publication waiting in its lane to be numbered and published.
pub(crate) type Job = (StreamKey, Publication, Acker);

/// A node's history: what it keeps, its numbering, and the lanes that publish in order.
#[derive(Debug)]
pub(crate) struct History {
    cfg: HistoryConfig,
    rings: Mutex<Rings>,
    sequencer: Mutex<Sequencer>,
    lanes: Vec<mpsc::Sender<Job>>,
}

/// The receiving ends of the lanes, for [`Node::run_lanes`].
#[derive(Debug)]
pub(crate) struct Lanes(Vec<mpsc::Receiver<Job>>);

impl History {
    pub(crate) fn new(cfg: HistoryConfig, node: &impush_core::NodeId, boot: u64) -> (Self, Lanes) {
        let (senders, receivers) = (0..LANES).map(|_| mpsc::channel(LANE_DEPTH)).unzip();
        let history = Self {
            cfg,
            rings: Mutex::new(Rings::default()),
            sequencer: Mutex::new(Sequencer::new(node, boot)),
            lanes: senders,
        };
        (history, Lanes(receivers))
    }

    fn limits(&self) -> (usize, Duration, usize) {
        (self.cfg.size, self.cfg.ttl, self.cfg.max_bytes)
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops what is past the ttl (also without new publications), and forgets the numbering
    /// of idle streams; run by the upkeep loop.
    pub(crate) fn tidy(&self) {
        let now = Instant::now();
        self.rings().expire(now, self.cfg.ttl, self.cfg.max_bytes);
        self.sequencer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget_idle(now, self.cfg.ttl);
    }
}

/// The frame of a channel or broadcast publication.
pub(crate) fn frame_of(cmd: &ClusterCommand) -> Option<Utf8Bytes> {
    let frame = match cmd {
        ClusterCommand::Channel {
            id,
            channel,
            from,
            data,
            ts,
            pos,
        } => ServerFrame::Channel {
            id,
            channel,
            from,
            data,
            ts: *ts,
            offset: pos.as_ref().map(|p| p.offset),
            epoch: pos.as_ref().map(|p| p.epoch.as_str()),
        },
        ClusterCommand::Broadcast { id, data, ts, pos } => ServerFrame::Broadcast {
            id,
            data,
            ts: *ts,
            offset: pos.as_ref().map(|p| p.offset),
            epoch: pos.as_ref().map(|p| p.epoch.as_str()),
        },
        _ => return None,
    };
    Some(frame.to_json().into())
}

fn resume_frame(
    key: &StreamKey,
    recovered: bool,
    replayed: usize,
    reason: Option<&str>,
) -> Outgoing {
    let channel = match key {
        StreamKey::Channel(c) => Some(c),
        StreamKey::Broadcast => None,
    };
    let frame = ServerFrame::Resume {
        channel,
        broadcast: channel.is_none(),
        recovered,
        replayed: recovered.then_some(replayed),
        reason,
    };
    Outgoing::plain(frame.to_json().into())
}

impl Node {
    /// The upkeep's share of history: see [`History::tidy`].
    pub(crate) fn tidy_history(&self) {
        if let Some(h) = &self.history {
            h.tidy();
        }
    }

    /// Hands a numbered publication to the local sockets `deliver` reaches, keeping it first;
    /// one already kept (a redelivery) is not delivered again.
    pub(crate) fn deliver_numbered(
        &self,
        key: &StreamKey,
        pos: &Position,
        frame: &Utf8Bytes,
        deliver: impl FnOnce(),
    ) {
        let Some(history) = self.history.as_ref() else {
            deliver();
            return;
        };
        let mut rings = history.rings();
        let appended = rings.append(
            key,
            &pos.epoch,
            pos.offset,
            frame,
            Instant::now(),
            history.limits(),
        );
        match appended {
            // Under the lock: a resume in progress sees it either kept or delivered.
            Appended::Fresh => deliver(),
            Appended::Seen => Metrics::bump(&self.metrics.duplicates_dropped),
        }
    }

    /// Replays to `handle` what its client missed of each stream it asked to resume, answers
    /// each with a `resume` frame, and lets the socket's live frames of those streams through.
    pub(crate) fn resume(
        &self,
        handle: &SessionHandle,
        request: Result<ResumeRequest, Unreadable>,
    ) {
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let frame = ServerFrame::Resume {
                    channel: None,
                    broadcast: false,
                    recovered: false,
                    replayed: None,
                    reason: Some(e.reason()),
                };
                handle.push(Outgoing::plain(frame.to_json().into()));
                handle.unmute();
                return;
            }
        };
        // A resuming client also gets its stored messages at once: the replay may use at most
        // half of the outbound queue, so it never closes its own connection as slow.
        let mut budget = self.limits.outbound_queue / 2;
        let rings = self.history.as_ref().map(|h| h.rings());
        for (key, known) in &request.streams {
            let member = match key {
                StreamKey::Channel(c) => self.registry.is_member(c, &handle.client),
                StreamKey::Broadcast => true,
            };
            if !member {
                handle.push(resume_frame(key, false, 0, Some("not_member")));
                continue;
            }
            let missed = match &rings {
                Some(r) => resume::missed(r.runs(key), known),
                None => Err("window"),
            };
            match missed {
                Ok(entries) if entries.len() <= budget => {
                    budget -= entries.len();
                    for e in &entries {
                        handle.push(Outgoing::plain(e.frame.clone()));
                    }
                    handle.push(resume_frame(key, true, entries.len(), None));
                    self.metrics.resumed(true);
                }
                Ok(_) => {
                    handle.push(resume_frame(key, false, 0, Some("too_many")));
                    self.metrics.resumed(false);
                }
                Err(reason) => {
                    handle.push(resume_frame(key, false, 0, Some(reason)));
                    self.metrics.resumed(false);
                }
            }
        }
        handle.unmute();
        drop(rings);
    }

    /// A publication for a stream this node may own: numbered and published in its lane, or
    /// handed on to the stream's owner when the live view says that is another node now.
    pub(super) async fn sequence(&self, p: Publication, acker: Acker) {
        let key = match &p.channel {
            Some(c) => StreamKey::Channel(c.clone()),
            None => StreamKey::Broadcast,
        };
        let owner = self.cluster.stream_owner(key.placement()).id.clone();
        let Some(history) = self.history.as_ref().filter(|_| owner == self.id) else {
            // Not ours (any more), or this node keeps no history: the owner numbers it.
            if owner == self.id {
                self.publish_plain(key, p, acker).await;
                return;
            }
            let cmd = NodeCommand::Publish(p);
            match envelope::encode("publication", &cmd) {
                Ok(payload) => {
                    if self
                        .broker
                        .publish(&self.topics.inbox(&owner), payload)
                        .await
                        .is_ok()
                    {
                        acker.ack();
                    } else {
                        Metrics::bump(&self.metrics.broker_publish_errors);
                    }
                }
                Err(_) => acker.ack(),
            }
            return;
        };
        // A publication sent again (a retry with the same idempotency key or id, or one the
        // broker hands over twice) is numbered, and so delivered, once within the window.
        if !self.published.first_time(&p.id) {
            Metrics::bump(&self.metrics.duplicates_dropped);
            acker.ack();
            return;
        }
        let lane = history
            .sequencer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lane(&key);
        // Bounded: a full lane holds the inbox reader (backpressure), it never grows.
        let _ = history.lanes[lane].send((key, p, acker)).await;
    }

    /// Publishes `p` without a position (this node keeps no history).
    async fn publish_plain(&self, key: StreamKey, p: Publication, acker: Acker) {
        let cmd = command(&key, p, None);
        if let Ok(payload) = envelope::encode("cluster command", &cmd) {
            if self
                .broker
                .publish(self.topics.all(), payload)
                .await
                .is_ok()
            {
                acker.ack();
                return;
            }
            Metrics::bump(&self.metrics.broker_publish_errors);
        }
    }

    /// Runs the lanes until `stop`: each numbers its publications and publishes them one after
    /// the other, retrying a failed publish (the inbox delivery stays unacked meanwhile).
    pub(crate) fn run_lanes(
        self: &Arc<Self>,
        lanes: Lanes,
        stop: &CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        for mut rx in lanes.0 {
            let node = self.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    let job = tokio::select! {
                        () = stop.cancelled() => return,
                        job = rx.recv() => job,
                    };
                    let Some((key, p, acker)) = job else { return };
                    node.number_and_publish(key, p, acker, &stop).await;
                }
            });
        }
    }

    async fn number_and_publish(
        &self,
        key: StreamKey,
        p: Publication,
        acker: Acker,
        stop: &CancellationToken,
    ) {
        let Some(history) = self.history.as_ref() else {
            return;
        };
        let pos = history
            .sequencer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(&key, Instant::now());
        let cmd = command(&key, p, Some(pos));
        let Ok(payload) = envelope::encode("cluster command", &cmd) else {
            acker.ack();
            return;
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .broker
                .publish(self.topics.all(), payload.clone())
                .await
            {
                Ok(()) => {
                    acker.ack();
                    return;
                }
                Err(e) => {
                    Metrics::bump(&self.metrics.broker_publish_errors);
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "publishing a numbered publication failed; retrying"
                    );
                }
            }
            tokio::select! {
                // Unacked: delivered again to this node (or the stream's next owner).
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn command(key: &StreamKey, p: Publication, pos: Option<Position>) -> ClusterCommand {
    match key {
        StreamKey::Channel(channel) => ClusterCommand::Channel {
            id: p.id,
            channel: channel.clone(),
            from: p.from.unwrap_or_else(|| {
                impush_core::ClientId::new("system").expect("`system` is a valid client id")
            }),
            data: p.data,
            ts: p.ts,
            pos,
        },
        StreamKey::Broadcast => ClusterCommand::Broadcast {
            id: p.id,
            data: p.data,
            ts: p.ts,
            pos,
        },
    }
}
