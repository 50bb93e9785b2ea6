//! Several point-to-point messages in one inbox payload (`NodeCommand::DeliverMany`, what a
//! batch send publishes: `docs/design.md` sections 6 and 7).
//!
//! Each message is delivered as if it came alone (`delivery`), settles on its own (receipts,
//! offline inbox: `settle`) and acks its [share](Shares) of the payload; the broker is told once
//! every share is acked. A share dropped unacked (the node stopped before its message settled)
//! leaves the whole payload unacked, so the broker hands it over again, and the messages that
//! had settled are dropped there as duplicates by id and receivers (`dedupe`): every message
//! of a batch is delivered at least once, as a lone message is.
//!
//! A dead node's inbox is re-routed (`takeover`) by [`regroup`]: each message's receivers go to
//! their owners now, in one payload per owner.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use impush_core::{
    envelope::{Deliver, NodeCommand},
    Acker, Acknowledge, Cluster, NodeId,
};

use super::Node;

impl Node {
    /// Delivers every message of a batch; `acker` is acked once all of them settled.
    pub(super) fn deliver_many(self: &Arc<Self>, batch: Vec<Deliver>, acker: Acker) {
        let shares = Shares::split(acker, batch.len());
        for (d, share) in batch.into_iter().zip(shares) {
            self.deliver(d, share);
        }
    }
}

/// One broker acknowledgement split into shares: it is sent once every share was acked.
#[derive(Debug)]
struct Shares {
    left: AtomicUsize,
    acker: Mutex<Option<Acker>>,
}

/// One share of a split acknowledgement.
struct Share(Arc<Shares>);

impl Shares {
    /// `n` ackers standing for `acker`: it is acked when the last of them is. With none
    /// (an empty batch) it is acked at once.
    fn split(acker: Acker, n: usize) -> Vec<Acker> {
        if !acker.is_needed() {
            return (0..n).map(|_| Acker::none()).collect();
        }
        match n {
            0 => {
                acker.ack();
                Vec::new()
            }
            1 => vec![acker],
            _ => {
                let shared = Arc::new(Shares {
                    left: AtomicUsize::new(n),
                    acker: Mutex::new(Some(acker)),
                });
                (0..n).map(|_| Acker::new(Share(shared.clone()))).collect()
            }
        }
    }
}

