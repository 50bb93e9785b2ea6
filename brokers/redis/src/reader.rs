//! The reader of one subscription: a blocking `XREAD`/`XREADGROUP` loop on its own connection
//! that feeds a bounded channel, so a slow subscriber slows its reader down (messages wait in
//! Redis) instead of growing memory.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, PoisonError,
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
    After(Follow),
    /// Queue: a member of a consumer group.
    Group(Member),
}

/// A fanout reader's place in the stream, and what it needs to notice entries trimmed before
/// it read them.
pub(crate) struct Follow {
    pub(crate) last: String,
    /// The stream's `entries-added` when the reader started.
    added_at_start: u64,
    /// Entries read (or known lost) since.
    consumed: u64,
    /// The reader fell behind (a full batch, or a gap in reading): check that the stream did
    /// not trim entries it has not read yet before reading on.
    pub(crate) behind: bool,
}

/// What `XINFO STREAM` says about a stream (zeros for one that does not exist yet).
#[derive(Default)]
struct StreamInfo {
    last: String,
    first: String,
    length: u64,
    added: u64,
}

async fn stream_info(reader: &Client, topic: &str) -> Result<StreamInfo, fred::error::Error> {
    let info: HashMap<String, Value> = match reader.xinfo_stream(topic, false, None).await {
        Ok(i) => i,
        Err(e) if e.details().contains("no such key") => return Ok(StreamInfo::default()),
        Err(e) => return Err(e),
    };
    let text = |k: &str| info.get(k).and_then(Value::as_string).unwrap_or_default();
    let num = |k: &str| info.get(k).and_then(Value::as_u64).unwrap_or(0);
    let first = match info.get("first-entry") {
        Some(Value::Array(e)) => e.first().and_then(Value::as_string).unwrap_or_default(),
        _ => String::new(),
    };
    Ok(StreamInfo {
        last: text("last-generated-id"),
        first,
        length: num("length"),
        added: num("entries-added"),
    })
}

impl Follow {
    /// A reader starting at the end of `topic`.
    pub(crate) async fn start(reader: &Client, topic: &str) -> Result<Self, Error> {
        let info = stream_info(reader, topic)
            .await
            .map_err(Error::command("XINFO STREAM"))?;
        Ok(Self {
            last: if info.last.is_empty() {
                "0-0".to_owned()
            } else {
                info.last
            },
            added_at_start: info.added,
            consumed: 0,
            behind: false,
        })
    }

    /// Entries added after this reader's cursor that the stream no longer holds.
    async fn trimmed(&mut self, reader: &Client, topic: &str) -> Result<u64, fred::error::Error> {
        let info = stream_info(reader, topic).await?;
        if info.first.is_empty() || id_key(&info.first) <= id_key(&self.last) {
            return Ok(0); // the stream still holds our next entry
        }
        // Everything the stream holds is unread; anything added since the start beyond what
        // was read and what is held is gone.
        let expected = info
            .added
            .saturating_sub(self.added_at_start + self.consumed);
        let lost = expected.saturating_sub(info.length);
        self.consumed += lost;
        Ok(lost)
    }
}

/// A stream id as (ms, seq), for comparing.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A consumer of a group: its name, where its acks go, when it last swept for orphans, and
/// whether it is reading its own pending entries again.
pub(crate) struct Member {
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) acks: mpsc::UnboundedSender<String>,
    pub(crate) claim_idle: Duration,
    pub(crate) next_sweep: Instant,
    /// What the subscriber holds and has not acked.
    pub(crate) in_flight: group::InFlight,
    /// After a failed read: the id after which its own pending entries are read next (the
    /// reply of the failed read may have carried entries that are now pending on this
    /// consumer and were never delivered).
    pub(crate) own_pending: Option<String>,
}

