//! Backend kinds registered in code, end to end: a node and a helper built from the same
//! registry and configuration reach each other through a custom broker kind; a helper whose
//! registry lacks the kind says so in one line; secrets stay out of `Debug`.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::sync::{Arc, Mutex};

use impush_brokers::{BackendContext, Backends, Section};
use impush_core::{config::Secret, MemoryBroker, MemoryPresenceStore};
use impush_helper::{HelperConfig, ImHelper};
use impush_server::ImServer;
use serde::Deserialize;
use serde_json::json;
use support::{id, Client};

/// The options of the test's custom kinds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedConfig {
    label: String,
}

/// Kinds `shared` (broker and presence): process-wide memory backends, so a node and a helper
/// built separately from one registry meet, as they would over a real broker. Records what each
/// factory was given.
fn registry(seen: Arc<Mutex<Vec<String>>>) -> Backends {
    let broker = Arc::new(MemoryBroker::default());
    let presence = Arc::new(MemoryPresenceStore::new());
    let mut b = Backends::with_defaults();
    let log = seen.clone();
    b.register_broker("shared", move |c: SharedConfig, ctx: BackendContext| {
        log.lock().unwrap().push(format!(
            "broker {} prefix={} node={:?}",
            c.label, ctx.prefix, ctx.node
        ));
        let broker = broker.clone();
        async move { Ok(broker) }
    });
    b.register_presence("shared", move |c: SharedConfig, ctx: BackendContext| {
        seen.lock().unwrap().push(format!(
            "presence {} broker_given={}",
            c.label,
            ctx.broker.is_some()
        ));
        let presence = presence.clone();
        async move { Ok(presence) }
    });
    b
}

fn sections() -> (Section, Section) {
    let broker = Section::new("shared")
        .with_prefix("app")
        .set("label", "b")
        .unwrap();
    let presence = Section::new("shared").set("label", "p").unwrap();
    (broker, presence)
}

#[tokio::test]
async fn node_and_helper_share_a_custom_kind() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backends = registry(seen.clone());
    let (broker, presence) = sections();
    let mut config = support::config();
    config.broker = broker;
    config.presence = presence;
    let server = ImServer::builder(config.clone())
        .backends(backends.clone())
        .start()
        .await
        .unwrap();

    let mut helper_config: HelperConfig = config.helper_config();
    helper_config.cluster.nodes = vec![impush_core::NodeEntry {
        id: config.node.id.clone(),
        url: format!("ws://{}", server.local_addr()),
    }];
    let helper = ImHelper::builder(&helper_config)
        .backends(backends)
        .connect()
        .await
        .unwrap();

    let mut alice = Client::connect(&helper, "alice", 1).await;
    helper
        .send_message(&id("bob"), &[id("alice")], &json!({"via": "custom"}), false)
        .await
        .unwrap();
    let frame = alice.next_json().await;
    assert_eq!(frame["data"], json!({"via": "custom"}));
    assert_eq!(helper.online_clients().await.unwrap(), vec![id("alice")]);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "broker b prefix=app node=Some(\"n1\")".to_owned(),
            "presence p broker_given=true".to_owned(),
            "broker b prefix=app node=None".to_owned(),
            "presence p broker_given=true".to_owned(),
        ]
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_helper_without_the_registration_names_the_kind() {
    let (broker, presence) = sections();
    let mut config = support::config();
    config.broker = broker;
    config.presence = presence;
    let mut helper_config = config.helper_config();
    helper_config.cluster.nodes = vec![impush_core::NodeEntry {
        id: config.node.id.clone(),
        url: "ws://127.0.0.1:1".into(),
    }];
    let err = ImHelper::connect(&helper_config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("config key `broker.kind`: unknown broker kind `shared`"),
        "{err}"
    );
    assert!(err.contains("memory") && !err.contains('\n'), "{err}");

    // The node refuses the same way before binding anything.
    let err = ImServer::start(config).await.unwrap_err().to_string();
    assert!(err.contains("unknown broker kind `shared`"), "{err}");
}

#[tokio::test]
async fn a_custom_kind_refuses_unknown_options() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut config = support::config();
    config.broker = Section::new("shared")
        .set("label", "b")
        .unwrap()
        .set("lable", "typo")
        .unwrap();
    let err = ImServer::builder(config)
        .backends(registry(seen.clone()))
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("config key `broker.lable`: unknown field"),
        "{err}"
    );
    assert!(seen.lock().unwrap().is_empty(), "factory ran: {seen:?}");
}

#[tokio::test]
async fn secrets_stay_out_of_debug() {
    let mut config = support::config();
    config.auth.secret = Some(Secret::new("the-signing-secret"));
    config.auth.api_key = Some(Secret::new("the-api-key"));
    config.broker = Section::new("memory").set("fanout_capacity", 8).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("the-signing-secret") && !shown.contains("the-api-key"));
    let server = ImServer::start(config).await.unwrap();
    let shown = format!("{server:?}");
    assert!(
        !shown.contains("the-signing-secret") && !shown.contains("the-api-key"),
        "{shown}"
    );
    assert_eq!(server.api_key(), "the-api-key");

    let generated = ImServer::start({
        let mut c = support::config();
        c.auth.api_key = None;
        c
    })
    .await
    .unwrap();
    let key = generated.generated().api_key.clone().unwrap();
    assert!(!format!("{generated:?}").contains(key.expose()));
    generated.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
