//! impush-offline-disk: the offline inbox in a file on the owning node's disk ([redb]), for
//! teams that run RabbitMQ or Kafka and no Redis: no extra server.
//!
//! Each node keeps the inboxes of the clients it owns. Ownership comes from the cluster's
//! partitioner (rendezvous hashing by default), which is stable while the node list is: a
//! client's inbox is on the node it connects to. When nodes are added, about 1/n of the clients
//! move to a new owner; messages already stored for them stay on the old owner's disk until
//! they expire (the TTL), and the client gets only what its new owner stores from then on. Use
//! the Redis store if inboxes must follow clients across such changes.
//!
//! ```toml
//! [offline]
//! enabled = true
//! kind = "disk"
//! path = "/var/lib/impush/offline-n1.redb"   # one file per node
//! ```
//!
//! Every call runs in a blocking thread (redb is synchronous) in one write or read
//! transaction, so each change is atomic and durable when it returns.

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use impush_core::{
    envelope::now_ms, ClientId, InboxLimits, InboxStats, MessageId, OfflineStore, Result, Stored,
    StoredMessage,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::Deserialize;

/// (client, ts, id) -> (size, message JSON): iteration order within a client is inbox order.
const MESSAGES: TableDefinition<(&str, u64, &str), (u64, &[u8])> = TableDefinition::new("messages");
/// (client, id) -> ts: finds a message by id.
const IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("ids");
/// client -> (count, bytes).
const TOTALS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("totals");

/// How many stores between sweeps of every inbox for expired messages.
const SWEEP_EVERY: u64 = 4096;

/// `[offline] kind = "disk"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskOfflineConfig {
    /// The database file (created if missing); one per node.
    pub path: PathBuf,
}

/// What can go wrong with the file.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("offline inbox file {path}: {what}")]
    Db {
        path: String,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("offline inbox: a stored message is not valid JSON")]
    Corrupt(#[source] serde_json::Error),
    #[error("offline inbox: the blocking task failed")]
    Join(#[source] tokio::task::JoinError),
}

impl From<Error> for impush_core::Error {
    fn from(e: Error) -> Self {
        impush_core::Error::Backend {
            backend: "disk",
            source: Box::new(e),
        }
    }
}

/// An [`OfflineStore`] in a local redb file.
#[derive(Debug, Clone)]
pub struct DiskOfflineStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    path: String,
    limits: InboxLimits,
    stores: std::sync::atomic::AtomicU64,
}

fn db_err<E: std::error::Error + Send + Sync + 'static>(
    inner: &Inner,
    what: &'static str,
) -> impl FnOnce(E) -> impush_core::Error {
    let path = inner.path.clone();
    move |e| {
        Error::Db {
            path,
            what,
            source: Box::new(e),
        }
        .into()
    }
}

impl DiskOfflineStore {
    /// Opens (or creates) the file at `cfg.path`.
    ///
    /// # Errors
    /// The file cannot be created or is not a redb database.
    pub async fn open(cfg: &DiskOfflineConfig, limits: InboxLimits) -> Result<Self> {
        let path = cfg.path.clone();
        let shown = path.display().to_string();
        let db = tokio::task::spawn_blocking(move || Database::create(&path))
            .await
            .map_err(Error::Join)?
            .map_err(|e| Error::Db {
                path: shown.clone(),
                what: "cannot open",
                source: Box::new(e),
            })?;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                path: shown,
                limits,
                stores: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        // Create the tables, so that reads of an empty file work.
        store
            .blocking(|inner| {
                let tx = inner
                    .db
                    .begin_write()
                    .map_err(db_err(inner, "cannot write"))?;
                tx.open_table(MESSAGES)
                    .map_err(db_err(inner, "cannot open a table"))?;
                tx.open_table(IDS)
                    .map_err(db_err(inner, "cannot open a table"))?;
                tx.open_table(TOTALS)
                    .map_err(db_err(inner, "cannot open a table"))?;
                tx.commit().map_err(db_err(inner, "cannot commit"))
            })
            .await?;
        Ok(store)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(Error::Join)?
    }
}

impl Inner {
    fn cutoff(&self) -> u64 {
        now_ms().saturating_sub(self.limits.ttl.as_millis() as u64)
    }
}

