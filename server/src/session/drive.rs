//! The socket loop of one connection ([`drive`]), its close handshake ([`close_socket`]),
//! writing queued frames and reading the client's.

use std::{
    collections::VecDeque,
    future::Future,
    pin::{pin, Pin},
    task::Poll,
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use impush_core::{config::LimitsConfig, protocol::ClientFrame};
use tokio::{sync::mpsc, time::Instant};

use super::{
    acks::{AckSource, Ackable},
    close,
    rate::InboundRate,
    Outgoing, SessionHandle, Wake,
};
use crate::{
    metrics::{since_ms, unix_now_us, CloseKind, InKind},
    settle::{ClientReport, Tracked},
};

/// How long a closing connection may take to get its close frame out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the loop ended, and whether a close frame should be sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// Close with this code.
    Close(u16),
    /// The peer is gone or closed first: nothing to send.
    Gone,
}

/// What a session needs from its node: limits, and where acks and written inbox frames go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    pub(crate) limits: &'a LimitsConfig,
    pub(crate) reports: &'a mpsc::UnboundedSender<ClientReport>,
    /// Every point-to-point message stays pending until the client acks it (offline inbox on
    /// with `require_ack`), at most `limits.max_unacked` at once.
    pub(crate) must_ack: bool,
}

/// Drives one accepted connection until it must close; returns why and, when a close frame is
/// owed, the socket to send it on (see [`close_socket`]).
pub(crate) async fn drive(
    mut socket: WebSocket,
    handle: &SessionHandle,
    ctx: Context<'_>,
) -> (End, Option<WebSocket>) {
    let limits = ctx.limits;
    let metrics = &handle.metrics;
    // Frames held back by flow control (too many unacked): an ack lets them out.
    let mut held = false;
    let mut rate = InboundRate::new(limits.inbound_rate, limits.inbound_burst);
    let mut last_seen = Instant::now();
    let silence_limit = limits.ping_interval + limits.pong_timeout;
    // One timer for two deadlines: the next ping, and the moment the peer will have been
    // silent for the whole limit. Frames move `last_seen` without touching the timer; it is
    // re-armed when it fires, so a silent peer is closed when its silence reaches the limit,
    // not at the first ping after that (up to a whole `ping_interval` later).
    let mut next_ping = Instant::now() + limits.ping_interval;
    let mut timer = Box::pin(tokio::time::sleep_until(
        next_ping.min(last_seen + silence_limit),
    ));

    let end = loop {
        tokio::select! {
            biased;
            wake = std::future::poll_fn(|cx| handle.poll_wake(cx)) => {
                if let Wake::Close(code) = wake {
                    break End::Close(code);
                }
                let budget = if ctx.must_ack {
                    limits.max_unacked.saturating_sub(handle.unacked())
                } else {
                    usize::MAX
                };
                let (batch, holding) = handle.take_within(budget);
                if holding && !held {
                    metrics.flow_control_hold();
                }
                held = holding;
                if batch.is_empty() {
                    continue;
                }
                let mut write = pin!(write_batch(&mut socket, batch, handle, ctx));
                // Most writes complete at once (the socket buffer has room): then no timer is
                // armed for the dead-peer check below.
                if let Poll::Ready(res) = poll_once(write.as_mut()).await {
                    if res.is_err() {
                        break End::Gone;
                    }
                    continue;
                }
                tokio::select! {
                    biased;
                    // A slow consumer is closed while its write is stuck; stop waiting.
                    code = std::future::poll_fn(|cx| handle.poll_closing(cx)) => break End::Close(code),
                    res = write => if res.is_err() { break End::Gone },
                    // A peer that stopped reading also stops answering pings: it is dead even
                    // though the write never fails (the kernel keeps the socket open).
                    () = tokio::time::sleep_until(last_seen + silence_limit) => {
                        metrics.close(CloseKind::DeadPeer);
                        tracing::info!(client = %handle.client, "closing a connection whose writes are stuck");
                        break End::Gone;
                    }
                }
            }
            msg = socket.next() => {
                last_seen = Instant::now();
                // Acks of delivered messages are free: a receiver acking a burst (or its
                // inbox) must not be closed for keeping up. Everything else is charged.
                let charged = match &msg {
                    Some(Ok(Message::Text(text))) => match on_client_text(handle, ctx, text) {
                        Charge::Charged => true,
                        Charge::Free => {
                            if std::mem::take(&mut held) {
                                // An ack freed room: write what flow control held back.
                                handle.requeue();
                            }
                            false
                        }
                    },
                    Some(Ok(Message::Binary(_) | Message::Ping(_))) => true,
                    _ => false,
                };
                if charged && !rate.take(last_seen) {
                    metrics.close(CloseKind::RateLimited);
                    tracing::info!(client = %handle.client, "closing a client over its frame rate");
                    break End::Close(close::POLICY);
                }
                match msg {
                    None => break End::Gone,
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the close reply; send it so the client sees a
                        // clean close instead of 1006.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush()).await;
                        break End::Gone;
                    }
                    Some(Err(err)) => match protocol_error(err) {
                        Some(ProtocolError::TooLarge) => {
                            metrics.close(CloseKind::TooLarge);
                            break End::Close(close::TOO_LARGE);
                        }
                        Some(ProtocolError::InvalidUtf8) => {
                            metrics.close(CloseKind::InvalidData);
                            break End::Close(close::INVALID_DATA);
                        }
                        None => break End::Gone,
                    },
                    Some(Ok(Message::Text(_))) => {}
                    Some(Ok(Message::Binary(_))) => metrics.inbound(InKind::Ignored),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if now >= last_seen + silence_limit {
                    metrics.close(CloseKind::DeadPeer);
                    tracing::info!(client = %handle.client, "closing silent connection");
                    // The peer is not answering; a close frame would go unread.
                    break End::Gone;
                }
                if now >= next_ping {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break End::Gone;
                    }
                    // A whole interval after this ping, however late it went out.
                    next_ping = Instant::now() + limits.ping_interval;
                }
                timer.as_mut().reset(next_ping.min(last_seen + silence_limit));
            }
        }
    };
    let socket = match end {
        End::Close(_) => Some(socket),
        End::Gone => None,
    };
    (end, socket)
}

