//! [`RedisBroker`]: topics are Redis streams.
//!
//! - publish: `XADD topic MAXLEN ~ stream_max_len * 0 <payload> [1 <payload> ...]`. At most one
//!   `XADD` per topic is in flight; publishes that arrive meanwhile go out together as the next
//!   entry (fields `0`, `1`, ... in publish order). No timer: an idle topic publishes at once,
//!   a busy one gets large batches, which is what lets one publisher exceed Redis' per-command
//!   rate;
//! - `Fanout`: a reader starts at the stream's last id when it subscribes and follows with
//!   `XREAD BLOCK` from the last id it saw, so a reconnect loses nothing the stream still holds;
//! - `Queue{group}`: a consumer group (`XGROUP CREATE .. $ MKSTREAM`) read with
//!   `XREADGROUP .. NOACK`, so messages published while no member reads wait in the stream,
//!   within its retention. When Redis lost the group (a restart without persistence) it is
//!   created again from the start of the stream.
//!
//! Every subscription has its own connection and a task that feeds a bounded channel: a slow
//! consumer slows its reader down (messages wait in Redis, bounded by the stream's length) instead
//! of growing memory.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use fred::{
    clients::{Client, Pool},
    interfaces::{ClientLike, StreamsInterface},
    types::{streams::XReadResponse, Value},
};
use futures_util::StreamExt;
use impush_core::{Broker, Result, SubscribeMode, Subscription};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    client::{self, BLOCK},
    config::RedisConfig,
    error::{core, Error},
};

/// Entries fetched per read.
const BATCH: u64 = 256;
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

type Entry = (String, HashMap<String, Bytes>);

fn poisoned() -> impush_core::Error {
    impush_core::Error::Backend {
        backend: crate::error::BACKEND,
        source: "a publisher panicked while holding the publish queue".into(),
    }
}

fn parse_entries(v: Value, topic: &str) -> Result<Vec<Entry>, Error> {
    if v.is_null() {
        return Ok(Vec::new()); // BLOCK timed out
    }
    let mut m: XReadResponse<String, String, String, Bytes> = v
        .into_xread_response()
        .map_err(Error::command("parse stream reply"))?;
    Ok(m.remove(topic).unwrap_or_default())
}

/// Where a reader is.
enum Cursor {
    /// Fanout: the last id seen.
    After(String),
    /// Queue: group and this member's consumer name.
    Group { group: String, consumer: String },
}

async fn ensure_group(reader: &Client, topic: &str, group: &str, from: &str) -> Result<(), Error> {
    match reader
        .xgroup_create::<Value, _, _, _>(topic, group, from, true)
        .await
    {
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
        other => other.map(drop).map_err(Error::command("XGROUP CREATE")),
    }
}

async fn last_id(reader: &Client, topic: &str) -> Result<String, Error> {
    let v: Value = reader
        .xrevrange(topic, "+", "-", Some(1))
        .await
        .map_err(Error::command("XREVRANGE"))?;
    let entries: Vec<(String, HashMap<String, Bytes>)> =
        v.convert().map_err(Error::command("parse XREVRANGE"))?;
    Ok(entries
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

async fn read(
    reader: &Client,
    topic: &str,
    cursor: &Cursor,
) -> Result<Vec<Entry>, fred::error::Error> {
    let block = Some(BLOCK.as_millis() as u64);
    let v: Value = match cursor {
        Cursor::After(id) => reader.xread(Some(BATCH), block, topic, id.as_str()).await?,
        Cursor::Group { group, consumer } => {
            reader
                .xreadgroup(
                    group.as_str(),
                    consumer.as_str(),
                    Some(BATCH),
                    block,
                    true,
                    topic,
                    ">",
                )
                .await?
        }
    };
    parse_entries(v, topic).map_err(|e| match e {
        Error::Command { source, .. } => source,
        Error::Reply { detail, .. } => {
            fred::error::Error::new(fred::error::ErrorKind::Parse, detail)
        }
    })
}

/// The payloads of one entry in publish order (fields are `0`, `1`, ...; others are skipped).
fn in_order(fields: HashMap<String, Bytes>) -> Vec<Bytes> {
    let mut numbered: Vec<(usize, Bytes)> = fields
        .into_iter()
        .filter_map(|(k, v)| k.parse().ok().map(|i| (i, v)))
        .collect();
    numbered.sort_unstable_by_key(|(i, _)| *i);
    numbered.into_iter().map(|(_, v)| v).collect()
}

/// The reader loop of one subscription; ends when the subscription is dropped or the broker
/// shuts down.
async fn run_reader(
    reader: Client,
    topic: String,
    mut cursor: Cursor,
    tx: mpsc::Sender<Result<Bytes>>,
    closed: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    while !tx.is_closed() && !closed.load(Ordering::Acquire) {
        match read(&reader, &topic, &cursor).await {
            Ok(entries) => {
                if failing {
                    tracing::info!(%topic, "redis subscription reading again");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
                'entries: for (id, fields) in entries {
                    if let Cursor::After(last) = &mut cursor {
                        *last = id;
                    }
                    for payload in in_order(fields) {
                        if tx.send(Ok(payload)).await.is_err() {
                            break 'entries;
                        }
                    }
                }
            }
            Err(e) if e.details().starts_with("NOGROUP") => {
                // Redis lost the group (restarted without persistence, or the key was deleted):
                // everything now in the stream was published after that, so start from 0.
                if let Cursor::Group { group, .. } = &cursor {
                    tracing::warn!(%topic, %group, "redis consumer group missing; creating it again");
                    if let Err(e) = ensure_group(&reader, &topic, group, "0").await {
                        tracing::warn!(%topic, error = &e as &dyn std::error::Error, "cannot create consumer group");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%topic, error = &e as &dyn std::error::Error, "redis subscription read failed; retrying");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let _ = reader.quit().await;
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
            SubscribeMode::Fanout => Cursor::After(last_id(&reader, topic).await?),
            SubscribeMode::Queue { group } => {
                ensure_group(&reader, topic, &group, "$").await?;
                Cursor::Group {
                    group,
                    consumer: uuid::Uuid::new_v4().simple().to_string(),
                }
            }
        };
        let (tx, rx) = mpsc::channel(BATCH as usize * 4);
        tokio::spawn(run_reader(
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