/// The open tables of one write transaction, with the inbox operations on them.
struct Tables<'t> {
    messages: redb::Table<'t, (&'static str, u64, &'static str), (u64, &'static [u8])>,
    ids: redb::Table<'t, (&'static str, &'static str), u64>,
    totals: redb::Table<'t, &'static str, (u64, u64)>,
}

type DbResult<T> = std::result::Result<T, redb::StorageError>;

impl Tables<'_> {
    /// The keys of `client`'s messages, oldest first, while `keep_going` says so.
    fn keys_of(
        &self,
        client: &str,
        mut keep_going: impl FnMut(u64) -> bool,
    ) -> DbResult<Vec<(u64, String, u64)>> {
        let mut out = Vec::new();
        for item in self.messages.range((client, 0u64, "")..)? {
            let (k, v) = item?;
            let (c, ts, id) = k.value();
            if c != client || !keep_going(ts) {
                break;
            }
            out.push((ts, id.to_owned(), v.value().0));
        }
        Ok(out)
    }

    fn drop_message(&mut self, client: &str, ts: u64, id: &str, size: u64) -> DbResult<()> {
        self.messages.remove((client, ts, id))?;
        self.ids.remove((client, id))?;
        let (count, bytes) = self.totals.get(client)?.map_or((0, 0), |v| v.value());
        if count <= 1 {
            self.totals.remove(client)?;
        } else {
            self.totals
                .insert(client, (count - 1, bytes.saturating_sub(size)))?;
        }
        Ok(())
    }

    fn expire(&mut self, client: &str, cutoff: u64) -> DbResult<()> {
        for (ts, id, size) in self.keys_of(client, |ts| ts < cutoff)? {
            self.drop_message(client, ts, &id, size)?;
        }
        Ok(())
    }

    fn totals(&self, client: &str) -> DbResult<(u64, u64)> {
        Ok(self.totals.get(client)?.map_or((0, 0), |v| v.value()))
    }
}

