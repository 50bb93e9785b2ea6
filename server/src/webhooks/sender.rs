//! One endpoint's sender task: takes hooks from its bounded queue, gathers them into a POST
//! (`batch_size`, `linger`), signs it and sends it, retrying failures with exponential backoff
//! and jitter until `retry.max_attempts` or `retry.max_age`. One POST is in flight per
//! endpoint, so an endpoint gets its hooks in the order they happened; a slow endpoint only
//! fills its own queue.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use impush_core::{config::Secret, NodeId};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{config::RetryConfig, hook, sign, Hook};
use crate::metrics::{Metrics, WebhookDrop, WebhookPost};

/// Most bytes of a response body read (and thrown away) so the connection can be reused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What one endpoint's task needs.
#[derive(Debug)]
pub(crate) struct Sender {
    /// `webhooks.endpoints.<i> (host)`: how logs name the endpoint (the URL may hold a
    /// credential).
    pub(crate) name: String,
    pub(crate) url: reqwest::Url,
    pub(crate) secret: Secret,
    pub(crate) include_data: bool,
    pub(crate) node: NodeId,
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) retry: RetryConfig,
    pub(crate) client: reqwest::Client,
    pub(crate) metrics: Arc<Metrics>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth trying again, not before the server's `Retry-After` if it gave one.
    Retry(Option<Duration>),
    /// The receiver refused the request itself (a 4xx other than 408 and 429, or a redirect).
    Refused(u16),
}

/// Signals from the node: `closing` (shutdown began: send what is queued, take nothing new)
/// and `abort` (the grace is over: drop what is left, counted).
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    pub(crate) closing: CancellationToken,
    pub(crate) abort: CancellationToken,
}

impl Sender {
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Arc<Hook>>, stop: Stop) {
        let mut closed = false;
        loop {
            let first = tokio::select! {
                biased;
                () = stop.abort.cancelled() => break,
                () = stop.closing.cancelled(), if !closed => {
                    // Hooks already queued are still received; new ones are refused.
                    rx.close();
                    closed = true;
                    continue;
                }
                h = rx.recv() => match h {
                    Some(h) => h,
                    None => break,
                },
            };
            let batch = self.gather(first, &mut rx, &stop, &mut closed).await;
            self.deliver(batch, &stop.abort).await;
        }
        // Aborted: what is still queued is lost; say so.
        rx.close();
        let mut left = 0u64;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        self.dropped(WebhookDrop::Shutdown, left);
    }

    /// Fills a POST: up to `batch_size` hooks, waiting at most `linger` after the first (not at
    /// all once shutdown began).
    async fn gather(
        &self,
        first: Arc<Hook>,
        rx: &mut mpsc::Receiver<Arc<Hook>>,
        stop: &Stop,
        closed: &mut bool,
    ) -> Vec<Arc<Hook>> {
        let mut batch = vec![first];
        let until = Instant::now() + self.linger;
        while batch.len() < self.batch_size {
            if let Ok(h) = rx.try_recv() {
                batch.push(h);
                continue;
            }
            if *closed {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                () = stop.closing.cancelled() => {
                    rx.close();
                    *closed = true;
                }
                h = rx.recv() => match h {
                    Some(h) => batch.push(h),
                    None => break,
                },
            }
        }
        batch
    }

    /// Sends one POST until it is delivered, refused, or out of attempts or time.
    async fn deliver(&self, batch: Vec<Arc<Hook>>, abort: &CancellationToken) {
        let n = batch.len() as u64;
        let body = bytes::Bytes::from(hook::body(&self.node, &batch, self.include_data));
        // The window runs from when the oldest hook was queued: no hook is sent later than
        // `max_age` after it happened, and one that waited that long behind an outage is
        // dropped without a try.
        let oldest = batch
            .iter()
            .map(|h| h.queued)
            .min()
            .unwrap_or_else(Instant::now);
        let deadline = oldest + self.retry.max_age;
        drop(batch);
        if Instant::now() >= deadline {
            tracing::warn!(endpoint = %self.name, hooks = n, "webhook hooks waited past retry.max_age behind earlier failures; dropped");
            return self.dropped(WebhookDrop::RetriesExhausted, n);
        }
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = tokio::select! {
                () = abort.cancelled() => return self.dropped(WebhookDrop::Shutdown, n),
                a = self.attempt(&body, attempt) => a,
            };
            let retry_after = match outcome {
                Attempt::Delivered => return self.delivered(n),
                Attempt::Refused(status) => {
                    tracing::warn!(endpoint = %self.name, status, hooks = n, "webhook endpoint refused a POST; its hooks are dropped");
                    return self.dropped(WebhookDrop::Refused, n);
                }
                Attempt::Retry(after) => after,
            };
            let now = Instant::now();
            let out_of_attempts =
                self.retry.max_attempts != 0 && attempt >= self.retry.max_attempts;
            if out_of_attempts || now >= deadline {
                break;
            }
            // Equal jitter: at least half the backoff, so retries of many nodes spread out
            // without any of them hammering a receiver that is down.
            let half = backoff / 2;
            let wait =
                (half + half.mul_f64(rand::random::<f64>())).max(retry_after.unwrap_or_default());
            backoff = (backoff * 2).min(self.retry.max_backoff);
            // The last attempt comes at the end of the window rather than never.
            let at = (now + wait).min(deadline);
            tokio::select! {
                () = abort.cancelled() => return self.dropped(WebhookDrop::Shutdown, n),
                () = tokio::time::sleep_until(at) => {}
            }
        }
        tracing::warn!(endpoint = %self.name, attempts = attempt, hooks = n, "webhook POST kept failing until the end of its retries; its hooks are dropped");
        self.dropped(WebhookDrop::RetriesExhausted, n);
    }

    /// One POST.
    async fn attempt(&self, body: &bytes::Bytes, attempt: u32) -> Attempt {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign::sign(self.secret.expose().as_bytes(), t, body);
        let sent = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::SIGNATURE_HEADER, signature)
            .header("Impush-Attempt", attempt)
            .body(body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                self.metrics.webhook_post(WebhookPost::NoResponse);
                // reqwest's error names the URL; log only its kind.
                let why = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "connection failed"
                };
                tracing::debug!(endpoint = %self.name, attempt, why, "webhook POST failed");
                return Attempt::Retry(None);
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(self.retry.max_backoff));
        // Read a little of the answer so the connection can serve the next POST.
        let mut read = 0usize;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            }
        }
        if status.is_success() {
            self.metrics.webhook_post(WebhookPost::Ok);
            return Attempt::Delivered;
        }
        self.metrics.webhook_post(WebhookPost::ErrorStatus);
        tracing::debug!(endpoint = %self.name, attempt, status = status.as_u16(), "webhook POST answered with an error");
        let code = status.as_u16();
        if status.is_server_error() || code == 408 || code == 429 {
            Attempt::Retry(retry_after)
        } else {
            Attempt::Refused(code)
        }
    }

    fn delivered(&self, n: u64) {
        self.metrics.webhook_delivered(n);
        self.metrics.webhook_dequeued(n);
    }

    fn dropped(&self, why: WebhookDrop, n: u64) {
        if n > 0 {
            self.metrics.webhook_dropped(why, n);
        }
        self.metrics.webhook_dequeued(n);
    }
}
