//! The cluster suite (`cluster/cases.rs`) over RabbitMQ alone: real `impush` processes,
//! RabbitMQ as the broker, presence kept by the nodes (`[presence] kind = "cluster"`) and the
//! offline inbox in each node's file: no second piece of infrastructure. The shared broker is
//! `IMPUSH_TEST_RABBITMQ_URL` (`scripts/brokers.sh up`); fault cases start a private RabbitMQ
//! (`scripts/brokers.sh` with a state dir and ports of their own) that they may stop, freeze and
//! restart (its data stays across a restart, as with a real RabbitMQ). Without them the cases
//! print SKIPPED (or fail when `IMPUSH_REQUIRE_BROKERS` is set, as in CI).
//!
//! Besides the shared suite: RabbitMQ-specific cases (inbox retention while a node is down,
//! also across a RabbitMQ restart; traffic through a RabbitMQ restart; the broker itself
//! through stop and start).

#![allow(clippy::unwrap_used)]

mod cluster;

use std::{
    cell::RefCell,
    collections::HashSet,
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cluster::harness::{
    client_on, connect, eventually, eventually_within, free_addrs, post, receipts_for, send_n,
    status, Backend, Cluster, PrivateBroker, Spec, WAIT,
};
use futures_util::StreamExt;
use impush_core::{Broker, SubscribeMode};
use serde_json::json;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/brokers.sh");

/// `[broker]` and `[presence]` for the RabbitMQ at `url`.
fn sections(url: &str) -> String {
    // Persistent messages: the RabbitMQ restart cases assert that every message the API
    // accepted arrives, also those waiting in a durable inbox queue across the restart.
    format!(
        "[broker]\nkind = \"rabbitmq\"\nurl = \"{url}\"\npublish_timeout = \"1s\"\n\
         connect_timeout = \"2s\"\nqueue_expires = \"10m\"\npersistent = true\n\
         [presence]\nkind = \"cluster\"\nquery_timeout = \"1s\"\n"
    )
}

fn rabbitmq() -> Backend {
    Backend {
        name: "rabbitmq",
        sections,
        shared_url: || impush_tests::env_or_skip("IMPUSH_TEST_RABBITMQ_URL"),
        private: PrivateRabbitMq::start_boxed,
        // No Redis needed: each node keeps its clients' inboxes in a local file.
        offline: "kind = \"disk\"\npath = \"{dir}/offline-{node}.redb\"",
    }
}

cluster_suite!(rabbitmq);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_gives_partial_answers_then_goes_offline() {
    cluster::cases::silent_node_gives_partial_answers_then_goes_offline(&rabbitmq()).await;
}

// ---------------------------------------------------------------------------------------------
// Private instances
// ---------------------------------------------------------------------------------------------

/// A RabbitMQ of one test's own: `scripts/brokers.sh` with a private state dir and ports.
struct PrivateRabbitMq {
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    frozen: bool,
}

impl PrivateRabbitMq {
    /// Starts one (~7 s), or `None` when RabbitMQ is not installed (SKIPPED; a failure when
    /// `IMPUSH_REQUIRE_BROKERS` is set).
    fn start() -> Option<Self> {
        let installed = std::path::Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists();
        if !installed {
            assert!(
                std::env::var_os("IMPUSH_REQUIRE_BROKERS").is_none(),
                "RabbitMQ must be installed (scripts/brokers.sh install rabbitmq)"
            );
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: RabbitMQ is not installed");
            return None;
        }
        let ports = free_addrs(3);
        let r = PrivateRabbitMq {
            dir: std::env::temp_dir().join(format!("impush-rmq-{}", impush_tests::unique_ns())),
            port: ports[0].port(),
            dist_port: ports[1].port(),
            epmd_port: ports[2].port(),
            frozen: false,
        };
        r.script("up");
        Some(r)
    }

    fn script(&self, cmd: &str) {
        let out = Command::new(SCRIPT)
            .args([cmd, "rabbitmq"])
            .env("IMPUSH_BROKERS_DIR", &self.dir)
            .env("IMPUSH_RABBITMQ_PORT", self.port.to_string())
            .env("IMPUSH_RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("IMPUSH_RABBITMQ_EPMD_PORT", self.epmd_port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "brokers.sh {cmd} rabbitmq: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops it; its data (durable queues, persistent messages) stays on disk.
    fn stop(&mut self) {
        self.resume();
        self.script("down");
    }

    /// Starts it again after [`PrivateRabbitMq::stop`], with its data (`restart` keeps it;
    /// `up` would start empty).
    fn start_again(&mut self) {
        self.script("restart");
    }

    /// Stops and starts it, keeping its data.
    fn restart(&mut self) {
        self.resume();
        self.script("restart");
    }

    fn signal(&self, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.join("rabbitmq/rabbitmq.pid")).unwrap();
        let ok = Command::new("kill")
            .args([sig, pid.trim()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} rabbitmq");
    }

    fn stall(&mut self) {
        self.signal("-STOP");
        self.frozen = true;
    }

    fn resume(&mut self) {
        if std::mem::take(&mut self.frozen) {
            self.signal("-CONT");
        }
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        self.resume();
        let _ = Command::new(SCRIPT)
            .args(["down", "rabbitmq"])
            .env("IMPUSH_BROKERS_DIR", &self.dir)
            .env("IMPUSH_RABBITMQ_PORT", self.port.to_string())
            .env("IMPUSH_RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("IMPUSH_RABBITMQ_EPMD_PORT", self.epmd_port.to_string())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PrivateRabbitMq {
    fn start_boxed() -> Option<Box<dyn PrivateBroker>> {
        Some(Box::new(Self::start()?))
    }
}

impl PrivateBroker for PrivateRabbitMq {
    fn url(&self) -> String {
        PrivateRabbitMq::url(self)
    }
    fn stop(&mut self) {
        PrivateRabbitMq::stop(self);
    }
    fn start(&mut self) {
        self.start_again();
    }
    fn stall(&mut self) {
        PrivateRabbitMq::stall(self);
    }
    fn resume(&mut self) {
        PrivateRabbitMq::resume(self);
    }
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ-specific cases
// ---------------------------------------------------------------------------------------------

/// A node's inbox is a durable queue: messages for a node that is down wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_waits_for_its_node_while_it_is_down() {
    cluster::cases::inbox_waits_for_its_node_across_a_kill_and_restart(&rabbitmq()).await;
}

/// The same across a RabbitMQ restart: messages for a node that is down wait in its durable
/// inbox queue as persistent messages, RabbitMQ restarts (keeping its data), and the node,
/// once back, still gets every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_survives_a_rabbitmq_restart_while_its_node_is_down() {
    let backend = rabbitmq();
    let Some(mut rmq) = PrivateRabbitMq::start() else {
        return;
    };
    let url = rmq.url();
    let mut cluster = Cluster::start(&backend, &url, &Spec::new(2, "10s"));
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let mut wa = connect(&h, &a).await;
    let _wb = connect(&h, &b).await;
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;

    cluster.kill9(1);
    let ids = send_n(&cluster, 0, &a, &b, 20).await;
    rmq.restart();
    cluster.assert_running();
    let ready = cluster.http(0) + "/readyz";
    eventually("n1 ready again", || {
        let r = ready.clone();
        async move { status(r, None).await == 200 }
    })
    .await;
    cluster.restart(1);
    let statuses = receipts_for(&mut wa, &ids).await;
    assert!(statuses.iter().all(|s| s == "offline"), "{statuses:?}");
    cluster.assert_running();
    drop(cluster); // the nodes go before their broker
}

/// Traffic through a RabbitMQ restart: sends fail fast with 503 while it is down (never hang),
/// no node exits, no socket closes, and once it is back every node is ready again and delivery
/// resumes, with no message delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_a_rabbitmq_restart() {
    let backend = rabbitmq();
    let Some(mut rmq) = PrivateRabbitMq::start() else {
        return;
    };
    let url = rmq.url();
    let mut cluster = Cluster::start(&backend, &url, &Spec::new(2, "5s"));
    let h = cluster.helper().await;
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let _wa = connect(&h, &a).await;
    let wb = connect(&h, &b).await;
    eventually("both online", || async {
        h.is_online_many(&[a.clone(), b.clone()])
            .await
            .is_ok_and(|v| v == vec![true, true])
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn(read_data(wb, seen.clone()));

    let url = cluster.http(0) + "/api/v1/messages";
    let n = std::cell::Cell::new(0u64);
    let accepted = RefCell::new(Vec::new());
    // One send, numbered; returns its status and how long it took.
    let send = || {
        n.set(n.get() + 1);
        let i = n.get();
        let body = json!({"from": a.as_str(), "to": [b.as_str()], "data": i});
        let (url, accepted) = (url.clone(), &accepted);
        async move {
            let t = Instant::now();
            let status = post(url, body).await.0;
            if status == 200 {
                accepted.borrow_mut().push(i);
            }
            (status, t.elapsed())
        }
    };
    for _ in 0..20 {
        assert_eq!(send().await.0, 200);
    }
    // Stop it in the background and keep sending meanwhile.
    let stopping = std::thread::spawn(move || {
        rmq.stop();
        rmq
    });
    let (mut refused, mut slowest) = (0, Duration::ZERO);
    let deadline = Instant::now() + WAIT;
    while refused < 5 {
        assert!(
            Instant::now() < deadline,
            "no send refused while RabbitMQ stopped"
        );
        let (status, took) = send().await;
        match status {
            200 => {}
            503 => refused += 1,
            other => panic!("send answered {other}"),
        }
        slowest = slowest.max(took);
    }
    let mut rmq = tokio::task::block_in_place(|| stopping.join().unwrap());
    for _ in 0..5 {
        let (status, took) = send().await;
        assert_eq!(status, 503, "send while RabbitMQ is down");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_secs(3),
        "a send took {slowest:?} while RabbitMQ was going down"
    );
    tokio::task::block_in_place(|| rmq.start_again());
    for i in 0..2 {
        let ready = cluster.http(i) + "/readyz";
        eventually("readyz back to 200", || {
            let r = ready.clone();
            async move { status(r, None).await == 200 }
        })
        .await;
    }
    cluster.assert_running();
    for _ in 0..20 {
        assert_eq!(send().await.0, 200, "send after the restart");
    }
    // Every send the API accepted was confirmed by RabbitMQ, so it reaches the receiver, also
    // those waiting in n2's durable inbox queue across the restart (persistent messages).
    let accepted = accepted.into_inner();
    eventually_within(
        "every accepted message arrives",
        Duration::from_secs(20),
        || async {
            let seen = seen.lock().unwrap();
            let got: HashSet<u64> = seen.iter().map(|(_, d)| *d).collect();
            accepted.iter().all(|i| got.contains(i))
        },
    )
    .await;
    assert!(!reader.is_finished(), "the receiver's socket closed");
    reader.abort();
    let seen = seen.lock().unwrap().clone();
    let ids: HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), seen.len(), "a message was delivered twice");
    cluster.assert_running();
    eprintln!(
        "[rabbitmq] {} sends accepted, {refused} refused while stopping (slowest {slowest:?}), \
         {} delivered",
        accepted.len(),
        seen.len()
    );
    drop(cluster);
    drop(rmq);
}

/// Reads message frames until the socket closes, recording (id, data) of each.
async fn read_data(mut ws: cluster::harness::Ws, seen: Arc<Mutex<Vec<(String, u64)>>>) {
    use tokio_tungstenite::tungstenite::Message;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "message" {
                let id = v["id"].as_str().unwrap().to_owned();
                seen.lock().unwrap().push((id, v["data"].as_u64().unwrap()));
            }
        }
    }
}

/// The broker itself (through the registry, as the server builds it) across a stop and a
/// start of RabbitMQ: calls fail promptly while it is down; once it is back (with its data)
/// the broker has reconnected by itself, and by the time `ping` succeeds its subscriptions
/// consume again: the fanout one reports the gap (`Lagged`) and gets what is published next,
/// the queue member carries on, and a memberless group's persistent messages are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_resumes_after_rabbitmq_restarts() {
    async fn recv(
        sub: &mut impush_core::Subscription,
    ) -> impush_core::Result<impush_core::Delivery> {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(item)) => item,
            other => panic!("expected an item, got {other:?}"),
        }
    }
    let Some(mut rmq) = PrivateRabbitMq::start() else {
        return;
    };
    let section = impush_brokers::Section::new("rabbitmq")
        .set("url", rmq.url())
        .unwrap()
        .set("publish_timeout", "1s")
        .unwrap()
        .set("persistent", true)
        .unwrap();
    let ctx = impush_brokers::BackendContext::new(&section);
    let b = impush_brokers::Backends::with_defaults()
        .connect_broker(&section, &ctx)
        .await
        .unwrap();
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let group = |g: &str| SubscribeMode::Queue {
        group: format!("{ns}-{g}"),
    };
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = b.subscribe(&topic, group("live")).await.unwrap();
    drop(b.subscribe(&topic, group("idle")).await.unwrap()); // memberless from now on
    for m in ["before-1", "before-2"] {
        b.publish(&topic, m.into()).await.unwrap();
    }
    for m in ["before-1", "before-2"] {
        assert_eq!(recv(&mut fan).await.unwrap().payload(), m);
        assert_eq!(recv(&mut member).await.unwrap().ack(), m);
    }

    tokio::task::block_in_place(|| rmq.stop());
    for _ in 0..3 {
        let t = Instant::now();
        let ping = b.ping().await;
        assert!(ping.as_ref().is_err_and(|e| e.is_transient()), "{ping:?}");
        let publish = b.publish(&topic, "lost".into()).await;
        assert!(
            publish.as_ref().is_err_and(|e| e.is_transient()),
            "{publish:?}"
        );
        let sub = b.subscribe(&topic, group("late")).await;
        assert!(
            sub.as_ref().is_err_and(|e| e.is_transient()),
            "subscribe while down"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "calls took {:?}",
            t.elapsed()
        );
    }

    tokio::task::block_in_place(|| rmq.start_again());
    eventually_within(
        "ping after the restart",
        Duration::from_secs(20),
        || async { b.ping().await.is_ok() },
    )
    .await;
    // No wait: ping succeeding means the subscriptions consume again.
    b.publish(&topic, "after".into()).await.unwrap();
    let gap = recv(&mut fan).await;
    assert!(
        matches!(gap, Err(impush_core::Error::Lagged { .. })),
        "the fanout subscriber is told about the gap first: {gap:?}"
    );
    assert_eq!(recv(&mut fan).await.unwrap().payload(), "after");
    assert_eq!(recv(&mut member).await.unwrap().ack(), "after");
    let mut idle = b.subscribe(&topic, group("idle")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv(&mut idle).await.unwrap().ack());
    }
    got.sort();
    assert_eq!(
        got,
        ["after", "before-1", "before-2"],
        "persistent, durable"
    );
    b.shutdown().await.unwrap();
    let ended = tokio::time::timeout(WAIT, fan.next()).await.unwrap();
    assert!(ended.is_none(), "shutdown ends subscriptions: {ended:?}");
}

