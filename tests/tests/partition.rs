//! Partitioner properties: determinism, bounds, balance, and how many clients move when a node
//! is added. The last one is why [`RendezvousPartitioner`] is the default: going from 4 to 5
//! nodes it moves about 1/5 of the clients, all of them to the new node, while
//! [`ModuloPartitioner`] (FreeIM's scheme) reshuffles most of them, and every moved client is a
//! reconnect.

use std::collections::HashSet;

use impush_core::{
    ClientId, Cluster, Error, ModuloPartitioner, NodeEntry, NodeId, Partitioner, PartitionerKind,
    RendezvousPartitioner,
};

const IDS: usize = 10_000;

fn ids() -> Vec<ClientId> {
    (0..IDS)
        .map(|i| ClientId::new(format!("user-{i}")).expect("valid client id"))
        .collect()
}

fn nodes(n: usize) -> Vec<NodeId> {
    (1..=n)
        .map(|i| NodeId::new(format!("node-{i}")).expect("valid node id"))
        .collect()
}

fn both() -> [(&'static str, Box<dyn Partitioner>); 2] {
    [
        ("modulo", Box::new(ModuloPartitioner)),
        ("rendezvous", Box::new(RendezvousPartitioner)),
    ]
}

fn counts(p: &dyn Partitioner, ids: &[ClientId], nodes: &[NodeId]) -> Vec<usize> {
    let mut c = vec![0; nodes.len()];
    for id in ids {
        c[p.node_for(id, nodes)] += 1;
    }
    c
}

/// The node id (not index) each client is placed on.
fn placement<'a>(p: &dyn Partitioner, ids: &[ClientId], nodes: &'a [NodeId]) -> Vec<&'a NodeId> {
    ids.iter().map(|id| &nodes[p.node_for(id, nodes)]).collect()
}

#[test]
fn deterministic() {
    let ids = ids();
    let nodes = nodes(4);
    for (name, p) in both() {
        let first: Vec<usize> = ids.iter().map(|id| p.node_for(id, &nodes)).collect();
        let again: Vec<usize> = ids.iter().map(|id| p.node_for(id, &nodes)).collect();
        assert_eq!(first, again, "{name}");
        // A fresh instance (another process, another build) agrees.
        let kind = if name == "modulo" {
            PartitionerKind::Modulo
        } else {
            PartitionerKind::Rendezvous
        };
        let fresh = kind.build();
        let other: Vec<usize> = ids.iter().map(|id| fresh.node_for(id, &nodes)).collect();
        assert_eq!(first, other, "{name}");
    }
}

/// Pinned answers, recorded from the implementation: the hash must not change between
/// releases, or a helper and a node built at different times would disagree about who owns a
/// client. A change here is a breaking change for mixed-version clusters.
#[test]
fn placement_is_pinned_across_releases() {
    let nodes = nodes(4);
    let pinned = [
        // (id, modulo, rendezvous)
        ("alice", 0, 1),
        ("bob", 0, 0),
        ("user-42", 3, 3),
        ("用户", 2, 1),
        ("42", 2, 1),
    ];
    for (id, modulo, rendezvous) in pinned {
        let id = ClientId::new(id).unwrap();
        assert_eq!(
            ModuloPartitioner.node_for(&id, &nodes),
            modulo,
            "modulo {id}"
        );
        assert_eq!(
            RendezvousPartitioner.node_for(&id, &nodes),
            rendezvous,
            "rendezvous {id}"
        );
    }
}

#[test]
fn index_is_in_bounds() {
    let ids = ids();
    for n in 1..=9 {
        let nodes = nodes(n);
        for (name, p) in both() {
            for id in ids.iter().take(2_000) {
                let i = p.node_for(id, &nodes);
                assert!(i < n, "{name}: {id} -> {i} with {n} nodes");
            }
        }
    }
    // Documented: an empty node list yields 0 (callers must not pass one).
    for (name, p) in both() {
        assert_eq!(p.node_for(&ids[0], &[]), 0, "{name}");
    }
}

#[test]
fn balanced_over_four_nodes() {
    let ids = ids();
    let nodes = nodes(4);
    for (name, p) in both() {
        let c = counts(&*p, &ids, &nodes);
        assert_eq!(c.iter().sum::<usize>(), IDS);
        for (i, &k) in c.iter().enumerate() {
            assert!(
                (2_250..=2_750).contains(&k),
                "{name}: node {i} got {k} of {IDS} ids (want 2500 ± 10%): {c:?}"
            );
        }
    }
}

#[test]
fn modulo_uses_numeric_ids_directly() {
    let p = ModuloPartitioner;
    let nodes = nodes(4);
    let id = |s: &str| ClientId::new(s).unwrap();
    assert_eq!(p.node_for(&id("7"), &nodes), 3);
    assert_eq!(p.node_for(&id("8"), &nodes), 0);
    assert_eq!(p.node_for(&id("0"), &nodes), 0);
    assert_eq!(p.node_for(&id("13"), &nodes), 1);
    assert_eq!(p.node_for(&id("18446744073709551615"), &nodes), 3); // u64::MAX % 4
    assert_eq!(p.node_for(&id("7"), &nodes[..3]), 1);
    // Numeric ids 0..10000 split exactly evenly.
    let numeric: Vec<ClientId> = (0..IDS).map(|i| id(&i.to_string())).collect();
    assert_eq!(counts(&p, &numeric, &nodes), vec![2_500; 4]);
}