fn write<T>(inner: &Inner, f: impl FnOnce(&mut Tables<'_>) -> DbResult<T>) -> Result<T> {
    let tx = inner
        .db
        .begin_write()
        .map_err(db_err(inner, "cannot write"))?;
    let out = {
        let mut tables = Tables {
            messages: tx
                .open_table(MESSAGES)
                .map_err(db_err(inner, "cannot open a table"))?,
            ids: tx
                .open_table(IDS)
                .map_err(db_err(inner, "cannot open a table"))?,
            totals: tx
                .open_table(TOTALS)
                .map_err(db_err(inner, "cannot open a table"))?,
        };
        f(&mut tables).map_err(db_err(inner, "cannot read or write"))?
    };
    tx.commit().map_err(db_err(inner, "cannot commit"))?;
    Ok(out)
}

#[async_trait]
impl OfflineStore for DiskOfflineStore {
    async fn store(&self, client: &ClientId, message: StoredMessage) -> Result<Stored> {
        let limits = self.inner.limits;
        if message.ts < self.inner.cutoff() || message.size() > limits.max_bytes {
            return Ok(Stored {
                evicted: 0,
                kept: false,
            });
        }
        let json = serde_json::to_vec(&message).map_err(Error::Corrupt)?;
        let client = client.to_string();
        let sweep = self
            .inner
            .stores
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % SWEEP_EVERY
            == SWEEP_EVERY - 1;
        self.blocking(move |inner| {
            let cutoff = inner.cutoff();
            write(inner, |t| {
                if sweep {
                    let clients: Vec<String> = t
                        .totals
                        .iter()?
                        .map(|item| item.map(|(k, _)| k.value().to_owned()))
                        .collect::<DbResult<_>>()?;
                    for c in clients {
                        t.expire(&c, cutoff)?;
                    }
                }
                t.expire(&client, cutoff)?;
                let id = message.id.as_str();
                if t.ids.get((client.as_str(), id))?.is_some() {
                    return Ok(Stored {
                        evicted: 0,
                        kept: true,
                    });
                }
                let size = message.size() as u64;
                t.messages
                    .insert((client.as_str(), message.ts, id), (size, json.as_slice()))?;
                t.ids.insert((client.as_str(), id), message.ts)?;
                let (count, bytes) = t.totals(&client)?;
                t.totals
                    .insert(client.as_str(), (count + 1, bytes + size))?;
                let mut evicted = 0;
                loop {
                    let (count, bytes) = t.totals(&client)?;
                    if count as usize <= limits.max_per_client && bytes as usize <= limits.max_bytes
                    {
                        break;
                    }
                    let Some((ts, oldest, size)) = t.keys_of(&client, |_| true)?.into_iter().next()
                    else {
                        break;
                    };
                    t.drop_message(&client, ts, &oldest, size)?;
                    evicted += 1;
                }
                let kept = t.ids.get((client.as_str(), id))?.is_some();
                Ok(Stored { evicted, kept })
            })
        })
        .await
    }

    async fn fetch(&self, client: &ClientId, limit: usize) -> Result<Vec<StoredMessage>> {
        let client = client.to_string();
        let jsons = self
            .blocking(move |inner| {
                let cutoff = inner.cutoff();
                write(inner, |t| {
                    t.expire(&client, cutoff)?;
                    let mut out = Vec::new();
                    for item in t.messages.range((client.as_str(), 0u64, "")..)? {
                        let (k, v) = item?;
                        if k.value().0 != client || out.len() >= limit {
                            break;
                        }
                        out.push(v.value().1.to_vec());
                    }
                    Ok(out)
                })
            })
            .await?;
        jsons
            .iter()
            .map(|j| {
                serde_json::from_slice(j).map_err(|e| impush_core::Error::from(Error::Corrupt(e)))
            })
            .collect()
    }

    async fn remove(&self, client: &ClientId, ids: &[MessageId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = client.to_string();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.blocking(move |inner| {
            write(inner, |t| {
                for id in &ids {
                    let Some(ts) = t
                        .ids
                        .get((client.as_str(), id.as_str()))?
                        .map(|v| v.value())
                    else {
                        continue;
                    };
                    let size = t
                        .messages
                        .get((client.as_str(), ts, id.as_str()))?
                        .map_or(0, |v| v.value().0);
                    t.drop_message(&client, ts, id, size)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn stats(&self, client: &ClientId) -> Result<InboxStats> {
        let client = client.to_string();
        self.blocking(move |inner| {
            let cutoff = inner.cutoff();
            write(inner, |t| {
                t.expire(&client, cutoff)?;
                let (count, bytes) = t.totals(&client)?;
                let oldest = t.keys_of(&client, |_| true)?.first().map(|(ts, _, _)| *ts);
                Ok(InboxStats {
                    count: count as usize,
                    bytes: bytes as usize,
                    oldest_ts: oldest,
                })
            })
        })
        .await
    }

    async fn clear(&self, client: &ClientId) -> Result<usize> {
        let client = client.to_string();
        self.blocking(move |inner| {
            let cutoff = inner.cutoff();
            write(inner, |t| {
                t.expire(&client, cutoff)?;
                let all = t.keys_of(&client, |_| true)?;
                for (ts, id, size) in &all {
                    t.drop_message(&client, *ts, id, *size)?;
                }
                Ok(all.len())
            })
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.blocking(|inner| {
            inner
                .db
                .begin_read()
                .map(drop)
                .map_err(db_err(inner, "cannot read"))
        })
        .await
    }

    async fn clients(&self, limit: usize) -> Result<Vec<ClientId>> {
        self.blocking(move |inner| {
            let read = inner
                .db
                .begin_read()
                .map_err(db_err(inner, "cannot read"))?;
            let totals = match read.open_table(TOTALS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db_err(inner, "cannot open the totals")(e)),
            };
            let mut out = Vec::new();
            for row in totals
                .iter()
                .map_err(db_err(inner, "cannot list clients"))?
            {
                if out.len() >= limit {
                    break;
                }
                let (client, counts) = row.map_err(db_err(inner, "cannot list clients"))?;
                if counts.value().0 > 0 {
                    if let Ok(c) = ClientId::new(client.value()) {
                        out.push(c);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    fn is_shared(&self) -> bool {
        false
    }
}
