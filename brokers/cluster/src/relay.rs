//! Memberships over the exchange (`docs/design.md` section 3): where each change goes, the
//! hand-over loop of a node, and what a node that starts empty takes back.
//!
//! - A join or leave goes to both holders of each client ([`to_holders`]). The owner must
//!   confirm (else the change fails, as it always did); a backup's silence is logged and the
//!   owner is asked to copy the records again, so a slow or dying backup never delays the call.
//! - [`run_handover`]: a node's loop that sends the copies its machine batches
//!   (`machine/handover.rs`) when the live set changes, and retries failed ones every tick.
//! - [`reclaim`]: a node that starts with nothing asks every node for the records it holds or
//!   will hold, page by page, before it serves; meanwhile it does not answer membership
//!   queries.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures_util::future::join_all;
use impush_core::{ClientId, NodeId, Result};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    exchange::{unavailable, Exchange},
    wire::{Query, Reply, Stamp},
};

/// How often failed copies are tried again.
const TICK: Duration = Duration::from_secs(1);

/// Sends a membership change of `clients` to every holder of each; `query` builds the change
/// for one holder's clients, with its stamp and this instance's view digest. Fails naming the
/// owners that did not confirm in time.
pub(crate) async fn to_holders(
    ex: &Arc<Exchange>,
    clients: &[ClientId],
    query: impl Fn(Vec<ClientId>, Stamp, u64) -> Query,
) -> Result<()> {
    let (routes, at, view) = {
        let mut m = ex.machine();
        let now = Instant::now();
        let routes = m.route(clients, now);
        ex.wake_if_due(&mut m);
        (routes, m.stamp(now), m.view_digest())
    };
    // Every request is published before any answer is awaited, in this order.
    let mut owners = Vec::new();
    for r in routes {
        let sent = ex
            .send(Some(&r.node), query(r.clients.clone(), at, view))
            .await;
        match (sent, r.owner) {
            (Ok(sent), true) => owners.push((r.node, sent)),
            (Ok(sent), false) => {
                let ex = ex.clone();
                tokio::spawn(async move {
                    if !sent.gather().await.missing.is_empty() {
                        backup_missed(&ex, &r.node, &r.clients).await;
                    }
                });
            }
            (Err(e), true) => return Err(e),
            (Err(_), false) => backup_missed(ex, &r.node, &r.clients).await,
        }
    }
    let answers = join_all(
        owners
            .into_iter()
            .map(|(node, sent)| async move { (node, sent.gather().await.missing.is_empty()) }),
    )
    .await;
    let failed: Vec<String> = answers
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n.to_string())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(unavailable(format!(
        "node(s) {} did not confirm within {:?}",
        failed.join(", "),
        ex.timeout()
    )))
}

/// A backup holder did not confirm a change of `clients`: their owners copy the records again.
async fn backup_missed(ex: &Exchange, backup: &NodeId, clients: &[ClientId]) {
    tracing::warn!(
        node = %backup,
        clients = clients.len(),
        "a backup holder of channel memberships did not confirm a change; its owner copies them again"
    );
    let by_owner: BTreeMap<NodeId, Vec<ClientId>> = {
        let m = ex.machine();
        let mut g: BTreeMap<NodeId, Vec<ClientId>> = BTreeMap::new();
        for c in clients {
            g.entry(m.memberships_owner(c)).or_default().push(c.clone());
        }
        g
    };
    for (owner, clients) in by_owner {
        if let Err(e) = ex.send(Some(&owner), Query::HandOver { clients }).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                node = %owner,
                "cannot ask a holder to copy channel memberships again"
            );
        }
    }
}

/// A node's hand-over loop: sends the batches its machine makes whenever it has work, and
/// tries failed copies again every [`TICK`]; ends with `stop`.
pub(crate) async fn run_handover(ex: Arc<Exchange>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = ex.handover_wake().notified() => {}
            () = tokio::time::sleep(TICK) => ex.machine().retry_due(),
        }
        let mut moved = 0;
        loop {
            let Some(mut batch) = ex.machine().next_handover(Instant::now()) else {
                break;
            };
            let view = ex.machine().view_digest();
            let mut failed = BTreeSet::new();
            for (node, records) in std::mem::take(&mut batch.sends) {
                let ok = match ex.ask(Some(&node), Query::Copies { records, view }).await {
                    Ok(g) => g.missing.is_empty(),
                    Err(e) => {
                        tracing::debug!(
                            error = &e as &dyn std::error::Error,
                            "cannot send channel memberships"
                        );
                        false
                    }
                };
                if !ok {
                    failed.insert(node);
                }
            }
            moved += batch.len();
            ex.machine().handed_over(batch, &failed, Instant::now());
            if stop.is_cancelled() {
                return;
            }
        }
        if moved > 0 {
            tracing::info!(
                records = moved,
                "handed channel memberships to their holders"
            );
        }
    }
}

/// Takes back, before this node serves, the memberships it held or will hold (`me` restarted
/// with nothing): asks every node, page by page; a node that does not answer is logged (its
/// copies arrive with the hand-over once this node is live).
pub(crate) async fn reclaim(ex: &Exchange, me: &NodeId) {
    ex.machine().filling = true;
    let mut asks: Vec<(Option<NodeId>, Option<ClientId>)> = vec![(None, None)];
    let mut taken = 0;
    let mut silent: BTreeSet<NodeId> = BTreeSet::new();
    while let Some((to, after)) = asks.pop() {
        let query = Query::Reclaim {
            node: me.clone(),
            after,
        };
        let g = match ex.ask(to.as_ref(), query).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot ask for this node's channel memberships"
                );
                break;
            }
        };
        silent.extend(g.missing.into_iter().filter(|n| n != me));
        for (node, reply) in g.replies {
            let Reply::Records { records, next } = reply else {
                continue;
            };
            if node == *me {
                continue;
            }
            taken += records.len();
            ex.machine().take_reclaimed(&records, Instant::now());
            if let Some(next) = next {
                asks.push((Some(node), Some(next)));
            }
        }
    }
    ex.machine().filling = false;
    // At a cold start nobody has any; a node that holds some and did not answer copies them
    // here once it sees this node live.
    let silent: Vec<String> = silent.iter().map(ToString::to_string).collect();
    tracing::info!(
        node = %me,
        records = taken,
        silent = %silent.join(","),
        "took back channel memberships"
    );
}