impl Acknowledge for Share {
    fn ack(self: Box<Self>) {
        // AcqRel: the share that acks last sees every other share's work as done.
        if self.0.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let acker = match self.0.acker.lock() {
            Ok(mut a) => a.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(a) = acker {
            a.ack();
        }
    }
}

/// `items` grouped by node, nodes in the order they first appear, items in their order.
pub(super) fn by_node<T>(items: impl IntoIterator<Item = (NodeId, T)>) -> Vec<(NodeId, Vec<T>)> {
    let mut groups: Vec<(NodeId, Vec<T>)> = Vec::new();
    for (node, item) in items {
        match groups.iter_mut().find(|(n, _)| *n == node) {
            Some((_, list)) => list.push(item),
            None => groups.push((node, vec![item])),
        }
    }
    groups
}

/// The commands that carry `batch` to its receivers' owners now: per owner, in the batch's
/// order, one `DeliverMany` (or a `Deliver` when one message goes there), each message keeping
/// its id so a receiver's node drops a part it already had.
pub(super) fn regroup(cluster: &Cluster, batch: Vec<Deliver>) -> Vec<(NodeId, NodeCommand)> {
    let parts = batch.into_iter().flat_map(|mut d| {
        let to = std::mem::take(&mut d.to);
        by_node(to.into_iter().map(|c| (cluster.owner(&c).id.clone(), c)))
            .into_iter()
            .map(move |(owner, to)| (owner, Deliver { to, ..d.clone() }))
    });
    let by_owner = by_node(parts);
    by_owner
        .into_iter()
        .map(|(owner, mut list)| {
            let cmd = if list.len() == 1 {
                NodeCommand::Deliver(list.remove(0))
            } else {
                NodeCommand::DeliverMany(list)
            };
            (owner, cmd)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use impush_core::{ClientId, MessageId, NodeEntry, PartitionerKind};
    use serde_json::value::RawValue;

    use super::*;

    /// Counts how often the acknowledgement it stands for was sent.
    #[derive(Clone, Default)]
    struct Counted(Arc<AtomicUsize>);

    impl Acknowledge for Counted {
        fn ack(self: Box<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counted {
        fn acks(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn the_delivery_is_acked_once_when_the_last_share_is() {
        let counted = Counted::default();
        let mut shares = Shares::split(Acker::new(counted.clone()), 3);
        let last = shares.pop().unwrap();
        for s in shares {
            s.ack();
            assert_eq!(counted.acks(), 0, "acked before every message settled");
        }
        last.ack();
        assert_eq!(counted.acks(), 1);
    }

    #[test]
    fn a_share_dropped_unacked_keeps_the_delivery_unacked() {
        let counted = Counted::default();
        let mut shares = Shares::split(Acker::new(counted.clone()), 3);
        drop(shares.pop()); // its message never settled (the node stopped)
        for s in shares {
            s.ack();
        }
        assert_eq!(
            counted.acks(),
            0,
            "a batch with an unsettled message was acked"
        );
    }

    #[test]
    fn one_share_is_the_acker_itself_and_none_acks_at_once() {
        let counted = Counted::default();
        let one = Shares::split(Acker::new(counted.clone()), 1);
        assert_eq!(one.len(), 1);
        one.into_iter().for_each(Acker::ack);
        assert_eq!(counted.acks(), 1);
        assert!(Shares::split(Acker::new(counted.clone()), 0).is_empty());
        assert_eq!(counted.acks(), 2, "an empty batch is acked at once");
        let fanout = Shares::split(Acker::none(), 2);
        assert!(fanout.iter().all(|a| !a.is_needed()));
    }

    fn deliver(id: &str, to: &[&ClientId]) -> Deliver {
        Deliver {
            id: MessageId::new(id).unwrap(),
            from: ClientId::new("shop").unwrap(),
            to: to.iter().map(|c| (*c).clone()).collect(),
            data: RawValue::from_string("1".into()).unwrap(),
            ts: 1,
            receipt: false,
            forwarded: false,
        }
    }

    #[test]
    fn regroup_sends_each_receiver_to_its_owner_in_one_payload_per_owner() {
        let nodes: Vec<NodeEntry> = ["n1", "n2"]
            .iter()
            .map(|n| NodeEntry {
                id: n.parse().unwrap(),
                url: format!("ws://{n}"),
            })
            .collect();
        let cluster = Cluster::new(nodes, PartitionerKind::default()).unwrap();
        let of = |node: &str| {
            (0..1000)
                .map(|i| ClientId::new(format!("c{i}")).unwrap())
                .filter(|c| cluster.owner(c).id.as_str() == node)
                .take(2)
                .collect::<Vec<_>>()
        };
        let (a, b) = (of("n1"), of("n2"));
        let batch = vec![
            deliver("m1", &[&a[0], &b[0]]),
            deliver("m2", &[&a[1]]),
            deliver("m3", &[&b[1]]),
        ];
        let mut out = regroup(&cluster, batch);
        out.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(out.len(), 2);
        for (owner, cmd) in out {
            let NodeCommand::DeliverMany(list) = cmd else {
                panic!("two messages for {owner} in one payload")
            };
            let got: Vec<(&str, Vec<ClientId>)> =
                list.iter().map(|d| (d.id.as_str(), d.to.clone())).collect();
            let want = if owner.as_str() == "n1" {
                vec![("m1", vec![a[0].clone()]), ("m2", vec![a[1].clone()])]
            } else {
                vec![("m1", vec![b[0].clone()]), ("m3", vec![b[1].clone()])]
            };
            assert_eq!(got, want, "{owner}");
        }
        let lone = regroup(&cluster, vec![deliver("m4", &[&a[0]])]);
        assert!(matches!(lone.as_slice(), [(_, NodeCommand::Deliver(_))]));
    }
}
