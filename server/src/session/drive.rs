//! The socket loop of one connection ([`drive`]): writing what is queued, reading the
//! client's frames, pings and the silence deadline; and settling what was written.

use std::{pin::Pin, time::Duration};

use impush_core::{config::LimitsConfig, protocol::ClientFrame};
use tokio::{
    sync::mpsc,
    time::{Instant, Sleep},
};

use super::{
    acks::{AckSource, Ackable},
    close,
    outbox::Step,
    rate::InboundRate,
    read::{Incoming, ReadError, Reader},
    socket::{reply_close, Parts, Socket},
    wire::{Control, Violation},
    Outgoing, SessionHandle, Wake,
};
use crate::{
    metrics::{since_ms, unix_now_us, CloseKind, InKind},
    settle::{ClientReport, Tracked},
};

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

/// The ping timer: one timer for two deadlines, the next ping and the moment the peer will
/// have been silent for the whole limit. Frames move `last_seen` without touching the timer;
/// it is re-armed when it fires, so a silent peer is closed when its silence reaches the
/// limit, not at the first ping after that (up to a whole `ping_interval` later).
struct Clock {
    timer: Pin<Box<Sleep>>,
    next_ping: Instant,
    last_seen: Instant,
    interval: Duration,
    silence_limit: Duration,
}

impl Clock {
    fn new(limits: &LimitsConfig) -> Self {
        let now = Instant::now();
        let silence_limit = limits.ping_interval + limits.pong_timeout;
        let next_ping = now + limits.ping_interval;
        Self {
            timer: Box::pin(tokio::time::sleep_until(next_ping.min(now + silence_limit))),
            next_ping,
            last_seen: now,
            interval: limits.ping_interval,
            silence_limit,
        }
    }

    /// The timer fired: `Err` when the peer was silent too long; otherwise queues a ping if
    /// one is due (the caller writes it) and re-arms.
    fn fired(&mut self, handle: &SessionHandle) -> Result<bool, ()> {
        let now = Instant::now();
        if now >= self.last_seen + self.silence_limit {
            return Err(());
        }
        let ping = now >= self.next_ping;
        if ping {
            handle.send_control(Control::ping());
            // A whole interval after this ping, however late it goes out.
            self.next_ping = now + self.interval;
        }
        let at = self.next_ping.min(self.last_seen + self.silence_limit);
        self.timer.as_mut().reset(at);
        Ok(ping)
    }
}

/// Drives one accepted connection until it must close; returns why and, when a close frame is
/// owed, the socket to send it on (see [`close_socket`](super::close_socket)).
pub(crate) async fn drive(
    socket: Socket,
    handle: &SessionHandle,
    ctx: Context<'_>,
) -> (End, Option<Socket>) {
    let limits = ctx.limits;
    let metrics = &handle.metrics;
    let Parts {
        conn, mut reader, ..
    } = socket.into_parts();
    handle.install(conn, ctx.must_ack);
    // Frames held back by flow control (too many unacked): an ack lets them out.
    let mut held = false;
    let mut rate = InboundRate::new(limits.inbound_rate, limits.inbound_burst);
    let mut clock = Clock::new(limits);
    // Bytes that came with the upgrade request are handled first.
    let mut unread = reader.has_bytes();

    let end = 'session: loop {
        if std::mem::take(&mut unread) {
            match on_frames(
                &mut reader,
                handle,
                ctx,
                &mut rate,
                &mut held,
                clock.last_seen,
            ) {
                Ok(false) => {}
                Ok(true) => {
                    if let Err(end) = flush(handle, ctx, &mut held, &mut clock).await {
                        break end;
                    }
                }
                Err(Closing::End(end)) => break end,
                Err(Closing::Reply(code)) => {
                    if let Some((conn, unfinished)) = handle.uninstall() {
                        let parts = Parts {
                            conn,
                            reader,
                            unfinished,
                            max_payload: limits.max_frame_bytes,
                        };
                        Box::pin(reply_close(parts, code)).await;
                    }
                    return (End::Gone, None);
                }
            }
        }
        tokio::select! {
            biased;
            wake = std::future::poll_fn(|cx| handle.poll_wake(cx)) => {
                if let Wake::Close(code) = wake {
                    break End::Close(code);
                }
                if let Err(end) = flush(handle, ctx, &mut held, &mut clock).await {
                    break end;
                }
            }
            read = std::future::poll_fn(|cx| handle.poll_read(cx, &mut reader)) => {
                clock.last_seen = Instant::now();
                match read {
                    Ok(()) => unread = true,
                    Err(_) => break End::Gone,
                }
            }
            () = &mut clock.timer => {
                match clock.fired(handle) {
                    Err(()) => {
                        metrics.close(CloseKind::DeadPeer);
                        tracing::info!(client = %handle.client, "closing silent connection");
                        // The peer is not answering; a close frame would go unread.
                        break 'session End::Gone;
                    }
                    Ok(false) => {}
                    Ok(true) => {
                        if let Err(end) = flush(handle, ctx, &mut held, &mut clock).await {
                            break end;
                        }
                    }
                }
            }
        }
    };
    let socket = handle.uninstall().and_then(|(conn, unfinished)| match end {
        End::Close(_) => Some(Socket::from_parts(Parts {
            conn,
            reader,
            unfinished,
            max_payload: limits.max_frame_bytes,
        })),
        End::Gone => None,
    });
    (end, socket)
}