impl Member {
    /// A new member of `group` (a consumer name of its own).
    pub(crate) fn new(
        group: String,
        acks: mpsc::UnboundedSender<String>,
        claim_idle: Duration,
    ) -> Self {
        Self {
            group,
            consumer: uuid::Uuid::new_v4().simple().to_string(),
            acks,
            claim_idle,
            next_sweep: Instant::now(),
            in_flight: group::InFlight::default(),
            own_pending: None,
        }
    }
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

async fn read(
    reader: &Client,
    topic: &str,
    cursor: &mut Cursor,
) -> Result<Vec<Entry>, fred::error::Error> {
    let block = Some(BLOCK.as_millis() as u64);
    let v: Value = match cursor {
        Cursor::After(f) => {
            reader
                .xread(Some(BATCH), block, topic, f.last.as_str())
                .await?
        }
        Cursor::Group(m) => {
            if let Some(after) = m.own_pending.take() {
                return own_pending(reader, topic, m, &after).await;
            }
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
            read_group(reader, topic, m, block, ">").await?
        }
    };
    parse_entries(v, topic).map_err(|e| match e {
        Error::Command { source, .. } => source,
        Error::Reply { detail, .. } => {
            fred::error::Error::new(fred::error::ErrorKind::Parse, detail)
        }
    })
}

/// One `XREADGROUP` of `m` from `from` (`>`: entries never delivered; an id: this consumer's
/// own pending entries after it).
async fn read_group(
    reader: &Client,
    topic: &str,
    m: &Member,
    block: Option<u64>,
    from: &str,
) -> Result<Value, fred::error::Error> {
    reader
        .xreadgroup(
            m.group.as_str(),
            m.consumer.as_str(),
            Some(BATCH),
            block,
            false,
            topic,
            from,
        )
        .await
}

/// The next batch of `m`'s own pending entries after id `after`, without those its subscriber
/// holds; `m.own_pending` is set to go on after them, or left empty when none are left.
async fn own_pending(
    reader: &Client,
    topic: &str,
    m: &mut Member,
    after: &str,
) -> Result<Vec<Entry>, fred::error::Error> {
    let v = read_group(reader, topic, m, None, after)
        .await
        .inspect_err(|_| m.own_pending = Some(after.to_owned()))?;
    let entries = match parse_entries(v, topic) {
        Ok(e) => e,
        Err(e) => {
            // A reply that cannot be parsed would not parse on a retry either: the entries
            // stay pending, for another member of the group to claim past `claim_idle`.
            tracing::warn!(%topic, error = &e as &dyn std::error::Error, "cannot read this consumer's own pending entries");
            return Ok(Vec::new());
        }
    };
    let Some((last, _)) = entries.last() else {
        return Ok(entries);
    };
    m.own_pending = Some(last.clone());
    let held = m.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
    let lost: Vec<Entry> = entries
        .into_iter()
        .filter(|(id, _)| !held.contains(id))
        .collect();
    if !lost.is_empty() {
        tracing::info!(%topic, group = %m.group, entries = lost.len(), "reading again entries whose read failed");
    }
    Ok(lost)
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
        if let Cursor::After(f) = &mut cursor {
            if f.behind {
                // A gap is reported, never silent (the Broker contract); the subscriber decides
                // what to repair. Counted in stream entries (an entry may hold several
                // messages batched by one publisher), so a lower bound of the messages lost.
                match f.trimmed(&reader, &topic).await {
                    Ok(0) => f.behind = false,
                    Ok(dropped) => {
                        tracing::warn!(%topic, dropped, "redis trimmed entries this fanout reader had not read");
                        if tx
                            .send(Err(impush_core::Error::Lagged { dropped }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        f.behind = false;
                    }
                    Err(e) => {
                        tracing::debug!(%topic, error = &e as &dyn std::error::Error, "XINFO STREAM failed")
                    }
                }
            }
        }
        match read(&reader, &topic, &mut cursor).await {
            Ok(entries) => {
                if let Cursor::After(f) = &mut cursor {
                    f.behind |= entries.len() as u64 >= BATCH;
                }
                if failing {
                    tracing::info!(%topic, "redis subscription reading again");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
                'entries: for (id, fields) in entries {
                    let payloads = in_order(fields);
                    let acks = match &mut cursor {
                        Cursor::After(f) => {
                            f.last = id;
                            f.consumed += 1;
                            None
                        }
                        Cursor::Group(m) if payloads.is_empty() => {
                            // Nothing to deliver (a foreign entry): ack it right away.
                            let _ = m.acks.send(id);
                            continue;
                        }
                        Cursor::Group(m) => Some(EntryAcks::new(
                            id,
                            payloads.len(),
                            m.acks.clone(),
                            &m.in_flight,
                        )),
                    };
                    for payload in payloads {
                        let delivery = match &acks {
                            None => Delivery::new(payload),
                            Some(a) => Delivery::with_ack(payload, PayloadAck(a.clone())),
                        };
                        let delivery = match tx.try_send(Ok(delivery)) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Closed(_)) => break 'entries,
                            Err(mpsc::error::TrySendError::Full(d)) => d,
                        };
                        // The subscriber is slower than the stream: while we wait, Redis may
                        // trim entries we have not read.
                        if let Cursor::After(f) = &mut cursor {
                            f.behind = true;
                        }
                        if tx.send(delivery).await.is_err() {
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
                match &mut cursor {
                    // Entries may be trimmed while we cannot read.
                    Cursor::After(f) => f.behind = true,
                    // The failed read may have taken entries whose reply never came.
                    Cursor::Group(m) => {
                        m.own_pending.get_or_insert_with(|| "0".to_owned());
                    }
                }
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