/// Polls `fut` once: its output if it completed without waiting, `Pending` otherwise (it can
/// be polled again later).
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Sends the close frame `code` and waits for the client's close reply (reading and dropping
/// whatever it still sends), giving up after a while: a client that stopped reading may never
/// take it. Reading matters: closing a socket with unread data makes the kernel reset the
/// connection, and the client would never see the close code.
pub(crate) async fn close_socket(mut socket: WebSocket, code: u16) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(""),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.next().await {
            if let Message::Close(_) = msg {
                break;
            }
        }
    })
    .await;
}

/// Writes a batch and flushes it; only then are its point-to-point frames delivered and
/// pending an ack (required with `must_ack`; otherwise remembered when their sender wants
/// receipts, or they came from the offline inbox). On an error the unwritten tokens settle
/// as dropped. Delivery latency is observed after the flush (`docs/design.md` section 17): each
/// live point-to-point frame, and the oldest sampled live publication of the batch.
async fn write_batch(
    socket: &mut WebSocket,
    batch: VecDeque<Outgoing>,
    handle: &SessionHandle,
    ctx: Context<'_>,
) -> Result<(), axum::Error> {
    let mut tokens = Vec::new();
    // The oldest live channel message or broadcast in the batch that carries its publish time
    // (unix ms; 0: none; only a sample of members get it, see `metrics::sampled_ts`): at most
    // one latency observation per batch keeps the fan-out path free of per-frame metrics.
    let mut oldest = 0u64;
    for out in batch {
        if out.published != 0 && (oldest == 0 || out.published < oldest) {
            oldest = out.published;
        }
        socket.feed(Message::Text(out.frame)).await?;
        tokens.extend(out.token);
    }
    socket.flush().await?;
    let metrics = &handle.metrics;
    let now_us = if oldest != 0 || !tokens.is_empty() {
        unix_now_us()
    } else {
        0
    };
    if oldest != 0 {
        metrics.channel_latency.observe_us(since_ms(now_us, oldest));
    }
    if tokens.is_empty() {
        return Ok(());
    }
    let cap = ctx.limits.max_pending_acks;
    handle.with_acks(|pending| {
        for token in tokens {
            match token {
                Tracked::Live(token) => {
                    let s = token.settlement();
                    metrics
                        .delivery_latency
                        .observe_us(since_ms(now_us, s.ts()));
                    if ctx.must_ack || s.wants_receipt() {
                        let ackable = Ackable {
                            sender: s.sender().clone(),
                            receipt: s.wants_receipt(),
                            source: AckSource::Live {
                                settlement: s.clone(),
                                receiver: token.receiver(),
                            },
                        };
                        if ctx.must_ack {
                            pending.require(s.id().clone(), ackable);
                        } else {
                            pending.allow(s.id().clone(), ackable, cap);
                        }
                    }
                    token.written();
                }
                Tracked::Stored(s) => {
                    let ackable = Ackable {
                        sender: s.sender.clone(),
                        receipt: s.receipt,
                        source: AckSource::Stored,
                    };
                    if ctx.must_ack {
                        pending.require(s.id.clone(), ackable);
                    } else {
                        pending.allow(s.id.clone(), ackable, cap);
                    }
                    let _ = ctx.reports.send(ClientReport::StoredWritten {
                        id: s.id,
                        sender: s.sender,
                        receiver: handle.client.clone(),
                        receipt: s.receipt,
                    });
                }
            }
        }
    });
    Ok(())
}