/// Writes what is queued. While the socket's buffer is full it waits for room, and gives up
/// when the connection must close or its peer has been silent for the whole limit: a peer
/// that stopped reading also stops answering pings, so it is dead even though the write
/// never fails (the kernel keeps the socket open).
async fn flush(
    handle: &SessionHandle,
    ctx: Context<'_>,
    held: &mut bool,
    clock: &mut Clock,
) -> Result<(), End> {
    let metrics = &handle.metrics;
    let mut written = Vec::new();
    loop {
        let mut budget = if ctx.must_ack {
            ctx.limits.max_unacked.saturating_sub(handle.unacked())
        } else {
            usize::MAX
        };
        let step = handle.write_queued(&mut budget, &mut written);
        if !written.is_empty() {
            settle_written(handle, ctx, &mut written);
        }
        match step {
            Step::Done { held: holding } => {
                if holding && !*held {
                    metrics.flow_control_hold();
                }
                *held = holding;
                return Ok(());
            }
            Step::Failed => return Err(End::Gone),
            Step::Blocked => {}
        }
        tokio::select! {
            biased;
            // A slow consumer is closed while its write is stuck; stop waiting.
            code = std::future::poll_fn(|cx| handle.poll_closing(cx)) => return Err(End::Close(code)),
            () = std::future::poll_fn(|cx| handle.poll_writable(cx)) => {}
            () = &mut clock.timer => {
                if clock.fired(handle).is_err() {
                    metrics.close(CloseKind::DeadPeer);
                    tracing::info!(client = %handle.client, "closing a connection whose writes are stuck");
                    return Err(End::Gone);
                }
            }
        }
    }
}

/// Settles frames written whole: only then are point-to-point frames delivered and pending
/// an ack (required with `must_ack`; otherwise remembered when their sender wants receipts, or
/// they came from the offline inbox). Delivery latency is observed here (`docs/design.md`
/// section 17): each live point-to-point frame, and the oldest sampled live publication.
fn settle_written(handle: &SessionHandle, ctx: Context<'_>, written: &mut Vec<Outgoing>) {
    let metrics = &handle.metrics;
    // The oldest live channel message or broadcast that carries its publish time (unix ms;
    // 0: none; only a sample of members get it, see `metrics::sampled_ts`): at most one
    // latency observation per batch keeps the fan-out path free of per-frame metrics.
    let oldest = written
        .iter()
        .map(|o| o.published)
        .filter(|p| *p != 0)
        .min()
        .unwrap_or(0);
    let tracked = written.iter().any(|o| o.token.is_some());
    let now_us = if oldest != 0 || tracked {
        unix_now_us()
    } else {
        0
    };
    if oldest != 0 {
        metrics.channel_latency.observe_us(since_ms(now_us, oldest));
    }
    if !tracked {
        written.clear();
        return;
    }
    let cap = ctx.limits.max_pending_acks;
    handle.with_acks(|pending| {
        for token in written.drain(..).filter_map(|o| o.token) {
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
}

/// How reading the client's frames ended the session.
enum Closing {
    End(End),
    /// The client sent a close frame (with this code): answer it.
    Reply(Option<u16>),
}

/// Handles every complete frame read; `Ok(true)` when a control frame (a pong) waits to be
/// written.
fn on_frames(
    reader: &mut Reader,
    handle: &SessionHandle,
    ctx: Context<'_>,
    rate: &mut InboundRate,
    held: &mut bool,
    now: Instant,
) -> Result<bool, Closing> {
    let metrics = &handle.metrics;
    let mut flush = false;
    loop {
        let msg = match reader.next(ctx.limits.max_frame_bytes) {
            None => return Ok(flush),
            Some(Ok(m)) => m,
            Some(Err(ReadError::Violation(Violation::TooLarge))) => {
                metrics.close(CloseKind::TooLarge);
                return Err(Closing::End(End::Close(close::TOO_LARGE)));
            }
            Some(Err(ReadError::Violation(Violation::InvalidUtf8))) => {
                metrics.close(CloseKind::InvalidData);
                return Err(Closing::End(End::Close(close::INVALID_DATA)));
            }
            Some(Err(_)) => return Err(Closing::End(End::Gone)),
        };
        // Acks of delivered messages are free: a receiver acking a burst (or its inbox) must
        // not be closed for keeping up. Everything else is charged.
        let charged = match &msg {
            Incoming::Text(text) => match on_client_text(handle, ctx, text) {
                Charge::Charged => true,
                Charge::Free => {
                    if std::mem::take(held) {
                        // An ack freed room: write what flow control held back.
                        handle.requeue();
                    }
                    false
                }
            },
            Incoming::Binary | Incoming::Ping(_) => true,
            Incoming::Pong | Incoming::Close(_) => false,
        };
        if charged && !rate.take(now) {
            metrics.close(CloseKind::RateLimited);
            tracing::info!(client = %handle.client, "closing a client over its frame rate");
            return Err(Closing::End(End::Close(close::POLICY)));
        }
        match msg {
            Incoming::Close(code) => return Err(Closing::Reply(code)),
            Incoming::Ping(payload) => {
                handle.send_control(Control::pong(payload));
                flush = true;
            }
            Incoming::Binary => metrics.inbound(InKind::Ignored),
            Incoming::Text(_) | Incoming::Pong => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(Socket, &'a SessionHandle, Context<'a>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection is one task waiting in this future: it is per-socket memory.
    #[test]
    fn session_future_stays_small() {
        let size = future_size(drive);
        eprintln!("session future: {size} bytes");
        assert!(size <= 1024, "session future grew to {size} bytes");
    }
}
