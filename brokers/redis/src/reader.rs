//! The reader of one subscription: a blocking `XREAD`/`XREADGROUP` loop on its own connection
//! that feeds a bounded channel, so a slow subscriber slows its reader down (messages wait in
//! Redis) instead of growing memory.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::{
    clients::Client,
    interfaces::{ClientLike, StreamsInterface},
    types::{streams::XReadResponse, Value},
};
use impush_core::{Delivery, Result};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    client::BLOCK,
    error::Error,
    group::{self, EntryAcks, PayloadAck},
};

/// Entries fetched per read.
pub(crate) const BATCH: u64 = 256;

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
pub(crate) enum Cursor {
    /// Fanout: the last id seen.
    After(String),
    /// Queue: a member of a consumer group.
    Group(Member),
}

/// A consumer of a group: its name, where its acks go, and when it last swept for orphans.
pub(crate) struct Member {
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) acks: mpsc::UnboundedSender<String>,
    pub(crate) claim_idle: Duration,
    pub(crate) next_sweep: Instant,
}

pub(crate) async fn ensure_group(
    reader: &Client,
    topic: &str,
    group: &str,
    from: &str,
) -> Result<(), Error> {
    match reader
        .xgroup_create::<Value, _, _, _>(topic, group, from, true)
        .await
    {
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
        other => other.map(drop).map_err(Error::command("XGROUP CREATE")),
    }
}

pub(crate) async fn last_id(reader: &Client, topic: &str) -> Result<String, Error> {
    let v: Value = reader
        .xrevrange(topic, "+", "-", Some(1))
        .await
        .map_err(Error::command("XREVRANGE"))?;
    let entries: Vec<Entry> = v.convert().map_err(Error::command("parse XREVRANGE"))?;
    Ok(entries
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

async fn read(
    reader: &Client,
    topic: &str,
    cursor: &mut Cursor,
) -> Result<Vec<Entry>, fred::error::Error> {
    let block = Some(BLOCK.as_millis() as u64);
    let v: Value = match cursor {
        Cursor::After(id) => reader.xread(Some(BATCH), block, topic, id.as_str()).await?,
        Cursor::Group(m) => {
            if Instant::now() >= m.next_sweep {
                m.next_sweep = Instant::now() + m.claim_idle / 2;
                match group::claim_orphans(reader, topic, &m.group, &m.consumer, m.claim_idle).await
                {
                    Ok(claimed) if !claimed.is_empty() => {
                        tracing::info!(%topic, group = %m.group, entries = claimed.len(), "claimed entries a gone member left unacked");
                        return Ok(claimed);
                    }
                    Ok(_) => {}
                    Err(Error::Command { source, .. }) => return Err(source),
                    Err(e) => {
                        tracing::warn!(%topic, error = &e as &dyn std::error::Error, "claim sweep failed")
                    }
                }
            }
            reader
                .xreadgroup(
                    m.group.as_str(),
                    m.consumer.as_str(),
                    Some(BATCH),
                    block,
                    false,
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
pub(crate) async fn run_reader(
    reader: Client,
    topic: String,
    mut cursor: Cursor,
    tx: mpsc::Sender<Result<Delivery>>,
    closed: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    while !tx.is_closed() && !closed.load(Ordering::Acquire) {
        match read(&reader, &topic, &mut cursor).await {
            Ok(entries) => {
                if failing {
                    tracing::info!(%topic, "redis subscription reading again");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
                'entries: for (id, fields) in entries {
                    let payloads = in_order(fields);
                    let acks = match &mut cursor {
                        Cursor::After(last) => {
                            *last = id;
                            None
                        }
                        Cursor::Group(m) if payloads.is_empty() => {
                            // Nothing to deliver (a foreign entry): ack it right away.
                            let _ = m.acks.send(id);
                            continue;
                        }
                        Cursor::Group(m) => {
                            Some(EntryAcks::new(id, payloads.len(), m.acks.clone()))
                        }
                    };
                    for payload in payloads {
                        let delivery = match &acks {
                            None => Delivery::new(payload),
                            Some(a) => Delivery::with_ack(payload, PayloadAck(a.clone())),
                        };
                        if tx.send(Ok(delivery)).await.is_err() {
                            break 'entries;
                        }
                    }
                }
            }
            Err(e) if e.details().starts_with("NOGROUP") => {
                // Redis lost the group (restarted without persistence, or the key was deleted):
                // everything now in the stream was published after that, so start from 0.
                if let Cursor::Group(m) = &cursor {
                    tracing::warn!(%topic, group = %m.group, "redis consumer group missing; creating it again");
                    if let Err(e) = ensure_group(&reader, &topic, &m.group, "0").await {
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