/// Whether a client frame counts against its inbound rate.
#[derive(Debug, PartialEq, Eq)]
enum Charge {
    Free,
    Charged,
}

fn on_client_text(handle: &SessionHandle, ctx: Context<'_>, text: &str) -> Charge {
    let metrics = &handle.metrics;
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame::Ping) => {
            metrics.inbound(InKind::Ping);
            handle.push_pong();
            Charge::Charged
        }
        Ok(ClientFrame::Ack { id }) => match handle.with_acks(|p| p.take(&id)) {
            Some(a) => {
                metrics.inbound(InKind::Ack);
                // A live message acked before it settled is never kept as pending; after
                // that (or from the inbox) it may be kept, and the ack removes it.
                let remove = match &a.source {
                    AckSource::Live {
                        settlement,
                        receiver,
                    } => !settlement.acked_early(*receiver) && ctx.must_ack,
                    AckSource::Stored => true,
                };
                let _ = ctx.reports.send(ClientReport::Acked {
                    id,
                    sender: a.sender,
                    receiver: handle.client.clone(),
                    receipt: a.receipt,
                    remove,
                });
                Charge::Free
            }
            // Acks for unknown ids (never delivered here, no receipt asked, or acked twice)
            // must not produce receipts: a client could otherwise forge them.
            None => {
                metrics.inbound(InKind::Ignored);
                Charge::Charged
            }
        },
        Err(_) => {
            metrics.inbound(InKind::Ignored);
            Charge::Charged
        }
    }
}

/// Client errors that get a close code rather than a dropped connection.
enum ProtocolError {
    TooLarge,
    InvalidUtf8,
}

fn protocol_error(err: axum::Error) -> Option<ProtocolError> {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(ProtocolError::TooLarge),
        Some(tungstenite::Error::Utf8(_)) => Some(ProtocolError::InvalidUtf8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(WebSocket, &'a SessionHandle, Context<'a>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection is one task waiting in this future: it is per-socket memory.
    #[test]
    fn session_future_stays_small() {
        let size = future_size(drive);
        eprintln!("session future: {size} bytes");
        assert!(size <= 2048, "session future grew to {size} bytes");
    }
}