/// A RabbitMQ that stops answering (SIGSTOP) for longer than two heartbeats: the broker drops
/// the silent connection (calls fail promptly meanwhile), connects again once RabbitMQ thaws,
/// and the subscriptions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_recovers_from_a_stall_longer_than_the_heartbeat() {
    async fn next(
        sub: &mut impush_core::Subscription,
    ) -> Option<impush_core::Result<impush_core::Delivery>> {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("an item in time")
    }
    let Some(mut rmq) = PrivateRabbitMq::start() else {
        return;
    };
    let section = impush_brokers::Section::new("rabbitmq")
        .set("url", rmq.url())
        .unwrap()
        .set("publish_timeout", "1s")
        .unwrap()
        .set("connect_timeout", "1s")
        .unwrap()
        .set("heartbeat", "1s")
        .unwrap();
    let ctx = impush_brokers::BackendContext::new(&section);
    let b = impush_brokers::Backends::with_defaults()
        .connect_broker(&section, &ctx)
        .await
        .unwrap();
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.all");
    let group = SubscribeMode::Queue {
        group: format!("{ns}-n1"),
    };
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = b.subscribe(&topic, group).await.unwrap();

    rmq.stall();
    // Silent for more than two heartbeats: lapin gives the connection up, and the broker says
    // so promptly.
    eventually_within(
        "ping fails while frozen",
        Duration::from_secs(10),
        || async {
            let t = Instant::now();
            let failed = b.ping().await.is_err();
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "ping took {:?}",
                t.elapsed()
            );
            failed
        },
    )
    .await;
    let t = Instant::now();
    assert!(b.publish(&topic, "frozen".into()).await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "publish took {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault itself: frozen a while longer
    rmq.resume();

    eventually_within("ping after the thaw", Duration::from_secs(20), || async {
        b.ping().await.is_ok()
    })
    .await;
    b.publish(&topic, "thawed".into()).await.unwrap();
    // The fanout subscriber hears of the gap, then gets what comes next.
    let mut got = Vec::new();
    while got.last().map(Vec::as_slice) != Some(b"thawed".as_slice()) {
        match next(&mut fan).await {
            Some(Ok(d)) => got.push(d.payload().to_vec()),
            Some(Err(e)) => assert!(matches!(e, impush_core::Error::Lagged { .. }), "{e:?}"),
            None => panic!("the fanout subscription ended"),
        }
    }
    // The queue member gets it too (and maybe "frozen", if RabbitMQ had taken it in).
    loop {
        let d = next(&mut member).await.expect("open").expect("a delivery");
        if d.ack() == "thawed" {
            break;
        }
    }
    b.shutdown().await.unwrap();
}
