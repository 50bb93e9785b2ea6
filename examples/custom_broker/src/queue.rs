//! `Queue{group}` subscriptions: a member reads the group's durable pull consumer, hands each
//! message out with an [`Acknowledge`] of ours, and gives back what it still holds when it
//! leaves.
//!
//! - Every delivery handed out is recorded in the member's [`Held`] set (its ack subject).
//!   `ack` removes it and queues `+ACK`; nothing waits for the server.
//! - Acks and naks are written by one task per broker ([`run_ack_writer`]) in the order they
//!   were queued, through the broker's connection.
//! - When the subscription is dropped (or the stream ends), the member stops pulling, takes
//!   what the pull stream had already buffered, and `-NAK`s everything it held unacked: NATS
//!   redelivers those to another member (or the next one to subscribe) after [`NAK_DELAY`]
//!   (3 s, see there why not at once), instead of after `ack_wait`. A member that dies without
//!   this gets its messages redelivered after `ack_wait`.
//! - A member that left may still have a pull request on the server for up to
//!   [`PULL_EXPIRES`]: a message published in that window can be handed to it after it stopped
//!   reading, and reaches the group after `ack_wait` (late, not lost). Keep `ack_wait` short
//!   where that delay matters.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use async_nats::{
    jetstream::consumer::pull::{MessagesErrorKind, Stream as PullStream},
    Client, Subject,
};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use impush_core::{Acknowledge, Delivery, Result};
use tokio::sync::{mpsc, oneshot};

/// What the ack writer does next.
#[derive(Debug)]
pub(crate) enum AckCmd {
    /// Publish `body` (`+ACK` or `-NAK`) to a delivery's ack subject.
    Send(Subject, &'static [u8]),
    /// Answer once everything queued before has been handed to the connection and flushed.
    Barrier(oneshot::Sender<()>),
}

const ACK: &[u8] = b"+ACK";

/// How long a member's pull request waits on the server for messages. Short, because of the
/// next constant.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// What a leaving member says about the deliveries it gives back: redeliver them, but not
/// before its own pull requests have expired ([`PULL_EXPIRES`] + 1 s).
///
/// Why not at once: nats-server 2.9 (Debian's 2.9.10, checked) mishandles a redelivery that
/// finds only pull requests whose subscriber is gone (`loopAndGatherMsgs`: "We will redo this
/// one", `o.sseq--`): the redelivery is dropped until `ack_wait`, and the consumer's position
/// steps back, so the newest message is delivered a second time. A member that leaves leaves
/// such requests behind; with a plain `-NAK`, 9 of 12 trials lost one message and duplicated
/// another. With 2 s pull requests and this delay none of 16 did, also when no member came back
/// for 4 s. (The same holds for redeliveries after `ack_wait`, hence `ack_wait` >= 3 s.)
pub(crate) const NAK_DELAY: Duration = Duration::from_secs(3);
const NAK: &[u8] = b"-NAK {\"delay\": 3000000000}";

/// Writes acks and naks in queue order. Ends when every sender is gone.
pub(crate) async fn run_ack_writer(client: Client, mut rx: mpsc::UnboundedReceiver<AckCmd>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            AckCmd::Send(reply, body) => {
                // A lost ack means a redelivery later (at-least-once), never a loss.
                if let Err(e) = client.publish(reply, Bytes::from_static(body)).await {
                    tracing::debug!(cause = %e, "nats: could not send an ack");
                }
            }
            AckCmd::Barrier(done) => {
                let _ = client.flush().await;
                let _ = done.send(());
            }
        }
    }
}

/// The deliveries one member has handed out and not yet acked, by local id.
#[derive(Debug, Default)]
pub(crate) struct Held {
    next: u64,
    open: HashMap<u64, Subject>,
    /// Set when the member gave everything back: later acks are too late (NATS redelivers).
    closed: bool,
}

pub(crate) type SharedHeld = Arc<Mutex<Held>>;

fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    // The critical sections below cannot panic halfway; a poisoned lock holds valid data.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Gives back (naks) everything `held` holds, and refuses later acks.
pub(crate) fn give_back(held: &Mutex<Held>, acks: &mpsc::UnboundedSender<AckCmd>) {
    let open = {
        let mut h = lock(held);
        h.closed = true;
        std::mem::take(&mut h.open)
    };
    for (_, reply) in open {
        let _ = acks.send(AckCmd::Send(reply, NAK));
    }
}

/// The [`Acknowledge`] of one queue delivery.
struct QueueAck {
    id: u64,
    held: SharedHeld,
    acks: mpsc::UnboundedSender<AckCmd>,
}

impl Acknowledge for QueueAck {
    fn ack(self: Box<Self>) {
        let reply = lock(&self.held).open.remove(&self.id);
        if let Some(reply) = reply {
            let _ = self.acks.send(AckCmd::Send(reply, ACK));
        }
    }
}

/// One member of a queue group: pulls, hands out, gives back on the way out.
pub(crate) async fn run_member(
    mut messages: PullStream,
    held: SharedHeld,
    acks: mpsc::UnboundedSender<AckCmd>,
    tx: mpsc::Sender<Result<Delivery>>,
    what: String,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let item = tokio::select! {
            biased;
            () = tx.closed() => break,
            item = messages.next() => item,
        };
        match item {
            Some(Ok(msg)) => {
                backoff = Duration::from_millis(50);
                // Our own acker, not async-nats' (whose `ack` is async): keep the ack subject.
                let msg = msg.message;
                let Some(reply) = msg.reply else { continue };
                let id = {
                    let mut h = lock(&held);
                    if h.closed {
                        let _ = acks.send(AckCmd::Send(reply, NAK));
                        continue;
                    }
                    h.next += 1;
                    let id = h.next;
                    h.open.insert(id, reply);
                    id
                };
                let ack = QueueAck {
                    id,
                    held: held.clone(),
                    acks: acks.clone(),
                };
                // Waits while the subscriber is busy: the pull stream stops asking for more.
                if tx
                    .send(Ok(Delivery::with_ack(msg.payload, ack)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Some(Err(e)) => match e.kind() {
                // The consumer is gone or unusable: end the stream, the subscriber subscribes
                // again (which recreates the consumer).
                MessagesErrorKind::ConsumerDeleted
                | MessagesErrorKind::PushBasedConsumer
                | MessagesErrorKind::RequestLimitExceeded => {
                    tracing::warn!(cause = %e, "nats: {what} ended");
                    break;
                }
                // Disconnected, server restarting, JetStream busy: the pull stream carries on
                // (it pulls again after a reconnect); don't spin meanwhile.
                _ => {
                    tracing::debug!(cause = %e, "nats: {what}: pull failed; retrying");
                    tokio::select! {
                        () = tx.closed() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            },
            None => break,
        }
    }
    // Leaving: take what the pull stream already holds for us (without waiting), stop pulling
    // (dropping the stream unsubscribes its inbox, so NATS sends no more), then give it all back.
    let mut buffered = Vec::new();
    while let Some(Some(Ok(msg))) = messages.next().now_or_never() {
        if let Some(reply) = msg.message.reply {
            buffered.push(reply);
        }
    }
    drop(messages);
    for reply in buffered {
        let _ = acks.send(AckCmd::Send(reply, NAK));
    }
    give_back(&held, &acks);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nak_says_nak_delay_in_nanoseconds() {
        let want = format!("-NAK {{\"delay\": {}}}", NAK_DELAY.as_nanos());
        assert_eq!(NAK, want.as_bytes());
        assert!(NAK_DELAY > PULL_EXPIRES);
    }
}
