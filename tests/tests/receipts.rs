//! Receipts at scale (`docs/design.md` section 4): one receipt frame per message and status for the
//! receivers a node settled together, acks gathered, so a message to 10,000 receivers costs
//! its sender a handful of frames and never closes it with 4008.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::{id, start, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_10000_receivers_costs_the_sender_a_few_frames() {
    const CONNECTED: usize = 40;
    const ALL: usize = 10_000;
    let server = start(|c| {
        // Small enough that one frame per receiver would overflow it at once.
        c.limits.outbound_queue = 256;
    })
    .await;
    let h = server.helper();
    let mut sender = Client::connect(&h, "sender", 1).await;
    let mut receivers = Vec::new();
    for i in 0..CONNECTED {
        receivers.push(Client::connect(&h, &format!("r{i}"), 1).await);
    }
    let to: Vec<_> = (0..ALL).map(|i| id(&format!("r{i}"))).collect();
    let report = h
        .send_message(&id("sender"), &to, &json!("to everyone"), true)
        .await
        .unwrap();

    let mut frames = [sender.next_json().await, sender.next_json().await];
    frames.sort_by_key(|f| f["status"].as_str().unwrap().to_owned());
    assert_eq!(frames[0]["status"], "delivered");
    assert_eq!(frames[0]["to"].as_array().unwrap().len(), CONNECTED);
    assert_eq!(frames[1]["status"], "offline");
    assert_eq!(frames[1]["to"].as_array().unwrap().len(), ALL - CONNECTED);

    // Every connected receiver acks; the acks come back in a few gathered frames.
    for r in &mut receivers {
        let m = r.next_json().await;
        assert_eq!(m["id"], report.id.as_str());
        r.send_json(json!({"type": "ack", "id": report.id.as_str()}))
            .await;
    }
    let mut acked = 0;
    let mut ack_frames = 0;
    while acked < CONNECTED {
        let f = sender.next_json().await;
        assert_eq!(f["status"], "acked", "{f}");
        acked += f["to"].as_array().unwrap().len();
        ack_frames += 1;
    }
    assert_eq!(acked, CONNECTED);
    assert!(
        ack_frames <= 10,
        "{ack_frames} acked frames for {CONNECTED} acks"
    );
    sender.expect_silence(Duration::from_millis(300)).await;
    // The sender is still connected and served.
    sender.send_json(json!({"type": "ping"})).await;
    assert_eq!(sender.next_json().await, json!({"type": "pong"}));
    assert_eq!(server.metrics().slow_consumer_closes(), 0);
    assert_eq!(server.metrics().receipt_frames(), 2 + ack_frames as u64);
    server.shutdown().await.unwrap();
}
