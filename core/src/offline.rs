//! The [`OfflineStore`] trait: the offline inbox, where point-to-point messages for a receiver
//! with no connection wait (`docs/design.md` section 9).
//!
//! The owning node stores a message when none of the receiver's sockets took it, pushes what is
//! stored, oldest first, when the receiver connects, and removes messages once acked (or once
//! written, for clients that never ack). A store enforces the bounds it was built with: a
//! time to live, and at most so many messages and bytes per client (the oldest go first, and
//! are counted).

use std::{fmt::Debug, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ClientId, MessageId, Result};

/// A message kept for an offline receiver: what its frame is rebuilt from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The message id (the same as when it was first sent).
    pub id: MessageId,
    /// The sender.
    pub from: ClientId,
    /// The business payload.
    pub data: Box<RawValue>,
    /// When it was first sent (unix ms); also its place in the inbox and its age for the TTL.
    pub ts: u64,
    /// Whether the sender wants receipts.
    pub receipt: bool,
    /// The message was written to one of the receiver's sockets and kept until the client acks
    /// it (`docs/design.md` section 15): when pushed again it says `"redelivered": true`
    /// instead of `"stored": true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub written: bool,
}

impl PartialEq for StoredMessage {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.from == other.from
            && self.data.get() == other.data.get()
            && self.ts == other.ts
            && self.receipt == other.receipt
            && self.written == other.written
    }
}

impl StoredMessage {
    /// Bytes it counts for against `max_bytes`: its payload and ids.
    pub fn size(&self) -> usize {
        self.data.get().len() + self.id.as_str().len() + self.from.as_str().len() + 16
    }

    /// Its order in an inbox: by send time, then by id (ids are time-ordered too).
    pub fn order_key(&self) -> (u64, &str) {
        (self.ts, self.id.as_str())
    }
}

/// The bounds of an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    /// How long a message is kept after it was sent.
    pub ttl: Duration,
    /// Most messages per client; beyond it the oldest are dropped.
    pub max_per_client: usize,
    /// Most bytes per client (see [`StoredMessage::size`]); beyond it the oldest are dropped.
    pub max_bytes: usize,
}

impl Default for InboxLimits {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(2 * 24 * 3600),
            max_per_client: 100,
            max_bytes: 1024 * 1024,
        }
    }
}

/// What one client's inbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxStats {
    /// Messages waiting.
    pub count: usize,
    /// Their bytes (see [`StoredMessage::size`]).
    pub bytes: usize,
    /// Send time of the oldest (unix ms), if any.
    pub oldest_ts: Option<u64>,
}

/// The result of storing a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Older messages dropped to stay within the bounds (or the message itself when it alone
    /// exceeds them, see [`Stored::kept`]).
    pub evicted: usize,
    /// Whether the message itself was kept (false when it is larger than `max_bytes`, or
    /// already expired).
    pub kept: bool,
}

/// Per-client inboxes of messages for receivers that were offline.
///
/// # Contract
/// - Messages come back oldest first (by `ts`, then id), each id once: storing an id that is
///   already there changes nothing.
/// - Bounds: after `store`, the inbox holds at most `max_per_client` messages and `max_bytes`
///   bytes, the oldest dropped first; messages older than the TTL are never returned and
///   stop counting.
/// - `remove` of ids that are not there is harmless.
#[async_trait]
pub trait OfflineStore: Send + Sync + Debug + 'static {
    /// Keeps `message` for `client`.
    async fn store(&self, client: &ClientId, message: StoredMessage) -> Result<Stored>;

    /// Up to `limit` unexpired messages of `client`, oldest first.
    async fn fetch(&self, client: &ClientId, limit: usize) -> Result<Vec<StoredMessage>>;

    /// Removes `ids` from `client`'s inbox (acked, or written when no ack is required).
    async fn remove(&self, client: &ClientId, ids: &[MessageId]) -> Result<()>;

    /// What `client`'s inbox holds (unexpired messages only).
    async fn stats(&self, client: &ClientId) -> Result<InboxStats>;

    /// Empties `client`'s inbox; returns how many messages it held.
    async fn clear(&self, client: &ClientId) -> Result<usize>;

    /// Checks that the store is reachable (used by `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Up to `limit` clients with messages waiting. A store that is not shared (each node
    /// keeps the inboxes of the clients it owns) lists them so a node can hand an inbox over
    /// when its client belongs to another node again (`docs/design.md` section 16); a shared
    /// store never needs to and may answer an empty list.
    async fn clients(&self, limit: usize) -> Result<Vec<ClientId>>;

    /// Whether every node sees the same inboxes (a central store such as Redis), or each node
    /// only those of the clients it owns (a local file, this process's memory); a node asked
    /// about another node's client then says where the inbox is.
    fn is_shared(&self) -> bool;
}

macro_rules! forward_offline {
    ($ty:ty) => {
        #[async_trait]
        impl<T: OfflineStore + ?Sized> OfflineStore for $ty {
            async fn store(&self, c: &ClientId, m: StoredMessage) -> Result<Stored> {
                (**self).store(c, m).await
            }
            async fn fetch(&self, c: &ClientId, limit: usize) -> Result<Vec<StoredMessage>> {
                (**self).fetch(c, limit).await
            }
            async fn remove(&self, c: &ClientId, ids: &[MessageId]) -> Result<()> {
                (**self).remove(c, ids).await
            }
            async fn stats(&self, c: &ClientId) -> Result<InboxStats> {
                (**self).stats(c).await
            }
            async fn clear(&self, c: &ClientId) -> Result<usize> {
                (**self).clear(c).await
            }
            async fn ping(&self) -> Result<()> {
                (**self).ping().await
            }
            async fn clients(&self, limit: usize) -> Result<Vec<ClientId>> {
                (**self).clients(limit).await
            }
            fn is_shared(&self) -> bool {
                (**self).is_shared()
            }
        }
    };
}

forward_offline!(Arc<T>);
forward_offline!(Box<T>);
