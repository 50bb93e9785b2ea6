//! [`MemoryOfflineStore`]: offline inboxes in process memory (one node).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
};

use async_trait::async_trait;

use crate::{
    envelope::now_ms, ClientId, Error, InboxLimits, InboxStats, MessageId, OfflineStore, Result,
    Stored, StoredMessage,
};

/// How many stores between sweeps of every inbox for expired messages (inboxes nobody reads
/// again must not hold memory forever).
const SWEEP_EVERY: u64 = 4096;

/// Offline inboxes for one process: bounded per client by the [`InboxLimits`], expired
/// messages dropped as inboxes are touched and by a periodic sweep.
#[derive(Debug)]
pub struct MemoryOfflineStore {
    limits: InboxLimits,
    inboxes: Mutex<HashMap<ClientId, Inbox>>,
    stores: AtomicU64,
}

#[derive(Debug, Default)]
struct Inbox {
    /// Keyed by (ts, id): iteration order is inbox order.
    messages: BTreeMap<(u64, MessageId), StoredMessage>,
    bytes: usize,
}

impl Inbox {
    fn pop_oldest(&mut self) -> bool {
        match self.messages.pop_first() {
            Some((_, m)) => {
                self.bytes -= m.size();
                true
            }
            None => false,
        }
    }

    /// Drops messages sent before `cutoff` (unix ms).
    fn expire(&mut self, cutoff: u64) {
        while self
            .messages
            .first_key_value()
            .is_some_and(|((ts, _), _)| *ts < cutoff)
        {
            self.pop_oldest();
        }
    }
}

impl MemoryOfflineStore {
    /// An empty store with `limits`.
    pub fn new(limits: InboxLimits) -> Self {
        Self {
            limits,
            inboxes: Mutex::new(HashMap::new()),
            stores: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, HashMap<ClientId, Inbox>>> {
        self.inboxes.lock().map_err(|_| Error::Unavailable {
            backend: "memory",
            source: Some("a thread panicked while holding the offline inboxes".into()),
        })
    }

    fn cutoff(&self) -> u64 {
        now_ms().saturating_sub(self.limits.ttl.as_millis() as u64)
    }
}

#[async_trait]
impl OfflineStore for MemoryOfflineStore {
    async fn store(&self, client: &ClientId, message: StoredMessage) -> Result<Stored> {
        let cutoff = self.cutoff();
        if message.ts < cutoff || message.size() > self.limits.max_bytes {
            return Ok(Stored {
                evicted: 0,
                kept: false,
            });
        }
        let mut inboxes = self.lock()?;
        if self.stores.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            inboxes.retain(|_, inbox| {
                inbox.expire(cutoff);
                !inbox.messages.is_empty()
            });
        }
        let inbox = inboxes.entry(client.clone()).or_default();
        inbox.expire(cutoff);
        let key = (message.ts, message.id.clone());
        if inbox.messages.contains_key(&key) {
            return Ok(Stored {
                evicted: 0,
                kept: true,
            });
        }
        inbox.bytes += message.size();
        inbox.messages.insert(key.clone(), message);
        let mut evicted = 0;
        while inbox.messages.len() > self.limits.max_per_client
            || inbox.bytes > self.limits.max_bytes
        {
            inbox.pop_oldest();
            evicted += 1;
        }
        let kept = inbox.messages.contains_key(&key);
        Ok(Stored { evicted, kept })
    }

    async fn fetch(&self, client: &ClientId, limit: usize) -> Result<Vec<StoredMessage>> {
        let cutoff = self.cutoff();
        let mut inboxes = self.lock()?;
        let Some(inbox) = inboxes.get_mut(client) else {
            return Ok(Vec::new());
        };
        inbox.expire(cutoff);
        let out = inbox.messages.values().take(limit).cloned().collect();
        if inbox.messages.is_empty() {
            inboxes.remove(client);
        }
        Ok(out)
    }

    async fn remove(&self, client: &ClientId, ids: &[MessageId]) -> Result<()> {
        let mut inboxes = self.lock()?;
        let Some(inbox) = inboxes.get_mut(client) else {
            return Ok(());
        };
        let gone: Vec<(u64, MessageId)> = inbox
            .messages
            .keys()
            .filter(|(_, id)| ids.contains(id))
            .cloned()
            .collect();
        for key in gone {
            if let Some(m) = inbox.messages.remove(&key) {
                inbox.bytes -= m.size();
            }
        }
        if inbox.messages.is_empty() {
            inboxes.remove(client);
        }
        Ok(())
    }

    async fn stats(&self, client: &ClientId) -> Result<InboxStats> {
        let cutoff = self.cutoff();
        let mut inboxes = self.lock()?;
        let Some(inbox) = inboxes.get_mut(client) else {
            return Ok(InboxStats::default());
        };
        inbox.expire(cutoff);
        Ok(InboxStats {
            count: inbox.messages.len(),
            bytes: inbox.bytes,
            oldest_ts: inbox.messages.first_key_value().map(|((ts, _), _)| *ts),
        })
    }

    async fn clear(&self, client: &ClientId) -> Result<usize> {
        let cutoff = self.cutoff();
        Ok(self.lock()?.remove(client).map_or(0, |mut inbox| {
            inbox.expire(cutoff);
            inbox.messages.len()
        }))
    }

    async fn ping(&self) -> Result<()> {
        self.lock().map(drop)
    }

    fn is_shared(&self) -> bool {
        false
    }
}
