//! [`RedisBroker`]: topics are Redis streams.
//!
//! - publish: `XADD topic MAXLEN ~ stream_max_len * p <payload>`;
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
        Arc,
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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    client::{self, BLOCK},
    config::RedisConfig,
    error::{core, Error},
};

/// Field that carries the payload in each stream entry.
const FIELD: &str = "p";
/// Entries fetched per read.
const BATCH: u64 = 256;

/// A [`Broker`] over Redis streams. See the module docs for the layout.
#[derive(Debug)]
pub struct RedisBroker {
    cfg: RedisConfig,
    pool: Pool,
    closed: Arc<AtomicBool>,
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
        })
    }
}

type Entry = (String, HashMap<String, Bytes>);

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
                for (id, mut fields) in entries {
                    if let Cursor::After(last) = &mut cursor {
                        *last = id;
                    }
                    let Some(payload) = fields.remove(FIELD) else {
                        tracing::warn!(%topic, "skipping a stream entry without payload");
                        continue;
                    };
                    if tx.send(Ok(payload)).await.is_err() {
                        break;
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
        self.pool
            .xadd::<Value, _, _, _, _>(
                topic,
                false,
                ("MAXLEN", "~", self.cfg.stream_max_len as i64),
                "*",
                vec![(FIELD, payload)],
            )
            .await
            .map(drop)
            .map_err(core("XADD"))
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
