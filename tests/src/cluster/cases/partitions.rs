//! Network partitions made with a [`FaultProxy`] (`docs/design.md` sections 10, 13 and 15): a
//! node cut from the broker for two leases and healed, the same with only its writes lost (a
//! one-way partition), the node whose API takes a send cut from the broker, and a client's
//! link frozen.
//!
//! How each cut is made, and why:
//! - *both ways* pauses the link: nothing crosses, and what waited crosses after the heal, as
//!   over a TCP connection that survives a short partition. The node's stale writes (a
//!   heartbeat, an ack, a publish it already gave up on) land late: that is the hard part.
//! - *writes lost* blackholes node -> broker while broker -> node passes. A TCP stream that
//!   lost bytes cannot carry on, so the heal resets the node's broker connections (as TCP
//!   would end them in the end) and lets new ones through.
//!
//! The proxy comes from [`Backend::proxied_broker`]: in front of the shared broker, or for
//! Kafka (whose clients connect where the broker advertises itself) in front of a private
//! broker that advertises it, acting on the cut node's connections only.

#![allow(clippy::unwrap_used)] // a case is a test body: a failed step fails the test

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use impush_core::{ChannelName, ClientId, Event};
use impush_helper::IdempotencyKey;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    cluster::{
        clients::{
            client_on, clients_on, connect, connect_via, eventually, id, next_json, wait_event,
            wait_online, Ws,
        },
        harness::{Backend, Cluster, Spec, WAIT},
        http::{get_json, post_keyed, send_n, status, Flow, Sent},
        ledger::Ledger,
        probe::{Control, Probe},
    },
    proxy::{Direction, FaultProxy},
    support::eventually_within,
};

/// `cluster.node_lease` of the broker cases; each cut lasts two of them.
const LEASE: Duration = Duration::from_secs(2);

/// How a node's broker link is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Nothing crosses either way until the heal (paused).
    BothWays,
    /// What the node writes is lost (blackholed); it still hears the broker.
    WritesLost,
}

/// Node 2 is cut from the broker (both ways) for two leases, then the link heals, while a
/// sender keeps sending through node 1 to clients on both nodes (offline inbox on). The
/// cluster reaps node 2 meanwhile (its clients go offline; node 2 says 503 on `/readyz`); a
/// client that left node 2 during the cut stays gone (no ghost online); after the heal node 2
/// re-announces the clients it kept, events and queries agree with the sockets and stay so,
/// channel delivery reaches node 2 again, and every message the API accepted reaches every
/// receiver.
///
/// What it found: a heartbeat node 2 sent during the cut landed after the heal and registered
/// it again, so node 2 never took itself for reaped and its kept clients stayed offline in
/// the events (the node now re-registers after any whole lease without a heartbeat); and an
/// inbox entry whose read timed out in the cut stayed pending on node 2's own Redis consumer,
/// where nothing claims it (the reader now reads its own pending entries after a failed read).
pub async fn node_cut_from_the_broker_then_healed(backend: &Backend) {
    node_partition(backend, Cut::BothWays).await;
}

/// [`node_cut_from_the_broker_then_healed`] with a one-way partition: node 2 hears the broker
/// but what it writes (heartbeats, acks, publishes, presence writes) is lost. The same must
/// hold: to the cluster it is a node that stopped renewing its lease, whatever it still hears.
pub async fn node_whose_broker_writes_are_lost_then_healed(backend: &Backend) {
    node_partition(backend, Cut::WritesLost).await;
}

