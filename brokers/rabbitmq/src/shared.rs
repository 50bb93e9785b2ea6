//! What every part of the broker shares ([`Shared`]: the configuration, the current
//! connection, the live subscriptions), and the loop that replaces the connection when it is
//! lost ([`supervise`]).
//!
//! When the connection is lost, its [`Link::dead`] is cancelled (every subscription's consumer
//! stops), calls fail at once with "unavailable", and [`supervise`] connects again with
//! backoff: it declares the exchange, declares every live subscription's queue again and hands
//! it a new consumer (`consume::Sub`), and only then makes the new connection the broker's, so
//! that `ping` succeeds only once everything consumes again.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::uri::AMQPUri;
use tokio_util::sync::CancellationToken;

use crate::{
    config::RabbitMqConfig,
    consume::{self, Sub},
    error::Error,
    link::{within, Link},
};

/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the supervisor looks at the connection's state besides lapin's error events.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What every part of the broker shares: the configuration and the current connection.
pub(crate) struct Shared {
    pub(crate) cfg: RabbitMqConfig,
    uri: AMQPUri,
    /// `cfg.url` with the password redacted.
    pub(crate) url: String,
    link: Mutex<Option<Arc<Link>>>,
    /// Every live subscription, to resume after a reconnect. Held while subscribing and while
    /// resuming, so that a subscription is either resumed by a reconnect or made on its link.
    pub(crate) subs: tokio::sync::Mutex<Vec<Weak<Sub>>>,
    /// Set when `shutdown` starts: publishes and subscribes are refused from then on.
    pub(crate) closing: AtomicBool,
    /// Cancelled by `shutdown` once pending publishes are done; every link's `dead` token is a
    /// child of it.
    pub(crate) closed: CancellationToken,
}

impl Shared {
    /// Parses the configuration and opens the first connection.
    pub(crate) async fn connect(cfg: RabbitMqConfig) -> Result<Arc<Self>, Error> {
        let url = cfg.redacted_url();
        let uri = cfg.amqp_uri().map_err(|reason| Error::Url {
            url: url.clone(),
            reason,
        })?;
        let shared = Arc::new(Self {
            cfg,
            uri,
            url,
            link: Mutex::new(None),
            subs: tokio::sync::Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            closed: CancellationToken::new(),
        });
        let link = shared.open().await?;
        shared.set_link(Some(link.clone()));
        tokio::spawn(supervise(shared.clone(), link));
        Ok(shared)
    }

    /// The live connection: `Closed` once shutdown started, `Down` while reconnecting.
    pub(crate) fn link(&self) -> impush_core::Result<Arc<Link>> {
        if self.closing.load(Ordering::Acquire) {
            return Err(impush_core::Error::Closed("rabbitmq broker"));
        }
        self.link_for_flush()
    }

    /// [`Shared::link`] for publishes queued before `shutdown`: usable until it is done.
    pub(crate) fn link_for_flush(&self) -> impush_core::Result<Arc<Link>> {
        if self.closed.is_cancelled() {
            return Err(impush_core::Error::Closed("rabbitmq broker"));
        }
        let link = self.link.lock().ok().and_then(|l| l.clone());
        match link {
            Some(l) if !l.dead.is_cancelled() => Ok(l),
            _ => Err(Error::Down {
                url: self.url.clone(),
            }
            .into()),
        }
    }

    fn set_link(&self, link: Option<Arc<Link>>) {
        if let Ok(mut slot) = self.link.lock() {
            *slot = link;
        }
    }

    /// Removes the current connection (shutdown).
    pub(crate) fn take_link(&self) -> Option<Arc<Link>> {
        self.link.lock().ok().and_then(|mut l| l.take())
    }

    /// A new connection, within `connect_timeout`.
    async fn open(&self) -> Result<Arc<Link>, Error> {
        Link::open(&self.cfg, &self.uri, &self.url, &self.closed).await
    }
}

/// Watches the connection and replaces it when it is lost, until shutdown.
async fn supervise(shared: Arc<Shared>, mut link: Arc<Link>) {
    loop {
        wait_until_lost(&shared, &link).await;
        link.dead.cancel();
        if shared.closed.is_cancelled() {
            return;
        }
        shared.set_link(None);
        tracing::warn!(url = %shared.url, "connection to RabbitMQ lost; reconnecting");
        let mut backoff = Duration::from_millis(100);
        link = loop {
            tokio::select! {
                () = shared.closed.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let l = match shared.open().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = &e as &dyn std::error::Error, "reconnect failed");
                    continue;
                }
            };
            if shared.resume(&l).await {
                break l;
            }
            l.close().await;
        };
        tracing::warn!(url = %shared.url, "reconnected to RabbitMQ");
    }
}

impl Shared {
    /// Declares every live subscription's queue on `link` and hands each its new consumer,
    /// then makes `link` the broker's connection; false (and nothing changed) if `link` was
    /// lost meanwhile. A subscription whose queue cannot be declared on a live connection
    /// ends, so that its subscriber finds out.
    async fn resume(&self, link: &Arc<Link>) -> bool {
        let mut subs = self.subs.lock().await;
        subs.retain(|s| s.strong_count() > 0);
        // Every consumer is opened before any is handed over, and handed over only once the
        // link is in place: a subscriber that hears of the gap (its stream resumes with a lag)
        // may publish at once (cluster presence asks every node for its state), and a publish
        // before `set_link` failed with "not connected", leaving that state never asked for.
        let mut opened_all = Vec::new();
        for sub in subs.iter().filter_map(Weak::upgrade) {
            let opened = within(
                "resubscribe",
                self.cfg.publish_timeout,
                consume::open(&self.cfg, link, &sub.topic, &sub.mode),
            )
            .await;
            match opened {
                Ok(generation) => opened_all.push((sub, generation)),
                Err(_) if link.dead.is_cancelled() || !link.conn.status().connected() => {
                    return false;
                }
                Err(e) => {
                    tracing::warn!(
                        topic = %sub.topic,
                        error = &e as &dyn std::error::Error,
                        "cannot resubscribe after reconnecting; ending the subscription"
                    );
                    sub.give_up();
                }
            }
        }
        if self.closed.is_cancelled() {
            return false;
        }
        self.set_link(Some(link.clone()));
        let resumed = opened_all.len();
        for (sub, generation) in opened_all {
            sub.hand_over(generation);
        }
        tracing::debug!(resumed, "subscriptions resumed");
        true
    }
}

/// Returns once `link`'s connection is no longer usable, or at shutdown.
async fn wait_until_lost(shared: &Shared, link: &Link) {
    let mut events = link.conn.events_listener();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            () = shared.closed.cancelled() => return,
            () = link.dead.cancelled() => return,
            // lapin reports errors (of the connection or of one channel) as events; its state
            // says whether the connection survived. The tick covers losses without an event.
            ev = events.next() => if ev.is_none() { return },
            _ = tick.tick() => {}
        }
        if !link.conn.status().connected() {
            return;
        }
    }
}
