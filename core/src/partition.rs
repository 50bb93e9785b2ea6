//! [`Partitioner`]s: which node owns a client id.
//!
//! Helpers and nodes compute the owner locally from the static node list, so the hot path has no
//! lookup. `modulo` and `rendezvous` hash with FNV-1a 64 plus a final avalanche step: stable
//! across processes, platforms and Rust versions (unlike `std`'s `DefaultHasher`), which matters
//! because a helper and a node built at different times must agree. `murmur2` is Kafka's
//! default partitioner, so that producers in any language can compute the owner too.

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

    /// The owner of `client` among the nodes `usable` accepts (the live ones), or `None`
    /// when it accepts none (`docs/design.md` section 16).
    ///
    /// The default keeps [`node_for`](Partitioner::node_for)'s choice when it is usable and
    /// otherwise takes the next usable node in list order (wrapping), so only the clients of
    /// an unusable node move, and each to one fallback. [`RendezvousPartitioner`] overrides it
    /// with the next node in the client's own rendezvous order, which spreads a dead node's
    /// clients over all the others.
    fn node_for_among(
        &self,
        client: &ClientId,
        nodes: &[NodeId],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = nodes.len();
        if n == 0 {
            return None;
        }
        let first = self.node_for(client, nodes).min(n - 1);
        (0..n).map(|k| (first + k) % n).find(|&i| usable(i))
    }
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
        self.node_for_among(client, nodes, &|_| true).unwrap_or(0)
    }

    fn node_for_among(
        &self,
        client: &ClientId,
        nodes: &[NodeId],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let client_hash = fnv1a(client.as_bytes());
        let mut best: Option<(usize, u64)> = None;
        for (i, node) in nodes.iter().enumerate().filter(|(i, _)| usable(*i)) {
            let score = mix(fnv1a(node.as_bytes()) ^ client_hash.rotate_left(17));
            // Ties are astronomically rare; breaking them by position keeps the result stable.
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Kafka's default partitioner applied to nodes: `toPositive(murmur2(client id bytes)) % n`.
///
/// This is what the Java client's `BuiltInPartitioner.partitionForKey` (and librdkafka's
/// `murmur2_random`) computes for a keyed record, with the node list in configuration order as
/// the partitions. A producer in any language that keys records by client id and has one
/// partition per node therefore agrees with impush about which node owns a client. Like
/// [`ModuloPartitioner`], adding a node moves most clients.
#[derive(Debug, Clone, Copy, Default)]
pub struct Murmur2Partitioner;

impl Partitioner for Murmur2Partitioner {
    fn node_for(&self, client: &ClientId, nodes: &[NodeId]) -> usize {
        if nodes.is_empty() {
            return 0;
        }
        // `toPositive` is `& 0x7fffffff` (not `abs`), as in Kafka's `Utils.toPositive`.
        let positive = (murmur2(client.as_bytes()) & 0x7fff_ffff) as usize;
        positive % nodes.len()
    }
}

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): MurmurHash2 with
/// seed `0x9747b28c`, returned as Java's signed `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java's `int` arithmetic wraps, and `>>>` is an unsigned shift: u32 throughout.
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // Java's switch falls through from case 3 to case 1.
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
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
    /// [`Murmur2Partitioner`]: Kafka's default partitioner over the node list.
    Murmur2,
}

impl PartitionerKind {
    /// The partitioner this kind names.
    pub fn build(self) -> Arc<dyn Partitioner> {
        match self {
            PartitionerKind::Modulo => Arc::new(ModuloPartitioner),
            PartitionerKind::Rendezvous => Arc::new(RendezvousPartitioner),
            PartitionerKind::Murmur2 => Arc::new(Murmur2Partitioner),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of Kafka's own `UtilsTest.testMurmur2`
    /// (apache/kafka: clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
    #[test]
    fn murmur2_matches_kafka() {
        for (data, want) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(data), want, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn murmur2_partitioner_is_kafkas_partition_for_key() {
        let nodes: Vec<NodeId> = (1..=7)
            .map(|i| NodeId::new(format!("n{i}")).expect("valid node id"))
            .collect();
        for (id, hash) in [
            ("21", -973_932_308i32),
            ("foobar", -790_332_482),
            ("abc", 479_470_107),
        ] {
            let client = ClientId::new(id).expect("valid client id");
            // Java: Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions
            let want = ((hash & 0x7fff_ffff) % 7) as usize;
            assert_eq!(Murmur2Partitioner.node_for(&client, &nodes), want, "{id}");
            assert_eq!(
                PartitionerKind::Murmur2.build().node_for(&client, &nodes),
                want
            );
        }
        let client = ClientId::new("x").expect("valid client id");
        assert_eq!(Murmur2Partitioner.node_for(&client, &[]), 0);
    }

    fn nodes(n: usize) -> Vec<NodeId> {
        (1..=n)
            .map(|i| NodeId::new(format!("n{i}")).expect("valid node id"))
            .collect()
    }

    fn clients(n: usize) -> Vec<ClientId> {
        (0..n)
            .map(|i| ClientId::new(format!("c{i}")).expect("valid client id"))
            .collect()
    }

    /// Only the clients of the node that is down move; each partitioner keeps every other
    /// client where it was.
    #[test]
    fn a_dead_nodes_clients_move_and_nobody_else_does() {
        let nodes = nodes(4);
        for kind in [
            PartitionerKind::Rendezvous,
            PartitionerKind::Modulo,
            PartitionerKind::Murmur2,
        ] {
            let p = kind.build();
            let dead = 2usize;
            let mut moved_to = std::collections::HashSet::new();
            for c in clients(2000) {
                let home = p.node_for(&c, &nodes);
                let live = p
                    .node_for_among(&c, &nodes, &|i| i != dead)
                    .expect("a live node");
                if home == dead {
                    assert_ne!(live, dead, "{kind:?}");
                    moved_to.insert(live);
                } else {
                    assert_eq!(live, home, "{kind:?}: a client of a live node moved");
                }
                assert_eq!(p.node_for_among(&c, &nodes, &|_| true), Some(home));
            }
            if kind == PartitionerKind::Rendezvous {
                assert_eq!(
                    moved_to.len(),
                    3,
                    "rendezvous spreads them over all the others"
                );
            } else {
                assert_eq!(moved_to.len(), 1, "{kind:?}: the next node in list order");
            }
            assert_eq!(p.node_for_among(&clients(1)[0], &nodes, &|_| false), None);
        }
    }

    #[test]
    fn murmur2_is_selected_as_murmur2() {
        let kind: PartitionerKind = serde_json::from_str("\"murmur2\"").expect("parses");
        assert_eq!(kind, PartitionerKind::Murmur2);
    }
}