async fn node_partition(backend: &Backend, cut: Cut) {
    let Some(link) = backend.proxied_broker(1).await else {
        return;
    };
    let proxy = &link.proxy;
    let spec = link.spec(Spec::new(2, "2s").with_offline());
    let mut cluster = Cluster::start(backend, &link.url, &spec);
    let h = cluster.helper().await;
    let ledger = Ledger::start(&h).await;
    let a = client_on(&h, 0, "a");
    let mut on_n2 = clients_on(&h, 1, "b", 3);
    let gone = on_n2.pop().unwrap();
    let receivers = vec![a.clone(), on_n2[0].clone(), on_n2[1].clone()];
    let probes: Vec<Probe> = receivers
        .iter()
        .map(|c| Probe::start(h.clone(), c.clone()))
        .collect();
    let mut w_gone = connect(&h, &gone).await;
    let everyone = [receivers.clone(), vec![gone.clone()]].concat();
    wait_online(&h, &everyone).await;
    agree(&h, &ledger, &everyone, &[true; 4], WAIT, "before the cut").await;
    let room: ChannelName = "cut".parse().unwrap();
    h.join_channel(&room, &[a.clone(), on_n2[0].clone()])
        .await
        .unwrap();

    let started = Instant::now();
    let flow = Flow::start(
        cluster.http(0) + "/api/v1/messages",
        &id("sender"),
        &receivers,
        &format!("{}-flow", cluster.prefix()),
        Duration::from_millis(50),
    );
    eventually("the first sends reach both nodes' clients", || {
        let ok = sent_ok(&flow.sent()).len() >= 5 && arrived(&probes, &sent_ok(&flow.sent()));
        async move { ok }
    })
    .await;

    let cut_at = Instant::now();
    match cut {
        Cut::BothWays => proxy.pause(Direction::Both),
        Cut::WritesLost => proxy.blackhole(Direction::ToUpstream),
    }
    // A client leaves node 2 while node 2 cannot tell anyone.
    w_gone.close(None).await.unwrap();
    // Whether node 2's /readyz says 503 at some point of the cut (asserted at the end, after
    // what the business sees).
    let unready = tokio::spawn({
        let ready = cluster.http(1) + "/readyz";
        async move {
            while Instant::now() < cut_at + 2 * LEASE {
                if status(ready.clone(), None).await == 503 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    });
    // Node 2 missed its lease: the cluster reaps it, and the business sees its clients go.
    agree(
        &h,
        &ledger,
        &everyone,
        &[true, false, false, false],
        LEASE + WAIT,
        "during the cut",
    )
    .await;
    let reaped = cut_at.elapsed();
    tokio::time::sleep_until(cut_at + 2 * LEASE).await; // the fault itself: two leases

    heal(proxy, cut).await;
    let healed_at = Instant::now();
    let truth = [true, true, true, false];
    agree(&h, &ledger, &everyone, &truth, WAIT, "after the heal").await;
    let agreed = healed_at.elapsed();
    // And they stay so: nothing flips back a heartbeat or two later.
    let until = Instant::now() + LEASE;
    while Instant::now() < until {
        assert_eq!(ledger.online(&everyone), truth, "events after agreeing");
        let asked = h.is_online_many(&everyone).await.unwrap();
        assert_eq!(asked.value, truth, "queries after agreeing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let offline_a: Vec<Event> = ledger
        .events_of(&a, started)
        .into_iter()
        .filter(|e| matches!(e, Event::Offline { .. }))
        .collect();
    assert!(offline_a.is_empty(), "a never left node 1: {offline_a:?}");
    let ghost: Vec<Event> = ledger
        .events_of(&gone, cut_at)
        .into_iter()
        .filter(|e| matches!(e, Event::Online { .. }))
        .collect();
    assert!(
        ghost.is_empty(),
        "the client that left came back: {ghost:?}"
    );

    // Node 2 is back in its channel: members and delivery agree.
    eventually("channel members after the heal", || async {
        h.channel_members(&room)
            .await
            .is_ok_and(|m| m.len() == 2 && m.is_complete())
    })
    .await;
    h.send_channel_message(&a, &room, &"after the heal")
        .await
        .unwrap();
    eventually("channel delivery to node 2 after the heal", || {
        let seen = probes[1].seen();
        let ok = seen
            .streams
            .get("cut")
            .is_some_and(|s| s.iter().any(|(_, d)| d == "after the heal"));
        async move { ok }
    })
    .await;

    let sent = flow.stop().await;
    let accepted = sent_ok(&sent);
    let said_unready = unready.await.unwrap();
    let refused = sent.len() - accepted.len();
    all_arrive(&probes, &sent, &accepted).await;
    let duplicates: usize = probes.iter().map(|p| p.seen().duplicates).sum();
    for p in &probes {
        p.control(Control::Stop);
    }
    cluster.assert_running();
    assert!(
        said_unready,
        "node 2's /readyz never said 503 while it could not reach the broker"
    );
    eprintln!(
        "[{}] node 2 cut ({cut:?}) for {:?}: its clients offline {reaped:?} after the cut; \
         events and queries agree {agreed:?} after the heal; {} sends accepted ({refused} \
         refused), none lost, {duplicates} duplicate frames dropped by id",
        backend.name(),
        2 * LEASE,
        accepted.len(),
    );
}

/// Node 1, whose API takes the sends, is cut from the broker (both ways) for two leases while
/// three senders keep sending through it, each send with an `Idempotency-Key`, to a client on
/// each of the three nodes (so one send is published once per node).
///
/// Every send is answered 200 or 503 within the backend's refusal bound (its `[broker]`
/// timeouts plus slack), never left hanging. A 503 does not say that nobody got the message: a
/// send cut between its per-node publishes reached some receivers, and over a link that was
/// only stalled a publish the node gave up on may still land once the link heals (both are
/// counted and printed). What a 503 promises is that a retry with the same key is safe, and
/// that is what is asserted: after the heal every refused send is retried through node 1 with
/// its key and answered 200 with the id the key names, and then every receiver has every
/// message exactly once: each accepted or retried id, no frame repeated.
///
/// What it found over NATS (a store per node): a node handed a client's inbox back to node 1
/// as soon as it saw node 1 live, while the node that had taken node 1's inbox over still
/// read it and sent the messages back to the first node, whose duplicate check dropped them.
/// Handing over now waits until the view has been settled for two leases.
pub async fn api_node_cut_from_the_broker_answers_503_and_retries_complete(backend: &Backend) {
    let Some(link) = backend.proxied_broker(0).await else {
        return;
    };
    let proxy = &link.proxy;
    let spec = link.spec(Spec::new(3, "2s").with_offline());
    let mut cluster = Cluster::start(backend, &link.url, &spec);
    let h = cluster.helper().await;
    let receivers: Vec<ClientId> = (0..3).map(|i| client_on(&h, i, "r")).collect();
    let mut probes = Vec::new();
    for c in &receivers {
        probes.push(Recorder::start(&h, c).await);
    }
    wait_online(&h, &receivers).await;
    let from = id("sender");
    let send = cluster.http(0) + "/api/v1/messages";
    let flows: Vec<Flow> = (0..3)
        .map(|k| {
            let tag = format!("{}-{k}", cluster.prefix());
            Flow::start(
                send.clone(),
                &from,
                &receivers,
                &tag,
                Duration::from_millis(50),
            )
        })
        .collect();
    let all_sent = |flows: &[Flow]| -> Vec<Sent> { flows.iter().flat_map(Flow::sent).collect() };
    eventually("sends delivered before the cut", || {
        let ok =
            sent_ok(&all_sent(&flows)).len() >= 6 && arrived(&probes, &sent_ok(&all_sent(&flows)));
        async move { ok }
    })
    .await;

    proxy.pause(Direction::Both);
    let cut_at = Instant::now();
    eventually_within("node 1 refuses sends", LEASE + WAIT, || {
        let ok = all_sent(&flows).iter().filter(|s| s.status == 503).count() >= 3;
        async move { ok }
    })
    .await;
    tokio::time::sleep_until(cut_at + 2 * LEASE).await; // the fault itself: two leases
    proxy.heal();
    let at_heal: Vec<usize> = flows.iter().map(|f| f.sent().len()).collect();
    eventually("node 1 accepts sends again", || {
        let ok = flows
            .iter()
            .zip(&at_heal)
            .all(|(f, &n)| f.sent().iter().skip(n).any(|s| s.status == 200));
        async move { ok }
    })
    .await;
    let mut sent = Vec::new();
    for f in flows {
        sent.extend(f.stop().await);
    }

    let odd: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status != 200 && s.status != 503)
        .collect();
    assert!(odd.is_empty(), "answers other than 200 and 503: {odd:?}");
    let slowest = sent.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        slowest < backend.refusal_bound(),
        "a send took {slowest:?} (bound {:?})",
        backend.refusal_bound()
    );
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status == 503).collect();
    // What the receivers had of the refused sends before anyone retried them.
    let seen_before: Vec<HashSet<String>> = probes.iter().map(Recorder::ids).collect();
    let (mut late, mut partial) = (0, 0);
    for s in &refused {
        let want = IdempotencyKey::new(s.key.as_str())
            .unwrap()
            .message_id()
            .to_string();
        let got = seen_before.iter().filter(|ids| ids.contains(&want)).count();
        late += usize::from(got > 0);
        partial += usize::from(got > 0 && got < receivers.len());
    }

    let mut expected: Vec<String> = sent_ok(&sent);
    for s in &refused {
        let body = Flow::body(&from, &receivers, s.n);
        let deadline = Instant::now() + WAIT;
        let answer = loop {
            let answer = post_keyed(send.clone(), Some(&s.key), &body).await;
            if answer.0 == 200 {
                break answer;
            }
            assert!(
                Instant::now() < deadline,
                "the retry of {}: {answer:?}",
                s.key
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let want = IdempotencyKey::new(s.key.as_str()).unwrap().message_id();
        assert_eq!(answer.1["id"], json!(want), "the retry of {}", s.key);
        expected.push(want.to_string());
    }
    all_arrive(&probes, &sent, &expected).await;
    let expected: HashSet<String> = expected.into_iter().collect();
    let mut inbox_repeats = Vec::new();
    for p in &probes {
        let unexpected: Vec<String> = p.ids().difference(&expected).cloned().collect();
        assert!(
            unexpected.is_empty(),
            "{}: ids nobody sent: {unexpected:?}",
            p.client
        );
        // A node delivers an id once: a second live copy means a retry (or a late copy of
        // a refused send) was delivered again.
        for (id, how) in p.repeats() {
            assert!(
                how.iter().skip(1).all(|h| *h != "live"),
                "{}: {id} delivered again by a node: {how:?}",
                p.client
            );
            inbox_repeats.push((p.client.to_string(), id, how));
        }
        assert!(!p.closed(), "{}: its socket closed", p.client);
    }
    cluster.assert_running();
    eprintln!(
        "[{}] API node cut for {:?}: {} sends, {} refused (slowest answer {slowest:?}); of the \
         refused, {late} had reached a receiver before the retry ({partial} only some of them); \
         after the retries every receiver has each of {} messages, none delivered twice by a \
         node; pushed again from an inbox (an ack's removal lost in the cut): {inbox_repeats:?}",
        backend.name(),
        2 * LEASE,
        sent.len(),
        refused.len(),
        expected.len(),
    );
}

/// A client's link to its node freezes (a proxy pauses it both ways, as a phone whose radio
/// stalls: no FIN, no RST). The node closes the connection once it has been silent for
/// `ping_interval + pong_timeout`, and the business gets the offline event (`last`) within
/// that plus slack. The messages written to the socket and not acked, and those sent while it
/// was frozen, are all kept in the inbox (the sender hears `stored` for each) and reach the
/// client, once each, when it connects again.
pub async fn frozen_client_link_is_closed_and_its_pending_messages_stored(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let (ping, pong) = (Duration::from_secs(3), Duration::from_secs(1));
    let spec = Spec::new(2, "10s")
        .with_offline()
        .limits("ping_interval = \"3s\"\npong_timeout = \"1s\"\n");
    let mut cluster = Cluster::start(backend, &url, &spec);
    let h = cluster.helper().await;
    let mut events = h.events().await.unwrap();
    let (a, b) = (client_on(&h, 0, "a"), client_on(&h, 1, "b"));
    let proxy = FaultProxy::start(cluster.addrs[1]).await.unwrap();
    let wa = connect(&h, &a).await;
    let mut wb = connect_via(&h, &b, proxy.addr()).await;
    wait_online(&h, &[a.clone(), b.clone()]).await;
    // The sender keeps reading (and so answering pings): its receipts, as they come.
    let receipts = Receipts::read(wa);

    // Written to b's socket and never acked: pending.
    let pending = send_n(&cluster, 0, &a, &b, 3).await;
    for want in &pending {
        let f = next_json(&mut wb).await;
        assert_eq!(f["id"], json!(want), "{f}");
        assert_eq!(f["ack"], true, "a frame that waits for its ack: {f}");
    }
    // Freeze just after the node heard b: its silence starts with the freeze.
    heard_just_now(&mut wb, ping).await;
    proxy.pause(Direction::Both);
    let frozen_at = Instant::now();
    let meanwhile = send_n(&cluster, 0, &a, &b, 3).await;

    let b2 = b.clone();
    let ev = wait_event(
        &mut events,
        move |e| matches!(e, Event::Offline { client, .. } if *client == b2),
    )
    .await;
    let took = frozen_at.elapsed();
    assert!(
        matches!(ev, Event::Offline { last: true, ref node, .. } if node.as_str() == "n2"),
        "{ev:?}"
    );
    let bound = ping + pong + Duration::from_secs(1);
    assert!(
        took < bound,
        "offline {took:?} after the freeze: the node closes a link silent for ping_interval + \
         pong_timeout ({:?}; checked with 1 s of slack)",
        ping + pong
    );

    let all: Vec<String> = pending.iter().chain(&meanwhile).cloned().collect();
    let inbox = format!("{}/api/v1/clients/{b}/inbox", cluster.http(1));
    eventually("every pending message is in the inbox", || {
        let (inbox, n) = (inbox.clone(), all.len());
        async move { get_json(inbox).await.1["count"] == n }
    })
    .await;
    eventually("the sender hears `stored` for each", || {
        let ok = all.iter().all(|id| receipts.has(id, "stored"));
        async move { ok }
    })
    .await;
    drop(wb);

    // Back on a link that works: everything arrives, once, and leaves the inbox when acked.
    let mut wb = connect(&h, &b).await;
    let mut got = Vec::new();
    while got.len() < all.len() {
        let f = next_json(&mut wb).await;
        if f["type"] != "message" {
            continue;
        }
        assert!(f["stored"] == true || f["redelivered"] == true, "{f}");
        let id = f["id"].as_str().unwrap().to_owned();
        assert!(!got.contains(&id), "{id} twice");
        ack(&mut wb, &id).await;
        got.push(id);
    }
    assert_eq!(
        got.iter().collect::<HashSet<_>>(),
        all.iter().collect::<HashSet<_>>()
    );
    eventually("the inbox empties once acked", || {
        let inbox = inbox.clone();
        async move { get_json(inbox).await.1["count"] == 0 }
    })
    .await;
    cluster.assert_running();
    eprintln!(
        "[{}] frozen client link: offline {took:?} after the freeze (ping_interval {ping:?} + \
         pong_timeout {pong:?}); {} pending messages stored and delivered again",
        backend.name(),
        all.len()
    );
}

/// Ends a cut. Lost writes left holes in the node's TCP streams: those connections are reset
/// first (the node connects again), as TCP would end them.
async fn heal(proxy: &FaultProxy, cut: Cut) {
    if cut == Cut::WritesLost {
        proxy.reset();
        eventually("the node's broker connections are reset", || {
            let ok = proxy.connections() == 0;
            async move { ok }
        })
        .await;
    }
    proxy.heal();
}

/// Waits up to `within` until the events and the queries both say `truth` about `clients`.
async fn agree(
    h: &impush_helper::ImHelper,
    ledger: &Ledger,
    clients: &[ClientId],
    truth: &[bool],
    within: Duration,
    when: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        let events = ledger.online(clients);
        let queries = h.is_online_many(clients).await;
        if events == truth
            && queries
                .as_ref()
                .is_ok_and(|v| v.value == truth && v.missing.is_empty())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: events {events:?} and queries {queries:?} do not both say {truth:?} \
             about {clients:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of the sends answered 200.
fn sent_ok(sent: &[Sent]) -> Vec<String> {
    sent.iter().filter_map(|s| s.id.clone()).collect()
}

/// A client that records the messages it gets.
trait Receives {
    /// The ids of the messages it got.
    fn ids(&self) -> HashSet<String>;
    /// What it saw, for a failure to show.
    fn describe(&self) -> String;
}

impl Receives for Probe {
    fn ids(&self) -> HashSet<String> {
        self.seen()
            .messages
            .into_iter()
            .map(|(id, _, _)| id)
            .collect()
    }

    fn describe(&self) -> String {
        let seen = self.seen();
        format!(
            "{} (connections {:?}, closes {:?}, how {:?})",
            self.client, seen.nodes, seen.closes, seen.how
        )
    }
}

impl Receives for Recorder {
    fn ids(&self) -> HashSet<String> {
        Recorder::ids(self)
    }

    fn describe(&self) -> String {
        format!(
            "{} (closed {}, frames {:?})",
            self.client,
            self.closed(),
            self.got.lock().unwrap()
        )
    }
}

/// One connection of a client for a whole case, reading every frame and acking what the node
/// asks it to (as the JavaScript client does), recording each message frame: its id and how
/// it came (`live`, `stored`, `redelivered`). Unlike a [`Probe`] it keeps repeated frames.
struct Recorder {
    client: ClientId,
    got: Arc<Mutex<Vec<(String, &'static str)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(h: &impush_helper::ImHelper, client: &ClientId) -> Recorder {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let mut ws = connect(h, client).await;
        let got = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let got = got.clone();
            async move {
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { continue };
                    let f: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if f["type"] != "message" {
                        continue;
                    }
                    let how = if f["stored"] == true {
                        "stored"
                    } else if f["redelivered"] == true {
                        "redelivered"
                    } else {
                        "live"
                    };
                    let id = f["id"].as_str().unwrap().to_owned();
                    got.lock().unwrap().push((id.clone(), how));
                    if ["ack", "receipt", "stored", "redelivered"]
                        .iter()
                        .any(|k| f[*k] == true)
                    {
                        let ack = json!({"type": "ack", "id": id}).to_string();
                        let _ = ws.send(Message::Text(ack.into())).await;
                    }
                }
            }
        });
        Recorder {
            client: client.clone(),
            got,
            task,
        }
    }

    fn ids(&self) -> HashSet<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Ids that came more than once, with how each copy came, in order.
    fn repeats(&self) -> Vec<(String, Vec<&'static str>)> {
        let got = self.got.lock().unwrap();
        let mut by_id: std::collections::BTreeMap<&str, Vec<&'static str>> = Default::default();
        for (id, how) in got.iter() {
            by_id.entry(id).or_default().push(how);
        }
        by_id
            .into_iter()
            .filter(|(_, how)| how.len() > 1)
            .map(|(id, how)| (id.to_owned(), how))
            .collect()
    }

    /// Whether its connection ended.
    fn closed(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits (30 s at most) until every probe has seen every one of `ids`; on a timeout names
/// what each one misses by the number sent (`data`) and how what it got came.
async fn all_arrive<R: Receives>(probes: &[R], sent: &[Sent], ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !arrived(probes, ids) {
        if Instant::now() > deadline {
            let number = |id: &String| {
                sent.iter()
                    .find(|s| {
                        s.id.as_ref() == Some(id)
                            || IdempotencyKey::new(s.key.as_str())
                                .is_ok_and(|k| k.message_id().to_string() == *id)
                    })
                    .map_or(u64::MAX, |s| s.n)
            };
            let report: Vec<String> = probes
                .iter()
                .map(|p| {
                    let got = p.ids();
                    let missing: Vec<u64> = ids
                        .iter()
                        .filter(|id| !got.contains(*id))
                        .map(number)
                        .collect();
                    format!("misses {missing:?}: {}", p.describe())
                })
                .collect();
            panic!("accepted messages never arrived:\n{}", report.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every receiver has got every one of `ids`.
fn arrived<R: Receives>(receivers: &[R], ids: &[String]) -> bool {
    receivers.iter().all(|r| {
        let got = r.ids();
        ids.iter().all(|id| got.contains(id))
    })
}

/// Waits for the node's next WebSocket ping on `ws` (sent every `ping`), lets the pong go, and
/// then sends `{"type":"ping"}` and waits for its `pong`: the node has just heard this client,
/// and its next ping is a whole interval away.
async fn heard_just_now(ws: &mut Ws, ping: Duration) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + ping + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a ping from the node");
        match msg {
            Some(Ok(Message::Ping(_))) => break,
            Some(Ok(_)) => {}
            other => panic!("the link ended: {other:?}"),
        }
    }
    ws.flush().await.unwrap(); // the queued pong
    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    loop {
        if next_json(ws).await["type"] == "pong" {
            return;
        }
    }
}

/// Acks message `id` on `ws`.
async fn ack(ws: &mut Ws, id: &str) {
    use futures_util::SinkExt;
    let frame = json!({"type": "ack", "id": id}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.into()))
        .await
        .unwrap();
}

/// The receipts a sender's socket gets, read by a task of their own.
struct Receipts {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receipts {
    fn read(mut ws: Ws) -> Receipts {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                use futures_util::StreamExt;
                while let Some(Ok(msg)) = ws.next().await {
                    let tokio_tungstenite::tungstenite::Message::Text(t) = msg else {
                        continue;
                    };
                    let f: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if f["type"] == "receipt" {
                        let (id, status) = (f["id"].as_str(), f["status"].as_str());
                        seen.lock()
                            .unwrap()
                            .push((id.unwrap().to_owned(), status.unwrap().to_owned()));
                    }
                }
            }
        });
        Receipts { seen, task }
    }

    /// Whether message `id` got a receipt with `status`.
    fn has(&self, id: &str, status: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(i, s)| i == id && s == status)
    }
}

impl Drop for Receipts {
    fn drop(&mut self) {
        self.task.abort();
    }
}
