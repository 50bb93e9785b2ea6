//! Failover and return home with real processes (`docs/design.md` section 16): the clients of
//! a node killed with SIGKILL connect again on live nodes within a lease and a little, what is
//! sent to them meanwhile arrives, events and queries agree, and they go home when their node
//! is back without ever looking offline; with cluster presence and persistent memberships, a
//! client's rooms outlive its owner.

#![allow(clippy::unwrap_used)] // a case is a test body: a failed step fails the test

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use impush_core::{ClientId, ConnectionId, Event, NodeId, NodeStatus};
use serde_json::json;

use crate::support::online_after_replay;

use crate::cluster::{
    clients::{
        client_on, clients_on, connect, next_json_within, poll, poll_until, wait_online, EventLog,
        Ws,
    },
    harness::{Backend, Cluster, Spec},
    http::post,
    probe::{Control, Probe},
};

/// Clients of the node that is killed.
const CLIENTS: usize = 1500;
/// `limits.connect_rate` of each node.
const CONNECT_RATE: usize = 300;
/// How many of them connect at once at the start.
const STEP: usize = 250;
/// Of them, how many the trickle of messages goes to.
const RECEIVERS: usize = 100;
/// One message every this long, to the receivers in turn.
const TRICKLE: Duration = Duration::from_millis(100);

