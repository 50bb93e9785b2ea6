//! Queue groups: one member per message, groups independent, retention without a member,
//! redelivery of what a leaving member did not ack.

use std::{collections::BTreeSet, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use impush_core::{Broker, Delivery, Result, Subscription};

use super::helpers::{assert_payloads, numbered, publish, queue, sorted, subscribe};
use crate::support::{
    expect_quiet, expect_quiet_for, recv_delivery, recv_n, RECV_TIMEOUT, REDELIVERY_TIMEOUT,
};

/// Two members of one queue group: every message reaches exactly one of them (the union is
/// every message, with no duplicates). How the work is split is up to the backend.
pub async fn queue_delivers_each_message_to_one_member(b: &dyn Broker, ns: &str) {
    const N: usize = 200;
    let topic = format!("{ns}.work");
    let group = format!("{ns}-workers");
    let m0 = subscribe(b, &topic, queue(group.clone())).await;
    let m1 = subscribe(b, &topic, queue(group.clone())).await;
    // Merge the two members into one stream, tagging each payload with a leading member byte.
    let tag = |member: u8| {
        move |item: Result<Delivery>| {
            item.map(|d| {
                let (p, acker) = d.into_parts();
                let mut v = Vec::with_capacity(p.len() + 1);
                v.push(member);
                v.extend_from_slice(&p);
                Delivery::with_ack(Bytes::from(v), acker)
            })
        }
    };
    let mut both: Subscription =
        futures_util::stream::select(m0.map(tag(0)), m1.map(tag(1))).boxed();
    let msgs = numbered("job-", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let tagged = recv_n(&mut both, N, "queue group").await;
    expect_quiet(&mut both, "queue group (after every message arrived once)").await;

    let mut per_member = [0usize; 2];
    let mut got = Vec::with_capacity(N);
    for t in tagged {
        let (member, payload) = untag(&t);
        per_member[member] += 1;
        got.push(payload);
    }
    let unique: BTreeSet<&Bytes> = got.iter().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "queue group: a message was delivered twice (split {per_member:?})"
    );
    assert_payloads(&sorted(got), &sorted(msgs), "queue group union");
}

fn untag(tagged: &Bytes) -> (usize, Bytes) {
    let member = *tagged.first().expect("a tagged payload has a member byte");
    (usize::from(member), tagged.slice(1..))
}

/// Two different queue groups on one topic each get every message.
pub async fn queue_groups_each_get_every_message(b: &dyn Broker, ns: &str) {
    const N: usize = 50;
    let topic = format!("{ns}.jobs");
    let mut g1 = subscribe(b, &topic, queue(format!("{ns}-g1"))).await;
    let mut g2 = subscribe(b, &topic, queue(format!("{ns}-g2"))).await;
    let msgs = numbered("job-", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got1 = recv_n(&mut g1, N, "group g1").await;
    let got2 = recv_n(&mut g2, N, "group g2").await;
    assert_payloads(&sorted(got1), &sorted(msgs.clone()), "group g1");
    assert_payloads(&sorted(got2), &sorted(msgs), "group g2");
    expect_quiet(&mut g1, "group g1").await;
    expect_quiet(&mut g2, "group g2").await;
}

/// Messages published while a queue group has no member (it had one, which was dropped) wait
/// and are delivered to the next member that subscribes.
pub async fn queue_retains_messages_while_group_has_no_member(b: &dyn Broker, ns: &str) {
    const N: usize = 10;
    let topic = format!("{ns}.inbox");
    let group = format!("{ns}-node");
    // Subscribing once creates the group; dropping the subscription leaves it memberless.
    drop(subscribe(b, &topic, queue(group.clone())).await);
    let msgs = numbered("waiting-", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let mut next = subscribe(b, &topic, queue(group)).await;
    let got = recv_n(&mut next, N, "next member").await;
    assert_payloads(&sorted(got), &sorted(msgs), "next member");
    expect_quiet(&mut next, "next member").await;
}

/// At-least-once: what a member received but did not ack when its subscription ended goes to
/// the next member of the group, and what it acked does not.
pub async fn queue_redelivers_unacked_when_member_leaves(b: &dyn Broker, ns: &str) {
    const N: usize = 6;
    const ACKED: usize = 2;
    let topic = format!("{ns}.inbox");
    let group = format!("{ns}-node");
    let mut first = subscribe(b, &topic, queue(group.clone())).await;
    let msgs = numbered("m", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let mut held = Vec::new();
    for i in 0..N {
        let d = recv_delivery(&mut first, RECV_TIMEOUT, &format!("first member ({i})")).await;
        if i < ACKED {
            d.ack();
        } else {
            held.push(d); // read, never acked: as if the process died before settling it
        }
    }
    let mut got: Vec<Bytes> = Vec::new();
    for d in held {
        got.push(d.into_parts().0);
    }
    drop(first);

    let mut next = subscribe(b, &topic, queue(group)).await;
    let mut again = Vec::new();
    for i in 0..N - ACKED {
        let d = recv_delivery(&mut next, REDELIVERY_TIMEOUT, &format!("redelivery ({i})")).await;
        again.push(d.ack());
    }
    assert_payloads(
        &sorted(again),
        &sorted(got),
        "redelivered = the unacked ones",
    );
    expect_quiet_for(
        &mut next,
        Duration::from_secs(3),
        "acked messages stay acked",
    )
    .await;
}
