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
    /// Handed to several nodes in one process ([`MemoryOfflineStore::shared_by_nodes`]).
    shared: bool,
    inboxes: Mutex<HashMap<ClientId, Inbox>>,
    stores: AtomicU64,
}

#[derive(Debug, Default)]
struct Inbox {
    /// Keyed by (ts, id): iteration order is inbox order.
    messages: BTreeMap<(u64, MessageId), StoredMessage>,
    /// The ts of every id in `messages`: acks remove by id, and a full inbox holds thousands.
    ts_of: HashMap<MessageId, u64>,
    bytes: usize,
}

impl Inbox {
    fn pop_oldest(&mut self) -> bool {
        match self.messages.pop_first() {
            Some(((_, id), m)) => {
                self.ts_of.remove(&id);
                self.bytes -= m.size();
                true
            }
            None => false,
        }
    }

    /// Removes the message `id`, if held.
    fn remove(&mut self, id: &MessageId) {
        if let Some(ts) = self.ts_of.remove(id) {
            if let Some(m) = self.messages.remove(&(ts, id.clone())) {
                self.bytes -= m.size();
            }
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
            shared: false,
            inboxes: Mutex::new(HashMap::new()),
            stores: AtomicU64::new(0),
        }
    }

    /// The same store, for handing to every node of a cluster in one process (embedded
    /// nodes, tests): it then says it is shared ([`OfflineStore::is_shared`]), so the nodes
    /// treat it as they treat a central store such as Redis.
    pub fn shared_by_nodes(mut self) -> Self {
        self.shared = true;
        self
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
        if inbox.ts_of.contains_key(&message.id) {
            return Ok(Stored {
                evicted: 0,
                kept: true,
            });
        }
        let key = (message.ts, message.id.clone());
        inbox.bytes += message.size();
        inbox.ts_of.insert(message.id.clone(), message.ts);
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
        for id in ids {
            inbox.remove(id);
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

    async fn clients(&self, limit: usize) -> Result<Vec<ClientId>> {
        let cutoff = self.cutoff();
        let mut inboxes = self.lock()?;
        let mut out: Vec<ClientId> = Vec::new();
        for (client, inbox) in inboxes.iter_mut() {
            if out.len() >= limit {
                break;
            }
            inbox.expire(cutoff);
            if !inbox.messages.is_empty() {
                out.push(client.clone());
            }
        }
        out.sort();
        Ok(out)
    }

    fn is_shared(&self) -> bool {
        self.shared
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn message(n: u64, ts: u64) -> StoredMessage {
        StoredMessage {
            id: MessageId::new(format!("m{n}")).unwrap(),
            from: ClientId::new("bob").unwrap(),
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            ts,
            receipt: false,
            written: false,
        }
    }

    /// The id index must follow every way a message leaves: an ack, an eviction. A stale
    /// entry would make a later store of that id look like a duplicate and lose it.
    #[tokio::test]
    async fn ids_that_left_can_be_stored_again() {
        let s = MemoryOfflineStore::new(InboxLimits {
            ttl: Duration::from_secs(60),
            max_per_client: 2,
            max_bytes: 1 << 20,
        });
        let alice = ClientId::new("alice").unwrap();
        let t = now_ms();
        for n in 0..3 {
            s.store(&alice, message(n, t + n)).await.unwrap();
        }
        // m0 was evicted, m1 is acked: both may come back (m2 is then the oldest, evicted).
        s.remove(&alice, &[message(1, 0).id]).await.unwrap();
        assert!(s.store(&alice, message(0, t + 10)).await.unwrap().kept);
        assert!(s.store(&alice, message(1, t + 11)).await.unwrap().kept);
        let ids: Vec<String> = s
            .fetch(&alice, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id.as_str().to_owned())
            .collect();
        assert_eq!(ids, ["m0", "m1"]);
        let st = s.stats(&alice).await.unwrap();
        assert_eq!(st.bytes, message(0, 0).size() + message(1, 0).size());
        s.remove(&alice, &[message(0, 0).id, message(1, 0).id])
            .await
            .unwrap();
        assert!(s.lock().unwrap().is_empty(), "an emptied inbox is dropped");
    }
}
