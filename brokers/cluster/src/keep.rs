//! Memberships kept by two nodes (`docs/design.md` section 3): a node that restarted (its
//! memory is empty) or was counted dead (writes skipped it meanwhile) takes the copy of the
//! other keeper of each client it keeps, which was alive all along.
//!
//! It takes it twice: at once, so it answers with what it had; and once more a lease later,
//! when every writer's live view counts it alive again (writes made before that may have
//! skipped it, and reached only the other keeper).

use std::sync::{Arc, Weak};

use impush_core::{NodeId, Result};

use crate::{
    exchange::Exchange,
    wire::{Query, Reply},
};

/// Asks every node for the memberships it keeps with `me` and takes each answering node's
/// copy; returns how many nodes answered.
pub(crate) async fn take_from_others(exchange: &Exchange, me: &NodeId) -> Result<usize> {
    let g = exchange
        .ask(None, Query::KeptWith { node: me.clone() })
        .await?;
    let mut answered = 0;
    for (from, reply) in g.replies {
        if from == *me {
            continue;
        }
        if let Reply::Kept { memberships } = reply {
            exchange.machine().take_kept(&from, memberships);
            answered += 1;
        }
    }
    if !g.missing.is_empty() {
        tracing::warn!(missing = ?g.missing, "cluster presence: memberships kept with these nodes could not be taken from them");
    }
    Ok(answered)
}

/// Takes the other keepers' copies now, and again a lease later (see the module docs). A
/// failure is logged, not returned: the node settling its previous run goes on with what it
/// has, and the second take may still succeed.
pub(crate) async fn take_now_and_later(exchange: &Arc<Exchange>, me: &NodeId) {
    if let Err(e) = take_from_others(exchange, me).await {
        warn_failed(&e);
    }
    let later: Weak<Exchange> = Arc::downgrade(exchange);
    let me = me.clone();
    let lease = exchange.machine().lease();
    tokio::spawn(async move {
        tokio::time::sleep(lease).await;
        let Some(exchange) = later.upgrade() else {
            return;
        };
        if let Err(e) = take_from_others(&exchange, &me).await {
            warn_failed(&e);
        }
    });
}

fn warn_failed(e: &impush_core::Error) {
    tracing::warn!(
        error = e as &dyn std::error::Error,
        "cluster presence: taking the memberships kept with other nodes failed"
    );
}
