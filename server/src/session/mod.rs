//! One WebSocket connection: its [`SessionHandle`] (what the node pushes into) and the task
//! that drives the socket ([`drive`]).
//!
//! The session speaks WebSocket itself (`wire`, `read`) on the TCP stream it takes over from
//! the HTTP edge after the upgrade (`socket`). Every write goes through the connection's
//! outbox (`outbox`), one short mutex that holds the queue and the socket:
//!
//! - **Direct writes.** At everyday rates a message reaches each socket alone. A fan-out loop
//!   that says so (`direct`) writes its frame straight to an idle socket (nothing queued,
//!   nothing half written): one `writev` of header and shared payload, no task wake-up. A
//!   large one leaves a share of its sockets to flusher tasks on the runtime's other workers.
//! - **The queue.** Otherwise (a backlog, a busy or full socket, a frame that must wait) the
//!   frame is queued and the session task woken; it writes everything queued, many frames per
//!   `writev`. The queue is bounded in frames and bytes; a client that cannot keep up is closed
//!   with 4008 instead of being buffered without bound. It holds no heap memory while empty.
//!
//! Frames are shared `Utf8Bytes`: a message for many sockets is serialised once.
//!
//! The task does everything else for its connection in one `select!`: the client's frames, the
//! ping timer (one timer for the next ping and the silence deadline), and the close. It is
//! woken through one `AtomicWaker` with two flags beside it: frames queued, and a close code.
//! An idle connection holds no read buffer, no write buffer and no WebSocket library state:
//! its task's future, its handle and its socket (`docs/design.md` section 12).
//!
//! A session knows nothing of the node: it counts into [`Metrics`](crate::metrics::Metrics),
//! settles the [`FrameToken`](crate::settle::FrameToken)s of the frames written, and reports
//! client acks and written offline-inbox frames as
//! [`ClientReport`](crate::settle::ClientReport)s.
//!
//! The messages written here that the client has not acked yet live on the handle (not in the
//! task), so the node can ask whether another socket of the same client still holds one when
//! this one closes (`docs/design.md` section 15).
//!
//! - `handle`: [`SessionHandle`], pushing frames (queued or direct), holding, muting;
//! - `outbox`: the queue and the socket, writing frames;
//! - `direct`: when a delivery loop may write directly;
//! - `share`: a large direct delivery shared out among the runtime's workers;
//! - `drive`: the socket loop, client frames, settling what was written;
//! - `socket`: the connection taken over from the edge, the close handshake;
//! - `upgrade`: the WebSocket handshake of `/ws`;
//! - `wire`, `read`: WebSocket framing, the client's frames;
//! - `acks`: which written messages the client may (or must) still ack;
//! - `rate`: the inbound frame rate limit.

mod acks;
mod direct;
mod drive;
mod handle;
mod link;
mod outbox;
mod rate;
mod read;
mod share;
mod socket;
mod upgrade;
mod wire;

use axum::extract::ws::Utf8Bytes;

pub(crate) use acks::{AckSource, Ackable};
pub(crate) use direct::Pacer;
pub(crate) use drive::{drive, Context, End};
pub(crate) use handle::SessionHandle;
pub(crate) use link::{LinkId, Links};
pub(crate) use share::shared_out;
pub(crate) use socket::{close_socket, Socket};
pub(crate) use upgrade::{UpgradeRejection, WsUpgrade};

use crate::settle::Tracked;

const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"pong"}"#);

/// Close codes of the client protocol (`docs/design.md` section 4).
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// Service restart: reconnect now, to the URL `getUrl` gives (drain, return home).
    pub(crate) const MOVED: u16 = 1012;
    pub(crate) const INVALID_DATA: u16 = 1007;
    pub(crate) const POLICY: u16 = 1008;
    pub(crate) const TOO_LARGE: u16 = 1009;
    pub(crate) const KICKED: u16 = 4001;
    pub(crate) const SLOW: u16 = 4008;
    pub(crate) const REPLACED: u16 = 4009;
}

/// A frame on its way to one connection.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) frame: Utf8Bytes,
    /// Set for point-to-point messages: what to settle or report once written (or dropped).
    pub(crate) token: Option<Tracked>,
    /// A live channel message or broadcast to a member in the latency sample: when the API
    /// accepted it (unix ms), for the delivery latency the writer observes; 0 for every other
    /// frame.
    pub(crate) published: u64,
}

impl Outgoing {
    /// A frame nothing waits on (receipt, pong, a replayed publication).
    pub(crate) fn plain(frame: Utf8Bytes) -> Self {
        Self {
            frame,
            token: None,
            published: 0,
        }
    }

    /// A live channel message or broadcast, accepted by the API at `ts` (unix ms).
    pub(crate) fn published(frame: Utf8Bytes, ts: u64) -> Self {
        Self {
            frame,
            token: None,
            published: ts,
        }
    }
}

/// Why the session task was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The connection must close with this code.
    Close(u16),
    /// Frames were queued.
    Frames,
}

#[cfg(test)]
mod tests;
