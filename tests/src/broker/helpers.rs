//! Calls and payload tools the broker cases share.

use bytes::Bytes;
use impush_core::{Broker, SubscribeMode, Subscription};

use crate::support::call;

pub(super) async fn subscribe(b: &dyn Broker, topic: &str, mode: SubscribeMode) -> Subscription {
    let what = format!("subscribe({topic}, {mode:?})");
    call(&what, b.subscribe(topic, mode)).await
}

pub(super) async fn publish(b: &dyn Broker, topic: &str, payload: impl Into<Bytes>) {
    call(
        &format!("publish({topic})"),
        b.publish(topic, payload.into()),
    )
    .await;
}

pub(super) fn queue(group: String) -> SubscribeMode {
    SubscribeMode::Queue { group }
}

/// `prefix0`, `prefix1`, ... as payloads.
pub(super) fn numbered(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}{i}")))
        .collect()
}

pub(super) fn sorted(mut v: Vec<Bytes>) -> Vec<Bytes> {
    v.sort();
    v
}

/// Compares payload lists without printing megabytes on failure.
#[track_caller]
pub(super) fn assert_payloads(got: &[Bytes], want: &[Bytes], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: wrong number of messages");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let show = |b: &Bytes| {
                if b.len() > 64 {
                    format!("{} bytes starting {:?}", b.len(), b.slice(..64))
                } else {
                    format!("{b:?}")
                }
            };
            panic!(
                "{what}: message {i} differs: got {}, want {}",
                show(g),
                show(w)
            );
        }
    }
}
