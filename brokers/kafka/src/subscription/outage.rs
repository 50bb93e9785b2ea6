//! What a subscription does when the cluster goes away: its consumer's errors, and after
//! losing every broker, holding a group member still until the cluster answers or replacing
//! the consumer (the module docs of `subscription` say why each).

use std::time::Duration;

use impush_core::Result;
use rdkafka::{consumer::Consumer, error::KafkaError, types::RDKafkaErrorCode};
use tokio::time::Instant;

use super::{
    close, create_consumer,
    positions::{assign_fanout, group_kept, partitions},
    Item, Mode, Next, Task,
};
use crate::{error::Error, shared::blocking};

/// How long after a consumer was replaced "all brokers down" is not taken as a new outage:
/// the replacement queued such reports while it was created during the outage, and they come
/// out of its queue right after. librdkafka repeats the report while an outage lasts, so a
/// new one is still noticed.
const REBUILD_GAP: Duration = Duration::from_secs(2);

/// How a consumer error is reported: once when a spell of errors starts, again when it ends.
#[derive(Default)]
pub(super) struct Errors {
    pub(super) failing: bool,
    next_recreate: Option<Instant>,
}

impl Task {
    /// Handles a consumer error.
    pub(super) async fn on_error(&mut self, e: KafkaError, errors: &mut Errors) -> Next {
        if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
            tracing::error!(topic = %self.topic, error = %e, "kafka consumer failed for good; ending the subscription");
            return Next::Stop;
        }
        if !errors.failing {
            tracing::warn!(topic = %self.topic, error = %e, "kafka subscription read failed; retrying");
            errors.failing = true;
        } else {
            tracing::debug!(topic = %self.topic, error = %e, "kafka subscription read failed");
        }
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown)
                if self.replaced.is_none_or(|t| t.elapsed() >= REBUILD_GAP) =>
            {
                return match self.mode {
                    Mode::Queue { .. } => self.hold().await,
                    Mode::Fanout { .. } => self.rebuild().await,
                };
            }
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                // The topic is gone (a broker restart without persistence): create it again,
                // so that this subscription reads what is published from now on.
                let now = Instant::now();
                if errors.next_recreate.is_none_or(|t| now >= t) {
                    errors.next_recreate = Some(now + Duration::from_secs(2));
                    self.topics.forget(&self.topic);
                    if let Err(e) = self.topics.ensure(&self.topic).await {
                        tracing::debug!(topic = %self.topic, error = %e, "cannot create kafka topic again");
                    }
                }
            }
            _ => {}
        }
        // Errors come as events, one per state change or retry, not in a tight loop; a
        // replaced consumer may have queued many, which must drain fast.
        tokio::task::yield_now().await;
        Next::Go
    }

    /// Waits `backoff` before the next try at reaching the cluster, doubling it up to 2 s;
    /// false (stop trying) once the subscriber is gone or the broker shuts down.
    async fn wait_to_retry(&self, backoff: &mut Duration) -> bool {
        tokio::select! {
            () = self.inner.cancel.cancelled() => return false,
            () = self.tx.closed() => return false,
            () = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        true
    }

    /// A queue member's consumer after the connection to every broker was lost: its
    /// partitions are paused (no fetch goes out) until the cluster answers, and then it is kept
    /// if the cluster kept the group (a committed offset is still there: the outage was in
    /// the network, or the broker kept its state), else replaced ([`Task::rebuild`]).
    ///
    /// Replacing a member of a group the cluster kept would have the old member leave (or fail
    /// to, its connections gone) while the new one joins, and tansu keeps a leader that left a
    /// re-forming group as its leader: it refused every sync of the new member for as long as
    /// that was watched (`docs/design.md` section 3).
    async fn hold(&mut self) -> Next {
        tracing::warn!(topic = %self.topic, "lost every kafka broker; holding the group member until the cluster answers");
        let (c, bootstrap) = (self.consumer.clone(), self.inner.bootstrap.clone());
        let held = blocking(&self.inner.bootstrap, "pause", move || {
            let held = c
                .assignment()
                .map_err(Error::kafka(&bootstrap, "assignment"))?;
            c.pause(&held).map_err(Error::kafka(&bootstrap, "pause"))?;
            Ok(held)
        })
        .await;
        let Ok(held) = held else {
            return self.rebuild().await;
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.stopped() {
                return Next::Stop;
            }
            let (c, bootstrap, topic, timeout) = (
                self.consumer.clone(),
                self.inner.bootstrap.clone(),
                self.topic.clone(),
                self.inner.cfg.request_timeout,
            );
            let kept = blocking(&self.inner.bootstrap, "committed offsets", move || {
                group_kept(&c, &bootstrap, &topic, timeout)
            })
            .await;
            match kept {
                Ok(true) => break,
                Ok(false) => return self.rebuild().await,
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "kafka cluster not answering yet");
                    if !self.wait_to_retry(&mut backoff).await {
                        return Next::Stop;
                    }
                }
            }
        }
        let (c, bootstrap) = (self.consumer.clone(), self.inner.bootstrap.clone());
        let resumed = blocking(&self.inner.bootstrap, "resume", move || {
            c.resume(&held)
                .map_err(|e| Error::kafka(&bootstrap, "resume")(e).into())
        })
        .await;
        if resumed.is_err() {
            return self.rebuild().await;
        }
        // Reports of the outage still queued in the consumer are not a new one.
        self.replaced = Some(Instant::now());
        tracing::info!(topic = %self.topic, "kafka cluster kept the group; the member goes on");
        Next::Go
    }

    /// Replaces the consumer after the connection to every broker was lost (see the
    /// `subscription` module docs). The old one is retired and closed at once, in the background and without a
    /// final commit (the cluster is away), so that it never talks to the cluster once it is
    /// back; the new one is positioned once the cluster answers.
    async fn rebuild(&mut self) -> Next {
        tracing::warn!(topic = %self.topic, "lost every kafka broker; replacing the consumer once the cluster answers");
        if let Mode::Queue { group } = &self.mode {
            group.retire_consumer();
        }
        let new = match create_consumer(&self.inner, &self.topic, &self.group_id, self.mode.group())
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %self.topic, error = %e, "cannot replace the kafka consumer; ending the subscription");
                return Next::Stop;
            }
        };
        let old = std::mem::replace(&mut self.consumer, new);
        self.joining = self.mode.group().map(|g| g.assignments());
        let (inner, topics) = (self.inner.clone(), self.topics.clone());
        self.inner
            .tasks
            .spawn(async move { close(&inner, old, None, topics, false).await });
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.stopped() {
                return Next::Stop;
            }
            match self.position().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "kafka consumer not positioned yet");
                    if !self.wait_to_retry(&mut backoff).await {
                        return Next::Stop;
                    }
                }
            }
        }
        self.replaced = Some(Instant::now());
        tracing::info!(topic = %self.topic, "kafka consumer replaced");
        Next::Go
    }

    /// Positions a replacement consumer once the cluster answers: fanout assigns its
    /// partitions where it was, queue subscribes (the group resumes at its committed offsets).
    /// The topic is created again first if the cluster lost it.
    async fn position(&mut self) -> Result<()> {
        self.topics.forget(&self.topic);
        self.topics.ensure(&self.topic).await?;
        let (c, bootstrap, t, timeout) = (
            self.consumer.clone(),
            self.inner.bootstrap.clone(),
            self.topic.clone(),
            self.inner.cfg.request_timeout,
        );
        match &mut self.mode {
            Mode::Fanout { next } => {
                let from = next.clone();
                *next = blocking(&self.inner.bootstrap, "fanout subscribe", move || {
                    assign_fanout(&c, &bootstrap, &t, timeout, &from)
                })
                .await?;
                // Whether the cluster kept what this subscription had not read yet cannot be
                // told: a broker that restarted empty (tansu keeps everything in memory) lost
                // it, and may even have recreated the topic at offsets this subscription
                // never reached. A gap is never silent: report one, of unknown size.
                tracing::warn!(topic = %self.topic, "kafka fanout resumed after losing every broker; reporting a possible gap");
                let lag = Item {
                    delivery: Err(impush_core::Error::Lagged { dropped: 0 }),
                    fence: None,
                };
                if !self.send(lag).await {
                    return Err(impush_core::Error::Closed("kafka subscription"));
                }
            }
            // No start position here: a group the cluster lost starts at the beginning of
            // the (recreated) topic, which holds only messages published since.
            Mode::Queue { .. } => {
                blocking(&self.inner.bootstrap, "queue subscribe", move || {
                    partitions(&c, &bootstrap, &t, timeout)?;
                    c.subscribe(&[&t])
                        .map_err(|e| Error::kafka(&bootstrap, "subscribe")(e).into())
                })
                .await?;
            }
        }
        Ok(())
    }
}