#[test]
fn rendezvous_adding_a_node_moves_about_one_fifth_all_to_the_new_node() {
    let p = RendezvousPartitioner;
    let ids = ids();
    let (four, five) = (nodes(4), nodes(5));
    let before = placement(&p, &ids, &four);
    let after = placement(&p, &ids, &five);
    let mut moved = 0;
    for ((id, b), a) in ids.iter().zip(&before).zip(&after) {
        if b != a {
            moved += 1;
            assert_eq!(
                *a, &five[4],
                "{id} moved from {b} to {a}, not to the new node"
            );
        }
    }
    let share = moved as f64 / IDS as f64;
    assert!(
        (0.15..=0.25).contains(&share),
        "rendezvous moved {moved} of {IDS} ids ({:.1}%), want about 20%",
        share * 100.0
    );
}

#[test]
fn rendezvous_removing_a_node_moves_only_its_clients() {
    let p = RendezvousPartitioner;
    let ids = ids();
    let five = nodes(5);
    let without: Vec<NodeId> = five
        .iter()
        .filter(|n| n.as_str() != "node-2")
        .cloned()
        .collect();
    let before = placement(&p, &ids, &five);
    let after = placement(&p, &ids, &without);
    for ((id, b), a) in ids.iter().zip(&before).zip(&after) {
        if b.as_str() != "node-2" {
            assert_eq!(b, a, "{id} moved although its node stayed");
        }
    }
}

#[test]
fn rendezvous_ignores_node_order() {
    let p = RendezvousPartitioner;
    let ids = ids();
    let nodes = nodes(5);
    let mut reversed = nodes.clone();
    reversed.reverse();
    assert_eq!(
        placement(&p, &ids, &nodes),
        placement(&p, &ids, &reversed),
        "the owner must depend on the node ids, not on their order in the config"
    );
}

#[test]
fn modulo_adding_a_node_moves_most_clients() {
    let p = ModuloPartitioner;
    for ids in [
        ids(),
        (0..IDS)
            .map(|i| ClientId::new(i.to_string()).unwrap())
            .collect(),
    ] {
        let (four, five) = (nodes(4), nodes(5));
        let before = placement(&p, &ids, &four);
        let after = placement(&p, &ids, &five);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(
            moved * 2 > IDS,
            "modulo moved only {moved} of {IDS} ids; expected most of them"
        );
    }
}

#[test]
fn rendezvous_is_the_default() {
    assert_eq!(PartitionerKind::default(), PartitionerKind::Rendezvous);
}

fn entries(n: usize) -> Vec<NodeEntry> {
    nodes(n)
        .into_iter()
        .enumerate()
        .map(|(i, id)| NodeEntry {
            id,
            url: format!("ws://10.0.0.{}:8080", i + 1),
        })
        .collect()
}

#[test]
fn cluster_owner_follows_the_partitioner() {
    let ids = ids();
    for kind in [PartitionerKind::Rendezvous, PartitionerKind::Modulo] {
        let entries = entries(4);
        let node_ids: Vec<NodeId> = entries.iter().map(|e| e.id.clone()).collect();
        let cluster = Cluster::new(entries.clone(), kind).unwrap();
        assert_eq!(cluster.nodes(), &entries[..]);
        let p = kind.build();
        let mut seen = HashSet::new();
        for id in &ids {
            let owner = cluster.owner(id);
            assert_eq!(owner, &entries[p.node_for(id, &node_ids)], "{kind:?} {id}");
            assert_eq!(cluster.owner(id), owner, "{kind:?}: owner is deterministic");
            seen.insert(owner.id.clone());
        }
        assert_eq!(seen.len(), 4, "{kind:?}: every node owns someone");
        for e in &entries {
            assert_eq!(cluster.node(&e.id), Some(e));
        }
        assert_eq!(cluster.node(&NodeId::new("node-9").unwrap()), None);
    }
    // One node owns everyone.
    let single = Cluster::new(entries(1), PartitionerKind::default()).unwrap();
    assert!(ids
        .iter()
        .all(|id| single.owner(id).id.as_str() == "node-1"));
}

#[test]
fn cluster_rejects_bad_node_lists() {
    let config_err = |nodes: Vec<NodeEntry>| {
        let err = Cluster::new(nodes, PartitionerKind::Rendezvous).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        err.to_string()
    };
    assert!(config_err(vec![]).contains("at least one"));

    let mut dup = entries(3);
    dup[2].id = dup[0].id.clone();
    assert!(config_err(dup).contains("node-1"));

    for url in [
        "http://10.0.0.1:8080",
        "https://10.0.0.1",
        "10.0.0.1:8080",
        "ws://",
        "ws://host name:80",
        "",
    ] {
        let mut bad = entries(2);
        bad[1].url = url.to_owned();
        let msg = config_err(bad);
        assert!(msg.contains("node-2"), "{url:?}: {msg}");
    }

    let mut ok = entries(2);
    ok[0].url = "wss://push.example.com".to_owned();
    ok[1].url = "ws://localhost:9000/".to_owned();
    assert!(Cluster::new(ok, PartitionerKind::Modulo).is_ok());
}
