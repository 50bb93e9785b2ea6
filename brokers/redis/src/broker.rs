//! [`RedisBroker`]: topics are Redis streams.
//!
//! - publish: `XADD topic MAXLEN ~ stream_max_len * 0 <payload> [1 <payload> ...]`. At most one
//!   `XADD` per topic is in flight; publishes that arrive meanwhile go out together as the next
//!   entry (fields `0`, `1`, ... in publish order). No timer: an idle topic publishes at once,
//!   a busy one gets large batches, which is what lets one publisher exceed Redis' per-command
//!   rate;
//! - `Fanout`: a reader starts at the stream's last id when it subscribes and follows with
//!   `XREAD BLOCK` from the last id it saw, so a reconnect loses nothing the stream still holds;
//! - `Queue{group}`: a consumer group (`XGROUP CREATE .. $ MKSTREAM`) read with `XREADGROUP`,
//!   so messages published while no member reads wait in the stream, within its retention, and
//!   each stays pending until acked (at-least-once; see `group`). When Redis lost the group (a
//!   restart without persistence) it is created again from the start of the stream.
//!
//! Every subscription has its own connection and reader task (`reader`).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use fred::{
    clients::Pool,
    interfaces::{ClientLike, StreamsInterface},
    types::Value,
};
use futures_util::StreamExt;
use impush_core::{Broker, Result, SubscribeMode, Subscription};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    client,
    config::RedisConfig,
    error::{core, Error},
    group,
    reader::{self, Cursor, Member, BATCH},
};

/// Most payloads in one stream entry.
const MAX_PER_ENTRY: usize = 512;

/// A [`Broker`] over Redis streams. See the module docs for the layout.
#[derive(Debug)]
pub struct RedisBroker {
    cfg: RedisConfig,
    pool: Pool,
    closed: Arc<AtomicBool>,
    outgoing: Mutex<HashMap<String, Arc<Mutex<Pending>>>>,
}

/// Publishes of one topic waiting for the `XADD` in flight to finish.
#[derive(Debug, Default)]
struct Pending {
    items: Vec<(Bytes, oneshot::Sender<Result<()>>)>,
    flushing: bool,
}

/// Sends what `pending` holds, one entry at a time, until it is empty.
async fn flush(pool: Pool, topic: String, max_len: i64, pending: Arc<Mutex<Pending>>) {
    loop {
        let batch: Vec<(Bytes, oneshot::Sender<Result<()>>)> = {
            let Ok(mut p) = pending.lock() else { return };
            if p.items.is_empty() {
                p.flushing = false;
                return;
            }
            let n = p.items.len().min(MAX_PER_ENTRY);
            p.items.drain(..n).collect()
        };
        let fields: Vec<(String, Bytes)> = batch
            .iter()
            .enumerate()
            .map(|(i, (payload, _))| (i.to_string(), payload.clone()))
            .collect();
        let res = pool
            .xadd::<Value, _, _, _, _>(topic.as_str(), false, ("MAXLEN", "~", max_len), "*", fields)
            .await;
        for (_, done) in batch {
            let r = match &res {
                Ok(_) => Ok(()),
                Err(e) => Err(Error::Command {
                    op: "XADD",
                    source: e.clone(),
                }
                .into()),
            };
            let _ = done.send(r);
        }
    }
}

impl RedisBroker {
    /// Connects the command pool.
    ///
    /// # Errors
    /// `Error::Unavailable` when Redis cannot be reached, `Error::Config` for a bad URL.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self> {
        let pool = client::pool(cfg).await?;
        Ok(Self {
            cfg: cfg.clone(),
            pool,
            closed: Arc::new(AtomicBool::new(false)),
            outgoing: Mutex::new(HashMap::new()),
        })
    }
}

fn poisoned() -> impush_core::Error {
    impush_core::Error::Backend {
        backend: crate::error::BACKEND,
        source: "a publisher panicked while holding the publish queue".into(),
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(impush_core::Error::Closed("redis broker"));
        }
        let (done, result) = oneshot::channel();
        let pending = {
            let mut outgoing = self.outgoing.lock().map_err(|_| poisoned())?;
            outgoing.entry(topic.to_owned()).or_default().clone()
        };
        let start = {
            let mut p = pending.lock().map_err(|_| poisoned())?;
            p.items.push((payload, done));
            !std::mem::replace(&mut p.flushing, true)
        };
        if start {
            // A task of its own: if this caller is cancelled, the others still get their entry.
            tokio::spawn(flush(
                self.pool.clone(),
                topic.to_owned(),
                self.cfg.stream_max_len as i64,
                pending,
            ));
        }
        result
            .await
            .unwrap_or(Err(impush_core::Error::Closed("redis broker")))
    }

    async fn subscribe(&self, topic: &str, mode: SubscribeMode) -> Result<Subscription> {
        if self.closed.load(Ordering::Acquire) {
            return Err(impush_core::Error::Closed("redis broker"));
        }
        let reader = client::reader(&self.cfg).await?;
        let cursor = match mode {
            SubscribeMode::Fanout => Cursor::After(reader::Follow::start(&reader, topic).await?),
            SubscribeMode::Queue { group } => {
                reader::ensure_group(&reader, topic, &group, "$").await?;
                let (acks, ack_rx) = mpsc::unbounded_channel();
                tokio::spawn(group::run_acker(
                    self.pool.clone(),
                    topic.to_owned(),
                    group.clone(),
                    ack_rx,
                ));
                Cursor::Group(Member::new(group, acks, self.cfg.claim_idle))
            }
        };
        let (tx, rx) = mpsc::channel(BATCH as usize * 4);
        tokio::spawn(reader::run_reader(
            reader,
            topic.to_owned(),
            cursor,
            tx,
            self.closed.clone(),
        ));
        Ok(ReceiverStream::new(rx).boxed())
    }

    async fn ping(&self) -> Result<()> {
        self.pool
            .ping::<Value>(None)
            .await
            .map(drop)
            .map_err(core("PING"))
    }

    async fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.pool.quit().await.map_err(core("QUIT"))
    }
}
