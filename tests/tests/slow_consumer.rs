//! A client that never reads: the node closes it with 4008 and its memory stays bounded.
//!
//! Alone in its own test binary because it measures the process's resident memory, which
//! parallel tests in the same process would disturb.

#![allow(clippy::unwrap_used)]

use crate::support;

use support::{eventually, id, start, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_4008_and_memory_stays_bounded() {
    let server = start(|c| {
        c.limits.outbound_queue = 64;
        c.limits.outbound_queue_bytes = 1024 * 1024;
    })
    .await;
    let h = server.helper();
    let mut lazy = Client::connect(&h, "lazy", 1).await;
    // The client reads again as soon as the node has given up on it: the node waits only a
    // few seconds (the session's close timeout) for a client that does not read to take the
    // close frame, and under a loaded machine the rest of the sends can take longer than that.
    let (gave_up, gave_up_seen) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let _ = gave_up_seen.await;
        lazy.close_code().await
    });
    let mut gave_up = Some(gave_up);
    let payload = "x".repeat(64 * 1024);
    let rss_before = support::rss_bytes();
    // 1600 x 64 KiB = 100 MiB pushed at a socket nobody reads; the node must neither buffer
    // it nor fall over.
    for _ in 0..1600 {
        h.send_message(&id("srv"), &[id("lazy")], &payload, false)
            .await
            .unwrap();
        // Let the node's inbox task keep up, as it would with a real broker in between.
        tokio::task::yield_now().await;
        if server.metrics().slow_consumer_closes() > 0 {
            if let Some(tx) = gave_up.take() {
                let _ = tx.send(());
            }
        }
    }
    eventually(|| async { !h.is_online(&id("lazy")).await.unwrap().value }).await;
    assert_eq!(server.metrics().slow_consumer_closes(), 1);
    let growth = support::rss_bytes().saturating_sub(rss_before);
    assert!(growth < 48 * 1024 * 1024, "RSS grew by {growth} bytes");
    // Once the client reads again it drains what the kernel buffered, then sees 4008.
    drop(gave_up);
    assert_eq!(reader.await.unwrap(), 4008);
    server.shutdown().await.unwrap();
}
