//! impush-presence-cluster: `[presence] kind = "cluster"`, presence with no store beside the
//! broker (`docs/design.md` section 3, "The cluster presence store").
//!
//! Who knows what:
//! - each node is the authority for its own connections;
//! - a client's channel memberships are held by two nodes, its *holders*: its live owner (the
//!   first live node in its order, as `impush_core::Cluster::owner` says) and the next live
//!   node after it (the backup). Joins and leaves go to both; when the live set changes, nodes
//!   copy memberships to holders that lack them and forget those they no longer hold; a node
//!   that restarts empty takes its own back before it serves. So a client keeps its rooms when
//!   its owner is killed, while it is away and after it restarts (`machine/holders.rs`,
//!   `machine/handover.rs`, `relay.rs`);
//! - every instance (each node, each helper) keeps a **view** of every node's connections,
//!   fed by the nodes' deltas on `{prefix}.presence`, corrected by full states when a
//!   heartbeat's digest shows the view drifted (a lost delta) or the feed lagged. The same
//!   heartbeats say which nodes are live.
//!
//! How each query is answered, and how stale it can be:
//! - `is_online`, `connections`, `online_clients`: from the local view, no round trip; stale by
//!   the time a delta takes to arrive (milliseconds), or up to a heartbeat period (a third of
//!   `cluster.node_lease`) after a lost delta;
//! - `channel_members`, `channels`, `channel_online`: scatter to every node, gather within
//!   `query_timeout`; each node names the members it holds (merged, so a client is listed
//!   once) and counts those it owns (summed); online counts come from the answering node's view;
//! - `client_channels`: the client's owner (its backup when the owner does not answer), within
//!   `query_timeout`; joins and leaves: both holders, the owner's confirmation required.
//!
//! A node that does not answer in time is named in the answer's `missing` (`"partial"` in the
//! HTTP API); a node known to be dead is not waited for. A node whose heartbeats stop for a
//! lease is reaped by the lowest-id live node, which publishes the `Dropped` connections (the
//! server turns them into offline events). Memberships live in the holders' memory: they
//! survive the loss of one holder at a time (a crash, a restart, a drain), not of both at once
//! (use Redis presence if they must survive a whole-cluster restart).

mod config;
mod exchange;
mod machine;
mod memberships;
mod relay;
mod rpc;
mod state;
mod store;
mod wire;

pub use config::ClusterPresenceConfig;
pub use store::ClusterPresence;
