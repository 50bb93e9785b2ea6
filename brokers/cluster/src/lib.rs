//! impush-presence-cluster: `[presence] kind = "cluster"`, presence with no store beside the
//! broker (`docs/design.md` section 3, "The cluster presence store").
//!
//! Who knows what:
//! - each node is the authority for its own connections; a client's channel memberships are
//!   kept by two nodes, its home and the next node in its order (`Cluster::keepers`), so a
//!   crash or restart of one of them loses nothing (`keep`);
//! - every instance (each node, each helper) keeps a **view** of every node's connections,
//!   fed by the nodes' deltas on `{prefix}.presence`, corrected by full states when a
//!   heartbeat's digest shows the view drifted (a lost delta) or the feed lagged.
//!
//! How each query is answered, and how stale it can be:
//! - `is_online`, `connections`, `online_clients`: from the local view, no round trip; stale by
//!   the time a delta takes to arrive (milliseconds), or up to a heartbeat period (a third of
//!   `cluster.node_lease`) after a lost delta;
//! - `channel_members`, `channels`, `channel_online`: scatter to every node, gather within
//!   `query_timeout` (online counts come from the answering node's view);
//! - joins and leaves: both keepers (one the live view counts dead is skipped);
//!   `client_channels`: the first keeper alive; within `query_timeout`.
//!
//! A node that does not answer in time is named in the answer's `missing` (`"partial"` in the
//! HTTP API); a node known to be dead is not waited for. A node whose heartbeats stop for a
//! lease is reaped by the lowest-id live node, which publishes the `Dropped` connections (the
//! server turns them into offline events). Memberships are lost only when both keepers of a
//! client are lost at once (use Redis presence if they must survive that).

mod config;
mod exchange;
mod keep;
mod machine;
mod rpc;
mod state;
mod store;
mod wire;

pub use config::ClusterPresenceConfig;
pub use store::ClusterPresence;
