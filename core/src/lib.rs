//! impush-core: the vocabulary every impush crate shares.
//!
//! - ids ([`ClientId`], [`ChannelName`], [`NodeId`], [`MessageId`], [`ConnectionId`]), validated
//!   once where they enter;
//! - the extension points: [`Broker`] (publish/subscribe with [`SubscribeMode::Fanout`] and
//!   [`SubscribeMode::Queue`]), [`PresenceStore`] (who is online, channel membership),
//!   [`OfflineStore`] (the offline inbox) and [`Partitioner`] (which node owns a client);
//! - the in-memory backends [`MemoryBroker`], [`MemoryPresenceStore`] and
//!   [`MemoryOfflineStore`];
//! - what travels between helpers and nodes ([`envelope`]) and between nodes and clients
//!   ([`protocol`]); connect [`token`]s; shared [`config`] sections; one [`Error`];
//! - [`redact::redact_url`], the one way every crate shows a backend URL;
//! - [`idempotency::IdempotencyKey`], which names a send so that retries deliver it once.
//!
//! ```
//! use futures_util::StreamExt;
//! use impush_core::{Broker, MemoryBroker, SubscribeMode};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> impush_core::Result<()> {
//! let broker = MemoryBroker::default();
//! let mut sub = broker.subscribe("impush.all", SubscribeMode::Fanout).await?;
//! broker.publish("impush.all", "hello".into()).await?;
//! let delivery = sub.next().await.expect("a message")?;
//! assert_eq!(delivery.ack(), "hello");
//! # Ok(()) }
//! ```

mod broker;
mod cluster;
pub mod config;
pub mod envelope;
mod error;
mod id;
pub mod idempotency;
mod memory;
mod offline;
mod partition;
mod presence;
pub mod protocol;
pub mod redact;
pub mod token;

pub use broker::{Acker, Acknowledge, Broker, Delivery, SubscribeMode, Subscription};
pub use cluster::{follow_live_nodes, Cluster, DeathJudge, NodeEntry, NodeStatus};
pub use envelope::{Event, ReceiptStatus, Topics};
pub use error::{BoxError, Error, Result, TokenError};
pub use id::{parse_all, ChannelName, ClientId, ConnectionId, MessageId, NodeId, MAX_ID_BYTES};
pub use memory::{MemoryBroker, MemoryOfflineStore, MemoryPresenceStore};
pub use offline::{InboxLimits, InboxStats, OfflineStore, Stored, StoredMessage};
pub use partition::{
    murmur2, ModuloPartitioner, Murmur2Partitioner, Partitioner, PartitionerKind,
    RendezvousPartitioner,
};
pub use presence::{
    AddedConnection, Answer, ChannelInfo, DroppedConnection, NodeLease, NodeState, NodeSync,
    PresenceStore,
};
