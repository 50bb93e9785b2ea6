//! The loss probe (`docs/design.md` section 15) on the embedded backbone: one node with the
//! memory broker, presence and offline inbox, the way `impush` runs with no configuration.
//! 200 receivers whose links are reset or frozen at random moments while 20 msgs/s flow to
//! each: every accepted message reaches every receiver exactly once by id, in order. (The
//! other backbones run the same parts in the cluster suite, `cases/device.rs`; a `kill -9`
//! variant has no meaning here: the memory inbox dies with its only process, as the README's
//! guarantees table says.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use impush_core::{config::Secret, ClientId};
use impush_server::{Config, ImServer};
use impush_tests::cluster::{
    clients::wait_online,
    harness::API_KEY,
    loss::{self, RECEIVERS, RUN},
    probe::Probe,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_probe_links_reset_and_frozen_on_the_memory_backbone() {
    let mut c = Config::default();
    c.node.listen = "127.0.0.1:0".parse().unwrap();
    c.auth.secret = Some(Secret::new("loss-probe-secret"));
    c.auth.api_key = Some(Secret::new(API_KEY));
    c.offline.enabled = true;
    c.limits.ping_interval = Duration::from_secs(1);
    c.limits.pong_timeout = Duration::from_secs(1);
    let server = ImServer::start(c).await.unwrap();
    let h = server.helper();
    let receivers: Vec<ClientId> = (0..RECEIVERS)
        .map(|i| format!("rx{i}").parse().unwrap())
        .collect();
    let probes: Vec<Probe> = receivers
        .iter()
        .map(|c| Probe::start(h.clone(), c.clone()))
        .collect();
    wait_online(&h, &receivers).await;

    let chaos = loss::chaos(&probes, RUN);
    let send = format!("http://{}/api/v1/messages", server.local_addr());
    let sent = loss::send_to_all(&send, &receivers, RUN, |_| {}).await;
    chaos.await.unwrap();
    loss::check_every_receiver(&probes, &sent, true, "memory").await;
}
