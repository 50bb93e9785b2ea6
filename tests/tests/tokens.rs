//! Connect tokens across a node restart (`docs/design.md` section 5): a node's nonce memory dies
//! with it, so it refuses every token issued before it started; a URL used once stays refused
//! after its node restarts, within the token's lifetime.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::{id, refused_status, start};

/// The restarted node's `/ws` URL with the token of `url` (issued by the node before it).
fn same_token_at(url: &str, server: &impush_server::ImServer) -> String {
    let (_, token) = url.split_once("?token=").unwrap();
    format!("ws://{}/ws?token={token}", server.local_addr())
}

#[tokio::test]
async fn a_used_url_stays_refused_after_its_node_restarts() {
    let ttl = |c: &mut impush_server::Config| c.auth.token_ttl = Duration::from_secs(300);
    let first = start(ttl).await;
    let used = first
        .helper()
        .prepare_connect(&id("alice"), Value::Null)
        .unwrap()
        .url;
    let unused = first
        .helper()
        .prepare_connect(&id("bob"), Value::Null)
        .unwrap()
        .url;
    let (ws, _) = tokio_tungstenite::connect_async(used.as_str())
        .await
        .unwrap();
    let (status, body) = refused_status(&used).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_reused"))
    );
    drop(ws);
    first.shutdown().await.unwrap();

    // The same node id and secret, restarted: its nonce memory is empty.
    let second = start(ttl).await;
    let replay = same_token_at(&used, &second);
    let (status, body) = refused_status(&replay).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_stale")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("ask for a new"),
        "{body}"
    );
    // A URL issued before the restart and never used is refused too: the node cannot tell it
    // from a used one. The client asks for a new URL, which works.
    let (status, body) = refused_status(&same_token_at(&unused, &second)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("token_stale")));
    let fresh = second
        .helper()
        .prepare_connect(&id("alice"), Value::Null)
        .unwrap()
        .url;
    let (_ws, _) = tokio_tungstenite::connect_async(fresh.as_str())
        .await
        .unwrap();
    second.shutdown().await.unwrap();
}
