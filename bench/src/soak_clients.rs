//! The soak's load, inside the bench process: steady clients (connected the whole run,
//! reconnecting as the JavaScript client does when their node drains or restarts), churning
//! clients (connect, stay a few seconds, leave, come back), and senders of direct and channel
//! messages through ImHelper. Everything counts what it did in [`Counters`].

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use impush_core::{ChannelName, ClientId};
use impush_helper::ImHelper;
use serde_json::{json, Value};
use tokio::{sync::watch, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::worker::now_ns;

/// What the load did, for the report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    /// Connections the node closed with 1012 (drain or return home).
    pub(crate) moved: AtomicU64,
    /// Connections that ended otherwise (node gone, close by the node).
    pub(crate) dropped: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) channel_in: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) sent_ok: AtomicU64,
    pub(crate) sent_failed: AtomicU64,
    pub(crate) channel_sent_ok: AtomicU64,
    pub(crate) channel_sent_failed: AtomicU64,
}

impl Counters {
    pub(crate) fn json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "connects": g(&self.connects),
            "connect_failures": g(&self.connect_failures),
            "closed_1012_moved": g(&self.moved),
            "closed_otherwise": g(&self.dropped),
            "direct_sent_ok": g(&self.sent_ok),
            "direct_sent_failed": g(&self.sent_failed),
            "direct_received": g(&self.messages_in),
            "acks_sent": g(&self.acks),
            "channel_sent_ok": g(&self.channel_sent_ok),
            "channel_sent_failed": g(&self.channel_sent_failed),
            "channel_frames_received": g(&self.channel_in),
        })
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A small xorshift generator: the load needs spread, not quality (no dependency for it).
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(salt: u64) -> Self {
        Jitter((now_ns() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A duration in `[lo, hi)` milliseconds.
    pub(crate) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// How a connection ended.
enum Ended {
    Stop,
    /// Closed by the node with this code (1006: without a close frame).
    Closed(u16),
    /// The client left (churn).
    Left,
}

/// One connection of `id` until it closes, `stay` passes, or the run stops.
async fn session(
    helper: &ImHelper,
    id: &ClientId,
    c: &Counters,
    stay: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let Ok(info) = helper.prepare_connect(id, Value::Null) else {
        bump(&c.connect_failures);
        return Ended::Closed(1006);
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(info.url.as_str()),
    )
    .await;
    let Ok(Ok((mut ws, _))) = connected else {
        bump(&c.connect_failures);
        return Ended::Closed(1006);
    };
    bump(&c.connects);
    let leave_at = stay.map(|d| Instant::now() + d);
    loop {
        let leave = async {
            match leave_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ended::Stop;
            }
            () = leave => {
                let _ = ws.close(None).await;
                // Read until the node's close reply, so it sees a clean close.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Close(_) = m { break }
                    }
                })
                .await;
                return Ended::Left;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(f) = serde_json::from_str::<Value>(&t) else { continue };
                    match f["type"].as_str() {
                        Some("message") => {
                            bump(&c.messages_in);
                            // As the JavaScript client's autoAck: messages the node keeps
                            // pending until acked (offline inbox on) are acked.
                            if ["ack", "receipt", "stored", "redelivered"].iter().any(|k| f[*k] == true) {
                                let ack = json!({"type": "ack", "id": f["id"]}).to_string();
                                if ws.send(Message::Text(ack.into())).await.is_ok() {
                                    bump(&c.acks);
                                }
                            }
                        }
                        Some("channel") => bump(&c.channel_in),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ended::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::Closed(1006),
            },
        }
    }
}

/// A client connected for the whole run: it reconnects at once after 1012 (drain, return
/// home) and after a short jittered pause otherwise (its node went away).
pub(crate) async fn steady(
    helper: ImHelper,
    id: ClientId,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    salt: u64,
) {
    let mut jitter = Jitter::new(salt);
    loop {
        match session(&helper, &id, &c, None, &mut stop).await {
            Ended::Stop => return,
            Ended::Closed(1012) => bump(&c.moved),
            Ended::Closed(_) | Ended::Left => {
                bump(&c.dropped);
                if pause(&mut stop, jitter.ms(200, 1200)).await {
                    return;
                }
            }
        }
    }
}

/// A client that keeps coming and going: connected 2-20 s, away 1-10 s.
pub(crate) async fn churner(
    helper: ImHelper,
    id: ClientId,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    salt: u64,
) {
    let mut jitter = Jitter::new(salt);
    // Not all at once at the start.
    if pause(&mut stop, jitter.ms(0, 10_000)).await {
        return;
    }
    loop {
        let stay = jitter.ms(2_000, 20_000);
        let away = match session(&helper, &id, &c, Some(stay), &mut stop).await {
            Ended::Stop => return,
            Ended::Left => jitter.ms(1_000, 10_000),
            Ended::Closed(1012) => {
                bump(&c.moved);
                Duration::ZERO
            }
            Ended::Closed(_) => {
                bump(&c.dropped);
                jitter.ms(200, 1200)
            }
        };
        if pause(&mut stop, away).await {
            return;
        }
    }
}

/// Sleeps `d`; true when the run stopped meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(d) => *stop.borrow(),
    }
}

/// Direct messages at `rate` per second, each to the next client in `to` (round robin),
/// whether it is connected or away (then it waits in its inbox).
pub(crate) async fn direct_sender(
    helper: ImHelper,
    to: Vec<ClientId>,
    rate: u64,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let from: ClientId = match "soak".parse() {
        Ok(f) => f,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let target = &to[(n as usize) % to.len()];
        let data = json!({"n": n, "t": now_ns()});
        match helper
            .send_message(&from, std::slice::from_ref(target), &data, false)
            .await
        {
            Ok(_) => bump(&c.sent_ok),
            Err(_) => bump(&c.sent_failed),
        }
    }
}

/// Channel messages at `rate` per second over `channels` in turn; every minute the members
/// are joined again (a membership that ended while its client was away comes back).
pub(crate) async fn channel_sender(
    helper: ImHelper,
    channels: Vec<(ChannelName, Vec<ClientId>)>,
    rate: u64,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let from: ClientId = match "soak".parse() {
        Ok(f) => f,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rejoin = tokio::time::interval(Duration::from_secs(60));
    for n in 0u64.. {
        tokio::select! {
            _ = stop.changed() => return,
            _ = rejoin.tick() => {
                for (ch, members) in &channels {
                    let _ = helper.join_channel(ch, members).await;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let (ch, _) = &channels[(n as usize) % channels.len()];
        let data = json!({"n": n, "t": now_ns()});
        match helper.send_channel_message(&from, ch, &data).await {
            Ok(_) => bump(&c.channel_sent_ok),
            Err(_) => bump(&c.channel_sent_failed),
        }
    }
}
