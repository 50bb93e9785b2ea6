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
//! Writes (every call but `ping` and `clients`, which read) run on one writer thread, as many
//! as are waiting in one transaction and one commit (`writer`): each change is atomic, and
//! durable when its call returns.

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use impush_core::{
    envelope::now_ms, ClientId, InboxLimits, InboxStats, MessageId, OfflineStore, Result, Stored,
    StoredMessage,
};
use redb::{Database, ReadableTable};
use serde::Deserialize;

mod tables;
mod writer;

use tables::{Db, DbResult, TOTALS};
use writer::Writer;

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
    #[error("offline inbox: the writer thread stopped")]
    WriterGone,
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
    db: Arc<Db>,
    writer: Writer,
    limits: InboxLimits,
    stores: std::sync::atomic::AtomicU64,
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
        let db = Arc::new(Db { db, path: shown });
        let store = Self {
            inner: Arc::new(Inner {
                writer: Writer::start(&db)?,
                db,
                limits,
                stores: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        // Create the tables (a write transaction opens each), so that reads of an empty file
        // work.
        store.inner.writer.write(|_| Ok(())).await?;
        Ok(store)
    }

    /// Writes asked for so far, and the commits that made them durable (fewer when writes
    /// arrive together: they share a commit).
    pub fn write_counts(&self) -> (u64, u64) {
        (self.inner.writer.writes(), self.inner.writer.commits())
    }

    /// Runs a read on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.db))
            .await
            .map_err(Error::Join)?
    }
}

impl Inner {
    fn cutoff(&self) -> u64 {
        now_ms().saturating_sub(self.limits.ttl.as_millis() as u64)
    }
}

#[async_trait]
impl OfflineStore for DiskOfflineStore {
    async fn store(&self, client: &ClientId, message: StoredMessage) -> Result<Stored> {
        let limits = self.inner.limits;
        let cutoff = self.inner.cutoff();
        if message.ts < cutoff || message.size() > limits.max_bytes {
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
        self.inner
            .writer
            .write(move |t| {
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
            .await
    }

    async fn fetch(&self, client: &ClientId, limit: usize) -> Result<Vec<StoredMessage>> {
        let client = client.to_string();
        let cutoff = self.inner.cutoff();
        let jsons = self
            .inner
            .writer
            .write(move |t| {
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
        self.inner
            .writer
            .write(move |t| {
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
            .await
    }

    async fn stats(&self, client: &ClientId) -> Result<InboxStats> {
        let client = client.to_string();
        let cutoff = self.inner.cutoff();
        self.inner
            .writer
            .write(move |t| {
                t.expire(&client, cutoff)?;
                let (count, bytes) = t.totals(&client)?;
                let oldest = t.keys_of(&client, |_| true)?.first().map(|(ts, _, _)| *ts);
                Ok(InboxStats {
                    count: count as usize,
                    bytes: bytes as usize,
                    oldest_ts: oldest,
                })
            })
            .await
    }

    async fn clear(&self, client: &ClientId) -> Result<usize> {
        let client = client.to_string();
        let cutoff = self.inner.cutoff();
        self.inner
            .writer
            .write(move |t| {
                t.expire(&client, cutoff)?;
                let all = t.keys_of(&client, |_| true)?;
                for (ts, id, size) in &all {
                    t.drop_message(&client, *ts, id, *size)?;
                }
                Ok(all.len())
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|db| db.db.begin_read().map(drop).map_err(db.err("cannot read")))
            .await
    }

    async fn clients(&self, limit: usize) -> Result<Vec<ClientId>> {
        self.read(move |db| {
            let read = db.db.begin_read().map_err(db.err("cannot read"))?;
            let totals = match read.open_table(TOTALS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db.err("cannot open the totals")(e)),
            };
            let mut out = Vec::new();
            for row in totals.iter().map_err(db.err("cannot list clients"))? {
                if out.len() >= limit {
                    break;
                }
                let (client, counts) = row.map_err(db.err("cannot list clients"))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn message(ts: u64, n: u64) -> StoredMessage {
        serde_json::from_value(serde_json::json!({
            "id": format!("{n:032x}"),
            "from": "bob",
            "data": n,
            "ts": ts + n,
            "receipt": false,
        }))
        .unwrap()
    }

    /// Writes that arrive while a commit is under way share the next one: 50 stores queued
    /// behind a held write lock take one commit, or two when the writer took the first store
    /// alone before the others were queued; each is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_waiting_behind_a_commit_share_the_next_one() {
        let dir = std::env::temp_dir().join(format!("impush-disk-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = DiskOfflineConfig {
            path: dir.join("inbox.redb"),
        };
        let limits = InboxLimits {
            max_per_client: 100,
            max_bytes: 1 << 20,
            ttl: Duration::from_secs(60),
        };
        let store = DiskOfflineStore::open(&cfg, limits).await.unwrap();
        let (writes, commits) = store.write_counts();
        let held = store.inner.db.db.begin_write().unwrap();
        let alice: ClientId = "alice".parse().unwrap();
        let ts = now_ms();
        let pending: Vec<_> = (0..50)
            .map(|n| {
                let (store, alice) = (store.clone(), alice.clone());
                tokio::spawn(async move { store.store(&alice, message(ts, n)).await })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.write_counts().0 < writes + 50 {
            assert!(std::time::Instant::now() < deadline, "50 writes queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(held);
        for p in pending {
            assert!(p.await.unwrap().unwrap().kept);
        }
        let (writes_now, commits_now) = store.write_counts();
        assert_eq!(writes_now, writes + 50);
        assert!(
            (1..=2).contains(&(commits_now - commits)),
            "{} commits",
            commits_now - commits
        );
        let kept = store.fetch(&alice, 100).await.unwrap();
        let order: Vec<u64> = kept.iter().map(|m| m.ts).collect();
        assert_eq!(order.len(), 50);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
