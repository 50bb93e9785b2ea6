//! Fanout, topics, payloads and the broker's lifecycle (`ping`, `shutdown`).

use bytes::Bytes;
use impush_core::{Broker, SubscribeMode};

use super::helpers::{assert_payloads, numbered, publish, queue, sorted, subscribe};
use crate::support::{call, expect_quiet, recv, recv_delivery, recv_n, CALL_TIMEOUT, RECV_TIMEOUT};

/// Every fanout subscriber of a topic receives every message, in publish order.
pub async fn fanout_reaches_every_subscriber(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.fanout");
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(subscribe(b, &topic, SubscribeMode::Fanout).await);
    }
    let msgs = numbered("m", 5);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    for (k, sub) in subs.iter_mut().enumerate() {
        let got = recv_n(sub, msgs.len(), &format!("subscriber {k}")).await;
        assert_payloads(&got, &msgs, &format!("subscriber {k}"));
    }
    for (k, sub) in subs.iter_mut().enumerate() {
        expect_quiet(sub, &format!("subscriber {k}")).await;
    }
}

/// A fanout subscriber gets only messages published after its `subscribe` returned.
pub async fn fanout_delivers_only_messages_published_after_subscribe(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.fanout");
    // Nobody is listening: at-most-once fanout may drop this.
    publish(b, &topic, "before-anyone").await;
    let mut early = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "after-early").await;
    let mut late = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "after-late").await;

    assert_eq!(recv(&mut early, "early").await, "after-early");
    assert_eq!(recv(&mut early, "early").await, "after-late");
    assert_eq!(recv(&mut late, "late").await, "after-late");
    expect_quiet(&mut early, "early").await;
    expect_quiet(&mut late, "late").await;
}

