//! [`Partitioner`]s: which node owns a client id.
//!
//! Helpers and nodes compute the owner locally from the static node list, so the hot path has no
//! lookup. Both implementations hash with FNV-1a 64 plus a final avalanche step: stable across
//! processes, platforms and Rust versions (unlike `std`'s `DefaultHasher`), which matters because
//! a helper and a node built at different times must agree.

use std::{fmt::Debug, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{ClientId, NodeId};

/// Maps a client id to the node that holds its connections.
///
/// `node_for` is pure: the same id and node list always give the same answer. It returns an index
/// into `nodes`; callers pass a non-empty list (an empty one yields 0).
pub trait Partitioner: Send + Sync + Debug {
    /// The index in `nodes` of the node that owns `client`.
    fn node_for(&self, client: &ClientId, nodes: &[NodeId]) -> usize;
}

/// FreeIM's scheme: numeric ids modulo the node count, other ids hashed first.
///
/// Adding a node moves most clients; prefer [`RendezvousPartitioner`] unless you need FreeIM's
/// placement.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModuloPartitioner;

impl Partitioner for ModuloPartitioner {
    fn node_for(&self, client: &ClientId, nodes: &[NodeId]) -> usize {
        if nodes.is_empty() {
            return 0;
        }
        let n = nodes.len() as u64;
        let key = client
            .as_str()
            .parse::<u64>()
            .unwrap_or_else(|_| mix(fnv1a(client.as_bytes())));
        (key % n) as usize
    }
}

/// Highest-random-weight hashing: each (node, client) pair gets a score and the highest wins.
///
/// Adding a node to `n` moves only about `1/(n+1)` of the clients, all of them to the new node.
#[derive(Debug, Clone, Copy, Default)]
pub struct RendezvousPartitioner;

impl Partitioner for RendezvousPartitioner {
    fn node_for(&self, client: &ClientId, nodes: &[NodeId]) -> usize {
        let client_hash = fnv1a(client.as_bytes());
        let mut best = (0usize, 0u64);
        for (i, node) in nodes.iter().enumerate() {
            let score = mix(fnv1a(node.as_bytes()) ^ client_hash.rotate_left(17));
            // Ties are astronomically rare; breaking them by position keeps the result stable.
            if i == 0 || score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

/// Which partitioner a cluster uses (config `cluster.partitioner`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionerKind {
    /// [`ModuloPartitioner`].
    Modulo,
    /// [`RendezvousPartitioner`] (the default).
    #[default]
    Rendezvous,
}

impl PartitionerKind {
    /// The partitioner this kind names.
    pub fn build(self) -> Arc<dyn Partitioner> {
        match self {
            PartitionerKind::Modulo => Arc::new(ModuloPartitioner),
            PartitionerKind::Rendezvous => Arc::new(RendezvousPartitioner),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: FNV alone leaves the high bits of short keys poorly mixed.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