/// 3 nodes, the offline inbox on, `connect_rate` 300, 1,500 clients at home on n2 (probes
/// that follow live ownership and honour `Retry-After`). n2 is killed (SIGKILL): every client is connected again on n1 or n3 within
/// `node_lease` + 5 s; messages sent meanwhile through n1 to 100 of them arrive (with a shared
/// inbox while n2 is still down; with one kept per node, by the end); each killed connection
/// gets one offline event whose `last` agrees with the `first` of the client's new connection,
/// and queries say everyone is online. n2 restarted: every client goes home (1012, then a
/// connection to n2) within `rebalance_period` + 5 s of n2 being live again (its startup, the
/// time to join the broker's groups, is the backend's), nothing is lost, and nobody is reported
/// gone (offline events of the move say `moved`, never `last`).
pub async fn killed_nodes_clients_reconnect_elsewhere_and_come_home(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let (lease, rebalance) = (Duration::from_secs(2), Duration::from_secs(8));
    // Sized for a debug build on a shared 2-core machine, where a node takes a few hundred
    // connects a second: `connect_rate` flattens the failover storm (unflattened, a node busy
    // with it misses its own lease and is declared dead in turn), the return home is spread
    // over 8 s (190 connects a second, well inside n2's rate: at exactly the rate, as with 5 s,
    // jitter makes bursts n2 refuses, and a client refused a few times, a second apart, stays
    // away past its grace), and the grace is the default (a client still on its way when it
    // ends is reported gone, as it should be).
    let spec = Spec::new(3, "2s")
        .with_offline()
        .limits(format!("connect_rate = {CONNECT_RATE}\n"))
        .moves(format!(
            "drain_period = \"1s\"\nrebalance_period = \"{}s\"\nmove_grace = \"5s\"\n",
            rebalance.as_secs()
        ));
    let mut cluster = Cluster::start(backend, &url, &spec);
    let h = cluster.helper().await;
    let log = EventLog::start(h.events().await.unwrap());
    let clients = clients_on(&h, 1, "k", CLIENTS);
    // In steps: the failover storm is the case, not the start.
    let mut probes: Vec<Probe> = Vec::new();
    for step in clients.chunks(STEP) {
        probes.extend(step.iter().map(|c| Probe::start(h.clone(), c.clone())));
        poll("clients online on n2", Duration::from_secs(60), || {
            let log = &log;
            async move { on_node(log, step, "n2").len() == step.len() }
        })
        .await;
    }
    let on_n2 = on_node(&log, &clients, "n2");

    // A trickle of messages through n1 (never killed) to a sample, from before the kill to
    // the end.
    let receivers: Vec<ClientId> = clients.iter().take(RECEIVERS).cloned().collect();
    let trickle = Trickle::start(cluster.http(0), receivers.clone());

    let killed = Instant::now();
    cluster.kill9(1);
    let n2: NodeId = "n2".parse().unwrap();
    let view_dead = tokio::spawn({
        let h = h.clone();
        let n2 = n2.clone();
        async move {
            while h.cluster().status(&n2) != NodeStatus::Dead {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            killed.elapsed()
        }
    });
    let within = lease + Duration::from_secs(5);
    poll(
        "every client connected again",
        within + Duration::from_secs(20),
        || {
            let probes = &probes;
            async move { probes.iter().all(|p| p.seen().connections >= 2) }
        },
    )
    .await;
    let mut took = Vec::new();
    for p in &probes {
        let seen = p.seen();
        let (node, at) = seen
            .nodes
            .iter()
            .map(|(n, ms)| (n, p.at(*ms)))
            .find(|(_, t)| *t > killed)
            .unwrap();
        assert_ne!(node, "n2", "{} connected to its dead home", p.client);
        took.push(at - killed);
    }
    took.sort();
    let slowest = *took.last().unwrap();
    let view_dead = view_dead.await.unwrap();
    let refusals: usize = probes.iter().map(|p| p.seen().refusals).sum();
    assert!(
        slowest <= within,
        "the last client connected again {slowest:?} after the kill (lease {lease:?}); \
         first {:?}, median {:?}, 90% {:?}; the helper's view had n2 dead after {view_dead:?}; \
         {refusals} connects refused",
        took[0],
        took[took.len() / 2],
        took[took.len() * 9 / 10],
    );

    // Events: one offline per killed connection, its `last` as the new connection's `first`.
    poll(
        "an offline event for every killed connection",
        Duration::from_secs(30),
        || {
            let (log, on_n2) = (&log, &on_n2);
            async move {
                let gone: HashSet<ConnectionId> = log
                    .events()
                    .into_iter()
                    .filter_map(|(_, e)| match e {
                        Event::Offline { connection, .. } => Some(connection),
                        Event::Online { .. } => None,
                    })
                    .collect();
                on_n2.values().all(|c| gone.contains(c))
            }
        },
    )
    .await;
    poll(
        "an online event on a live node for every client",
        Duration::from_secs(30),
        || {
            let (log, clients) = (&log, &clients);
            async move {
                let events = log.events();
                clients.iter().all(|c| {
                    events.iter().any(|(_, e)| {
                        matches!(e, Event::Online { client, node, .. }
                            if client == c && node.as_str() != "n2")
                    })
                })
            }
        },
    )
    .await;
    // A `last` that a reconnect crossed is followed by the connection's online again
    // (`docs/design.md` section 16): the events are judged once every client's replay ends
    // online, or when the wait ran out (the checks below then say which and why).
    poll_until(WAIT_LONG, || {
        let (log, clients) = (&log, &clients);
        async move {
            let events = log.events();
            clients
                .iter()
                .all(|c| online_after_replay(events.iter().map(|(_, e)| e), c, true))
        }
    })
    .await;
    let events = log.events();
    let mut reaped_last = 0;
    for c in &clients {
        let old = &on_n2[c];
        let offline: Vec<bool> = offline_of(&events, old).collect();
        let new_first = events.iter().find_map(|(_, e)| match e {
            Event::Online {
                client,
                node,
                first,
                ..
            } if client == c && node.as_str() != "n2" => Some(*first),
            _ => None,
        });
        let Some(new_first) = new_first else {
            let of_c: Vec<&Event> = events
                .iter()
                .map(|(_, e)| e)
                .filter(|e| match e {
                    Event::Online { client, .. } | Event::Offline { client, .. } => client == c,
                })
                .collect();
            panic!(
                "{c}: no online event for its connection on a live node: {of_c:?}; the event \
                 stream's errors: {:?}",
                log.errors()
            )
        };
        assert_eq!(
            offline.len(),
            1,
            "{c}: the killed connection's offline events (`last`): {offline:?}"
        );
        // What a business that acts on `first` and `last` concludes, replaying the events in
        // the order they came: the client is online. (Within a lease of a crash `first` and
        // `last` may both be true, or both false, as the nodes' views catch up; a `last`
        // that leaves a connected client offline must never happen.)
        assert!(
            online_after_replay(events.iter().map(|(_, e)| e), c, true),
            "{c}: the events leave it offline (killed connection's last {offline:?}, new \
             connection's first {new_first})"
        );
        reaped_last += usize::from(new_first && offline[0]);
    }
    poll("queries say every client is online", WAIT_LONG, || {
        let (h, clients) = (&h, &clients);
        async move {
            h.is_online_many(clients)
                .await
                .is_ok_and(|a| a.value.iter().all(|o| *o))
        }
    })
    .await;
    poll("queries count one connection each", WAIT_LONG, || {
        let (h, receivers) = (&h, &receivers);
        async move {
            for c in receivers {
                if h.connections(c).await.map(|a| a.value).unwrap_or(0) != 1 {
                    return false;
                }
            }
            true
        }
    })
    .await;

    // What was sent while n2 was down: with a shared inbox it has arrived on the live nodes;
    // with an inbox per node, some may wait for n2.
    let sent_while_down = trickle.accepted();
    let arrived = |sent: &[Sent]| {
        let got: HashMap<ClientId, HashSet<String>> = probes
            .iter()
            .take(RECEIVERS)
            .map(|p| {
                let ids = p.seen().messages.into_iter().map(|(id, _, _)| id).collect();
                (p.client.clone(), ids)
            })
            .collect();
        sent.iter().filter(|s| got[&s.to].contains(&s.id)).count()
    };
    if backend.offline_is_shared() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while arrived(&sent_while_down) < sent_while_down.len() {
            if Instant::now() > deadline {
                panic!(
                    "[{}] of what was sent while n2 was down, {}",
                    backend.name(),
                    not_arrived(&probes, &sent_while_down, killed)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let before_restart = arrived(&sent_while_down);
    // Nobody's new connection was reported gone (a live node declared dead under the storm).
    let killed_conns: HashSet<&ConnectionId> = on_n2.values().collect();
    let false_offline: Vec<Event> = log
        .events()
        .into_iter()
        .filter_map(|(_, e)| match &e {
            Event::Offline { connection, .. } if !killed_conns.contains(connection) => Some(e),
            _ => None,
        })
        .collect();
    assert!(
        false_offline.is_empty(),
        "{} offline events for connections that never closed, e.g. {:?}",
        false_offline.len(),
        false_offline.first()
    );

    // n2 is back: everyone goes home, and nobody looks gone meanwhile. The time is taken
    // before the start: n2 is live to the others as soon as it heartbeats, and a client may be
    // home before `restart` has seen n2 print that it listens.
    let restarted = Instant::now();
    // When the helper's view had n2 live again (`n2_live`: the return home is timed from
    // there; before it, n2 is starting, joining the broker's groups: a few hundred ms on most
    // backbones, seconds on Kafka, and nobody is sent to it), and when it had n2 dead after
    // that: a return home reported as gone is most often a restarted n2 judged dead again (its
    // connections dropped from every view), which this and the offline events of n2's own
    // connections show.
    let (live_tx, n2_live) = tokio::sync::oneshot::channel();
    let n2_dead_again = tokio::spawn({
        let h = h.clone();
        let n2 = n2.clone();
        async move {
            while h.cluster().status(&n2) == NodeStatus::Dead {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = live_tx.send(restarted.elapsed());
            loop {
                if h.cluster().status(&n2) == NodeStatus::Dead {
                    return restarted.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    cluster.restart(1);
    let within = rebalance + Duration::from_secs(5);
    let deadline = Instant::now() + within + Duration::from_secs(30);
    loop {
        let away: Vec<&Probe> = probes
            .iter()
            .filter(|p| {
                let seen = p.seen();
                let (node, ms) = seen.nodes.last().unwrap();
                node != "n2" || p.at(*ms) < restarted
            })
            .collect();
        let Some(p) = away.first() else { break };
        assert!(
            Instant::now() < deadline,
            "{} clients not home {:?} after n2 restarted, e.g. {} ({}): {}",
            away.len(),
            restarted.elapsed(),
            p.client,
            p.seen().doing,
            p.timeline_since(restarted)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut home_after = Vec::new();
    for p in &probes {
        let seen = p.seen();
        let (_, ms) = seen.nodes.last().unwrap();
        home_after.push(p.at(*ms) - restarted);
        assert!(
            seen.closes.contains(&1012),
            "{} went home without being told (1012): closes {:?}, connections {:?}",
            p.client,
            seen.closes,
            seen.nodes
        );
    }
    home_after.sort();
    let last_home = *home_after.last().unwrap();
    let live_after = n2_live.await.unwrap();
    assert!(
        last_home <= live_after + within,
        "the last client was home {last_home:?} after n2 restarted, n2 live after \
         {live_after:?}; median {:?}",
        home_after[home_after.len() / 2]
    );
    // Each move ends with an offline event that says so, after the move's grace.
    poll(
        "a moved offline event for every client",
        Duration::from_secs(30),
        || {
            let (log, clients) = (&log, &clients);
            async move {
                let moved: HashSet<ClientId> = log
                    .events()
                    .into_iter()
                    .filter_map(|(t, e)| match e {
                        Event::Offline {
                            client,
                            moved: true,
                            ..
                        } if t > restarted => Some(client),
                        _ => None,
                    })
                    .collect();
                clients.iter().all(|c| moved.contains(c))
            }
        },
    )
    .await;
    let sent = trickle.stop().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived(&sent) < sent.len() {
        if Instant::now() > deadline {
            panic!(
                "[{}] after the return home, {}",
                backend.name(),
                not_arrived(&probes, &sent, killed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members: HashSet<&ClientId> = clients.iter().collect();
    let events = log.events();
    let gone: Vec<&Event> = events
        .iter()
        .filter(|(t, e)| {
            *t > restarted
                && members.contains(e.client())
                && matches!(e, Event::Offline { last: true, .. })
        })
        .map(|(_, e)| e)
        .collect();
    if let Some(first) = gone.first() {
        let p = probes.iter().find(|p| p.client == *first.client()).unwrap();
        let n2_reaped = events
            .iter()
            .filter(|(t, e)| {
                *t > restarted
                    && matches!(e, Event::Offline { node, moved: false, .. } if *node == n2)
            })
            .count();
        let dead_again = if n2_dead_again.is_finished() {
            format!("{:?}", n2_dead_again.await.unwrap())
        } else {
            "never".into()
        };
        panic!(
            "{} clients reported gone while they went home, e.g. {first:?}; that client's \
             timeline from n2's restart: {}; after the restart, {n2_reaped} connections on \
             n2 were reported offline without a move, and the helper's view had n2 dead \
             again after {dead_again}",
            gone.len(),
            p.timeline_since(restarted),
        );
    }
    n2_dead_again.abort();
    let first_again = events
        .iter()
        .filter(|(t, e)| {
            *t > restarted
                && members.contains(e.client())
                && matches!(e, Event::Online { first: true, .. })
        })
        .count();
    assert_eq!(first_again, 0, "online first:true while going home");
    assert!(log.errors().is_empty(), "event stream: {:?}", log.errors());
    poll(
        "queries say every client is online, once",
        WAIT_LONG,
        || {
            let (h, clients, receivers) = (&h, &clients, &receivers);
            async move {
                if !h
                    .is_online_many(clients)
                    .await
                    .is_ok_and(|a| a.value.iter().all(|o| *o))
                {
                    return false;
                }
                for c in receivers {
                    if h.connections(c).await.map(|a| a.value).unwrap_or(0) != 1 {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    let duplicates: usize = probes.iter().map(|p| p.seen().duplicates).sum();
    for p in &probes {
        p.control(Control::Stop);
    }
    eprintln!(
        "[{}] {CLIENTS} clients of a killed node: connected again after {:?} (median) / {:?} \
         (last), {reaped_last} reaped before they reconnected; home {:?} / {:?} after the \
         restart, n2 live after {live_after:?}; {} messages sent, {} of the {} sent while n2 was down had arrived before it \
         restarted ({} inbox), 0 lost; {duplicates} duplicate frames dropped",
        backend.name(),
        took[took.len() / 2],
        slowest,
        home_after[home_after.len() / 2],
        last_home,
        sent.len(),
        before_restart,
        sent_while_down.len(),
        if backend.offline_is_shared() {
            "shared"
        } else {
            "per-node"
        },
    );
    cluster.assert_running();
}

/// How long the heavier conditions get (queries over 1,500 clients on a loaded machine).
const WAIT_LONG: Duration = Duration::from_secs(30);

/// Cluster presence with `[channels] persist = true` (`docs/design.md` sections 3 and 16): a
/// client's rooms outlive its owner. `m`, at home on n2, joins a room; n2 is killed: `m`'s
/// memberships are still known (its other keeper answers), and on the live node it connects
/// to again it gets the room's messages. n2 restarts with nothing in memory: it takes the
/// other keeper's copy, answers for `m`'s rooms again, and `m` back home gets the room there.
pub async fn memberships_outlive_their_owner(backend: &Backend) {
    let Some(url) = backend.shared_url() else {
        return;
    };
    let spec = Spec::new(3, "2s").with_persistent_memberships();
    let mut cluster = Cluster::start(backend, &url, &spec);
    let h = cluster.helper().await;
    let m = client_on(&h, 1, "m");
    let from: ClientId = "system".parse().unwrap();
    let room: impush_core::ChannelName = "kept".parse().unwrap();
    let mut ws = connect(&h, &m).await;
    wait_online(&h, std::slice::from_ref(&m)).await;
    h.join_channel(&room, std::slice::from_ref(&m))
        .await
        .unwrap();
    receive_from_room(&h, &mut ws, &from, &room, "at home").await;

    let n2: NodeId = "n2".parse().unwrap();
    cluster.kill9(1);
    drop(ws);
    poll("the helper's view counts n2 dead", WAIT_LONG, || async {
        h.cluster().status(&n2) == NodeStatus::Dead
    })
    .await;
    assert_rooms(&h, &m, &room, "kept by m's other keeper").await;
    let mut ws = connect(&h, &m).await;
    receive_from_room(&h, &mut ws, &from, &room, "away").await;

    cluster.restart(1);
    poll("the helper's view has n2 live again", WAIT_LONG, || async {
        h.cluster().status(&n2) == NodeStatus::Live
    })
    .await;
    assert_rooms(&h, &m, &room, "n2 took its copy back").await;
    drop(ws);
    let mut ws = connect(&h, &m).await;
    receive_from_room(&h, &mut ws, &from, &room, "home again").await;
    cluster.assert_running();
}

/// `m`'s channels are exactly `room`, in a complete answer.
async fn assert_rooms(
    h: &impush_helper::ImHelper,
    m: &ClientId,
    room: &impush_core::ChannelName,
    why: &str,
) {
    let kept = h.client_channels(m).await.unwrap();
    assert!(kept.missing.is_empty(), "{why}: {kept:?}");
    assert_eq!(kept.value, vec![room.clone()], "{why}");
}

/// Sends to `room` until `ws` gets it: a connection just attached may not have its channels
/// loaded yet (they are loaded once the store counts it).
async fn receive_from_room(
    h: &impush_helper::ImHelper,
    ws: &mut Ws,
    from: &ClientId,
    room: &impush_core::ChannelName,
    text: &str,
) {
    let deadline = Instant::now() + WAIT_LONG;
    loop {
        h.send_channel_message(from, room, &text).await.unwrap();
        let got = next_json_within(ws, Duration::from_millis(500)).await;
        if got.as_ref().is_some_and(|f| f["data"] == text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no \"{text}\" from {room} (last frame {got:?})"
        );
    }
}

/// Each of `clients` with the connection an online event put on `node` (the first one).
fn on_node(log: &EventLog, clients: &[ClientId], node: &str) -> HashMap<ClientId, ConnectionId> {
    let wanted: HashSet<&ClientId> = clients.iter().collect();
    let mut found = HashMap::new();
    for (_, e) in log.events() {
        if let Event::Online {
            client,
            node: n,
            connection,
            ..
        } = e
        {
            if n.as_str() == node && wanted.contains(&client) {
                found.entry(client).or_insert(connection);
            }
        }
    }
    found
}

/// The `last` of every offline event of connection `conn`.
fn offline_of<'a>(
    events: &'a [(Instant, Event)],
    conn: &'a ConnectionId,
) -> impl Iterator<Item = bool> + 'a {
    events.iter().filter_map(move |(_, e)| match e {
        Event::Offline {
            connection, last, ..
        } if connection == conn => Some(*last),
        _ => None,
    })
}

/// A message sent through the API and accepted.
#[derive(Debug, Clone)]
struct Sent {
    to: ClientId,
    id: String,
    /// When the API answered.
    at: Instant,
}

/// Which of `sent` did not reach its receiver, when each was sent (from `t0`) and where its
/// receiver was connected: for a failing case to show.
fn not_arrived(probes: &[Probe], sent: &[Sent], t0: Instant) -> String {
    let by_client: HashMap<&ClientId, &Probe> = probes.iter().map(|p| (&p.client, p)).collect();
    let mut lines = Vec::new();
    for s in sent {
        let p = by_client[&s.to];
        let seen = p.seen();
        if seen.messages.iter().any(|(id, _, _)| *id == s.id) {
            continue;
        }
        let conns: Vec<String> = seen
            .nodes
            .iter()
            .map(|(n, ms)| format!("{n}@{:?}", p.at(*ms).saturating_duration_since(t0)))
            .collect();
        lines.push(format!(
            "{} to {} sent {:?} after the kill (connections {})",
            s.id,
            s.to,
            s.at.saturating_duration_since(t0),
            conns.join(" ")
        ));
    }
    format!(
        "{} of {} never arrived:\n{}",
        lines.len(),
        sent.len(),
        lines.join("\n")
    )
}

/// Messages through one node's HTTP API to receivers in turn, one every [`TRICKLE`], until
/// stopped.
struct Trickle {
    stop: Arc<AtomicBool>,
    accepted: Arc<std::sync::Mutex<Vec<Sent>>>,
    task: tokio::task::JoinHandle<usize>,
}

impl Trickle {
    fn start(api: String, to: Vec<ClientId>) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, accepted) = (stop.clone(), accepted.clone());
            async move {
                let url = api + "/api/v1/messages";
                let mut refused = 0;
                let mut next = tokio::time::Instant::now();
                for (i, c) in to.iter().cycle().enumerate() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let body = json!({"from": "trickle", "to": [c.as_str()], "data": i});
                    match post(url.clone(), body).await {
                        (200, v) => accepted.lock().unwrap().push(Sent {
                            to: c.clone(),
                            id: v["id"].as_str().unwrap().to_owned(),
                            at: Instant::now(),
                        }),
                        _ => refused += 1,
                    }
                    next += TRICKLE;
                    tokio::time::sleep_until(next).await;
                }
                refused
            }
        });
        Trickle {
            stop,
            accepted,
            task,
        }
    }

    /// What was accepted so far.
    fn accepted(&self) -> Vec<Sent> {
        self.accepted.lock().unwrap().clone()
    }

    /// Stops sending; everything accepted.
    async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Release);
        let sent = self.accepted.clone();
        let refused = self.task.await.unwrap();
        let sent = sent.lock().unwrap().clone();
        assert!(
            refused * 10 < sent.len(),
            "n1's API refused {refused} sends, accepted {}",
            sent.len()
        );
        sent
    }
}
