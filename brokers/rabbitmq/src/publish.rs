//! Publishing: up to [`MAX_IN_FLIGHT`] messages per topic in flight, and what queues up behind
//! them goes out together as the next message (a batch, see `batch`), like the Redis broker's
//! `XADD`s.
//!
//! No timer: an idle topic publishes at once, a busy one sends large batches, which is what
//! lets one publisher go past RabbitMQ's per-message cost (each message is routed, stored and
//! confirmed on its own; a batch of 100 costs about what one message does). Several messages in
//! flight hide the confirm's latency, which for persistent messages includes RabbitMQ's disk
//! sync. A publish returns `Ok` only once RabbitMQ confirmed the message carrying it (publisher
//! confirms), and fails after `publish_timeout` without a confirm, or at once while the
//! connection is down. Messages of one topic go out, and are answered, in publish order.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{future::BoxFuture, stream::FuturesOrdered, StreamExt};
use impush_core::Result;
use lapin::{types::ShortString, BasicProperties};
use tokio::sync::oneshot;

use crate::{batch, error::Error, link::within, shared::Shared};

/// Most payloads in one message.
const MAX_PER_MESSAGE: usize = 512;
/// Payload bytes past which a batch takes no more payloads (it has at least one).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most messages of one topic awaiting their confirm at once.
const MAX_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<()>>;

/// Publishes waiting for their topic's message in flight, per topic.
#[derive(Default)]
pub(crate) struct Outgoing {
    topics: Mutex<HashMap<String, Vec<(Bytes, Reply)>>>,
}

impl Outgoing {
    /// Queues `payload` on `topic`; returns whether the caller must start a [`flush`] (nothing
    /// is in flight for the topic).
    fn push(&self, topic: &str, payload: Bytes, reply: Reply) -> bool {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        match topics.get_mut(topic) {
            // A flush owns the entry for as long as it exists.
            Some(waiting) => {
                waiting.push((payload, reply));
                false
            }
            None => {
                topics.insert(topic.to_owned(), vec![(payload, reply)]);
                true
            }
        }
    }

    /// The next batch of `topic`, if anything waits.
    fn take(&self, topic: &str) -> Option<Vec<(Bytes, Reply)>> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = topics.get_mut(topic).filter(|w| !w.is_empty())?;
        let mut n = 0;
        let mut bytes = 0;
        while n < waiting.len().min(MAX_PER_MESSAGE) && (n == 0 || bytes < MAX_MESSAGE_BYTES) {
            bytes += waiting[n].0.len();
            n += 1;
        }
        Some(waiting.drain(..n).collect())
    }

    /// Ends the flush of `topic` (removes its entry) if nothing waits; false if something
    /// arrived meanwhile.
    fn finish(&self, topic: &str) -> bool {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if topics.get(topic).is_some_and(|w| !w.is_empty()) {
            return false;
        }
        topics.remove(topic);
        true
    }

    /// Whether no publish is queued or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.topics.lock().map_or(true, |t| t.is_empty())
    }
}

/// Publishes `payload` on `topic` and waits for its confirm.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    outgoing: &Arc<Outgoing>,
    topic: &str,
    payload: Bytes,
) -> Result<()> {
    let (reply, result) = oneshot::channel();
    if outgoing.push(topic, payload, reply) {
        // A task of its own: if this caller is cancelled, the others still get their message.
        tokio::spawn(flush(shared.clone(), outgoing.clone(), topic.to_owned()));
    }
    result
        .await
        .unwrap_or(Err(impush_core::Error::Closed("rabbitmq broker")))
}

/// Sends what waits on `topic`, a batch at a time with up to [`MAX_IN_FLIGHT`] in flight,
/// until nothing does.
async fn flush(shared: Arc<Shared>, outgoing: Arc<Outgoing>, topic: String) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(batch) = outgoing.take(&topic) else {
                break;
            };
            // Begun here, in order; confirmed (or not) in the background.
            let confirming = begin(&shared, &topic, &batch).await;
            in_flight.push_back(async move { (confirming.await, batch) });
        }
        let Some((result, batch)) = in_flight.next().await else {
            if outgoing.finish(&topic) {
                return;
            }
            continue;
        };
        let mut result = Some(result);
        let last = batch.len() - 1;
        for (i, (_, reply)) in batch.into_iter().enumerate() {
            let r = match &result {
                Some(Err(e)) if i < last => Err(copy(e)),
                _ => result.take().unwrap_or(Ok(())),
            };
            let _ = reply.send(r);
        }
    }
}

/// The failure of a batch, for each of its publishes but the last (which gets the original).
fn copy(e: &impush_core::Error) -> impush_core::Error {
    use impush_core::Error as E;
    let cause = |source: Option<&(dyn std::error::Error + 'static)>| {
        let mut text = Vec::new();
        let mut next = source;
        while let Some(s) = next {
            text.push(s.to_string());
            next = s.source();
        }
        text.join(": ")
    };
    match e {
        E::Closed(what) => E::Closed(what),
        E::InvalidArgument(m) => E::InvalidArgument(m.clone()),
        E::Backend { backend, source } => E::Backend {
            backend,
            source: cause(Some(source.as_ref())).into(),
        },
        E::Unavailable { backend, source } => E::Unavailable {
            backend,
            source: source.as_deref().map(|s| cause(Some(s)).into()),
        },
        other => E::Unavailable {
            backend: crate::error::BACKEND,
            source: Some(other.to_string().into()),
        },
    }
}

/// Hands the message carrying `batch` to lapin; the future resolves once RabbitMQ confirmed
/// it, or fails after `publish_timeout`.
async fn begin(
    shared: &Shared,
    topic: &str,
    batch: &[(Bytes, Reply)],
) -> BoxFuture<'static, Result<()>> {
    let link = match shared.link_for_flush() {
        Ok(link) => link,
        Err(e) => return Box::pin(std::future::ready(Err(e))),
    };
    let cfg = &shared.cfg;
    let mut props = BasicProperties::default();
    if cfg.persistent {
        props = props.with_delivery_mode(2);
    }
    let body = if let [(only, _)] = batch {
        only.clone()
    } else {
        props = props.with_type(ShortString::from(batch::BATCH_TYPE));
        Bytes::from(batch::encode(batch.iter().map(|(p, _)| p)))
    };
    let timeout: Duration = cfg.publish_timeout;
    let started = tokio::time::Instant::now();
    let begun = within(
        "publish",
        timeout,
        link.begin_publish(&cfg.exchange, topic, body, props),
    )
    .await;
    Box::pin(async move {
        let confirming = match begun {
            Ok(c) => c,
            Err(e) => return Err(e.into()),
        };
        let left = timeout.saturating_sub(started.elapsed());
        let res = within("publish", left, confirming).await;
        if let Err(Error::Timeout { .. }) = &res {
            // The confirm may still come; nobody waits for it. A fresh channel for the next
            // publish keeps lapin from holding on to confirms that will never be awaited.
            link.discard_publisher().await;
        }
        res.map_err(|e| match e {
            Error::Timeout { op, .. } => Error::Timeout { op, after: timeout }.into(),
            e => e.into(),
        })
    })
}