/// Messages from one publisher on one topic arrive in publish order (1000 messages).
pub async fn fanout_preserves_publisher_order(b: &dyn Broker, ns: &str) {
    const N: usize = 1000;
    let topic = format!("{ns}.order");
    let mut sub = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let msgs = numbered("", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got = recv_n(&mut sub, N, "ordered subscriber").await;
    assert_payloads(&got, &msgs, "ordered subscriber");
    expect_quiet(&mut sub, "ordered subscriber (no late duplicate)").await;
}

/// Many publishes in flight at once on one topic (as a busy helper makes them) all arrive,
/// each exactly once, to fanout and queue subscribers alike; each publisher's own messages
/// keep their order.
pub async fn concurrent_publishes_all_arrive_once(b: &dyn Broker, ns: &str) {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 100;
    let topic = format!("{ns}.concurrent");
    let mut fan = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-cq"))).await;
    let publishers = (0..PUBLISHERS).map(|p| {
        let topic = topic.clone();
        async move {
            for m in numbered(&format!("p{p}-"), EACH) {
                publish(b, &topic, m).await;
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    for (sub, what) in [(&mut fan, "fanout"), (&mut q, "queue")] {
        let got = recv_n(sub, PUBLISHERS * EACH, what).await;
        for p in 0..PUBLISHERS {
            let prefix = format!("p{p}-");
            let mine: Vec<Bytes> = got
                .iter()
                .filter(|m| m.starts_with(prefix.as_bytes()))
                .cloned()
                .collect();
            assert_payloads(
                &mine,
                &numbered(&prefix, EACH),
                &format!("{what}, publisher {p}"),
            );
        }
    }
    expect_quiet(&mut fan, "fanout (no late duplicate)").await;
    expect_quiet(&mut q, "queue (no late duplicate)").await;
}

/// Messages stay on their topic, also for topics whose names are prefixes of each other, and
/// a queue group name used on two topics is two independent groups.
pub async fn topics_are_isolated(b: &dyn Broker, ns: &str) {
    let topics = [format!("{ns}.a"), format!("{ns}.b"), format!("{ns}.a.b")];
    let group = format!("{ns}-shared-group");
    let mut fanout = Vec::new();
    let mut queues = Vec::new();
    for t in &topics {
        fanout.push(subscribe(b, t, SubscribeMode::Fanout).await);
        queues.push(subscribe(b, t, queue(group.clone())).await);
    }
    for t in &topics {
        publish(b, t, format!("only-{t}")).await;
    }
    // A marker after the real message: receiving it right after our own message proves that no
    // other topic's message got in between.
    for t in &topics {
        publish(b, t, format!("end-{t}")).await;
    }
    for (i, t) in topics.iter().enumerate() {
        let want = vec![
            Bytes::from(format!("only-{t}")),
            Bytes::from(format!("end-{t}")),
        ];
        let got = recv_n(&mut fanout[i], 2, &format!("fanout on {t}")).await;
        assert_payloads(&got, &want, &format!("fanout on {t}"));
        let got = recv_n(&mut queues[i], 2, &format!("queue on {t}")).await;
        assert_payloads(&sorted(got), &sorted(want), &format!("queue on {t}"));
    }
    for (i, t) in topics.iter().enumerate() {
        expect_quiet(&mut fanout[i], &format!("fanout on {t}")).await;
        expect_quiet(&mut queues[i], &format!("queue on {t}")).await;
    }
}

/// A fanout subscriber and a queue group on the same topic both receive every message.
pub async fn fanout_and_queue_on_same_topic_both_receive(b: &dyn Broker, ns: &str) {
    const N: usize = 10;
    let topic = format!("{ns}.mixed");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    let msgs = numbered("m", N);
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got_f = recv_n(&mut f, N, "fanout subscriber").await;
    assert_payloads(&got_f, &msgs, "fanout subscriber");
    let got_q = recv_n(&mut q, N, "queue member").await;
    assert_payloads(&sorted(got_q), &sorted(msgs), "queue member");
    expect_quiet(&mut f, "fanout subscriber").await;
    expect_quiet(&mut q, "queue member").await;
}

/// Dropping a subscription unsubscribes: publishing keeps working (also well past any
/// per-subscriber buffer a dropped subscriber could have filled) and other subscribers still
/// receive.
pub async fn dropping_subscription_unsubscribes(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.drop");
    let gone = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut kept = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "both").await;
    drop(gone);
    publish(b, &topic, "after-drop").await;
    assert_eq!(recv(&mut kept, "kept subscriber").await, "both");
    assert_eq!(recv(&mut kept, "kept subscriber").await, "after-drop");

    // Everyone gone: publishing still succeeds and does not block.
    drop(kept);
    for m in numbered("nobody-", 100) {
        publish(b, &topic, m).await;
    }
    // And a new subscriber starts fresh.
    let mut fresh = subscribe(b, &topic, SubscribeMode::Fanout).await;
    publish(b, &topic, "fresh").await;
    assert_eq!(recv(&mut fresh, "fresh subscriber").await, "fresh");
}

/// Payloads come out byte for byte as they went in: empty, every byte value, invalid UTF-8,
/// multi-byte UTF-8; through fanout and through a queue group.
pub async fn payloads_are_byte_exact(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.bytes");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let msgs = vec![
        Bytes::new(),
        Bytes::from(all_bytes.clone()),
        Bytes::from(all_bytes.into_iter().rev().collect::<Vec<u8>>()),
        Bytes::from_static(b"\0"),
        Bytes::from_static(b"\xff\xfe\x00not utf-8\x80"),
        Bytes::from("用户 ✓ \r\n\t \"quoted\" {json}".to_owned()),
        Bytes::from_static(b"   "),
    ];
    for m in &msgs {
        publish(b, &topic, m.clone()).await;
    }
    let got_f = recv_n(&mut f, msgs.len(), "fanout").await;
    assert_payloads(&got_f, &msgs, "fanout");
    let got_q = recv_n(&mut q, msgs.len(), "queue").await;
    assert_payloads(&sorted(got_q), &sorted(msgs), "queue");
    expect_quiet(&mut f, "fanout (no late duplicate)").await;
    expect_quiet(&mut q, "queue (no late duplicate)").await;
}

/// A 1 MiB payload comes out byte for byte, through fanout and through a queue group.
pub async fn large_payload_is_byte_exact(b: &dyn Broker, ns: &str) {
    const SIZE: usize = 1024 * 1024;
    let topic = format!("{ns}.large");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    // A pattern that is not periodic in any power of two, so a misplaced chunk shows.
    let big: Bytes = (0..SIZE)
        .map(|i| u8::try_from((i * 31 + i / 251) % 251).expect("below 251"))
        .collect::<Vec<u8>>()
        .into();
    publish(b, &topic, big.clone()).await;
    let got_f = recv(&mut f, "fanout").await;
    assert_payloads(&[got_f], std::slice::from_ref(&big), "fanout");
    let got_q = recv(&mut q, "queue").await;
    assert_payloads(&[got_q], &[big], "queue");
    expect_quiet(&mut f, "fanout (no late duplicate)").await;
    expect_quiet(&mut q, "queue (no late duplicate)").await;
}

/// Fanout deliveries carry nothing to acknowledge; queue deliveries do.
pub async fn only_queue_deliveries_need_an_ack(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.acks");
    let mut f = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let mut q = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    publish(b, &topic, "x").await;
    let (_, fan_ack) = recv_delivery(&mut f, RECV_TIMEOUT, "fanout")
        .await
        .into_parts();
    assert!(!fan_ack.is_needed(), "a fanout delivery wants an ack");
    let (payload, queue_ack) = recv_delivery(&mut q, RECV_TIMEOUT, "queue")
        .await
        .into_parts();
    assert_eq!(payload, "x");
    assert!(queue_ack.is_needed(), "a queue delivery has no ack");
    queue_ack.ack();
}

/// `ping` succeeds on a working broker.
pub async fn broker_ping_succeeds(b: &dyn Broker, _ns: &str) {
    call("ping", b.ping()).await;
}

/// `shutdown` succeeds and calling it twice is fine (the contract); afterwards publish and
/// ping fail promptly instead of hanging or pretending to work.
pub async fn shutdown_twice_is_fine(b: &dyn Broker, ns: &str) {
    let topic = format!("{ns}.shutdown");
    let _live = subscribe(b, &topic, SubscribeMode::Fanout).await;
    let _live_queue = subscribe(b, &topic, queue(format!("{ns}-g"))).await;
    publish(b, &topic, "before-shutdown").await;
    call("first shutdown", b.shutdown()).await;
    call("second shutdown", b.shutdown()).await;
    let after = tokio::time::timeout(CALL_TIMEOUT, b.publish(&topic, "late".into()))
        .await
        .expect("publish after shutdown hung");
    assert!(after.is_err(), "publish after shutdown succeeded");
    let ping = tokio::time::timeout(CALL_TIMEOUT, b.ping())
        .await
        .expect("ping after shutdown hung");
    assert!(ping.is_err(), "ping after shutdown succeeded");
}
