//! [`Socket`]: an upgraded WebSocket connection as the session takes it over from the HTTP
//! edge, and the close handshake at its end ([`close_socket`]).
//!
//! The TCP stream is used through `&self` (`try_read`, `try_write_vectored`, readiness polls),
//! so the session task reads it while the node's fan-out loop writes frames to it directly,
//! both under the outbox's lock (see `outbox`).

use std::{io, time::Duration};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::{
    read::{Incoming, Reader},
    wire::Control,
    Outgoing,
};
use crate::edge::Slot;

/// How long a closing connection may take to get its close frame out.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest client frame read by a socket no session ran on.
const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// The socket of one connection, and what the edge ties to its life (its connection slot).
#[derive(Debug)]
pub(crate) struct Conn {
    pub(super) stream: TcpStream,
    _slot: Option<Slot>,
}

/// Output begun and not finished when the session stopped writing: it goes out before the
/// close frame, or the client would read a broken frame.
#[derive(Debug, Default)]
pub(super) struct Unfinished {
    /// A frame and how many of its bytes (header included) were written.
    pub(super) frame: Option<(Outgoing, usize)>,
    /// A control frame and how many of its bytes were written.
    pub(super) control: Option<(Control, usize)>,
}

/// An upgraded connection handed to a session. Boxed: it is moved through a few futures
/// that keep every argument's slot for their whole life.
#[derive(Debug)]
pub(crate) struct Socket(Box<Parts>);

#[derive(Debug)]
pub(super) struct Parts {
    pub(super) conn: Conn,
    /// Client bytes not handled yet (at first, those that came with the upgrade request).
    pub(super) reader: Reader,
    pub(super) unfinished: Unfinished,
    /// The largest client frame read (`limits.max_frame_bytes`, once a session ran).
    pub(super) max_payload: usize,
}

impl Socket {
    /// Takes over the socket of an upgraded request from the edge; `None` for a connection
    /// the edge did not accept (never, in a node).
    pub(crate) fn from_upgraded(upgraded: hyper::upgrade::Upgraded) -> Option<Self> {
        let (stream, early, slot) = crate::edge::take_socket(upgraded)?;
        Some(Self::new(stream, early, Some(slot)))
    }

    /// A socket over `stream`, `early` the client bytes already read.
    pub(super) fn new(stream: TcpStream, early: Bytes, slot: Option<Slot>) -> Self {
        Self(Box::new(Parts {
            conn: Conn {
                stream,
                _slot: slot,
            },
            reader: Reader::with_bytes(&early),
            unfinished: Unfinished::default(),
            max_payload: DEFAULT_MAX_PAYLOAD,
        }))
    }

    pub(super) fn into_parts(self) -> Parts {
        *self.0
    }

    pub(super) fn from_parts(parts: Parts) -> Self {
        Self(Box::new(parts))
    }
}

impl Conn {
    /// Writes all of `bytes`, waiting for room in the socket buffer as needed.
    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Finishes what was begun, then writes `last` (a close frame).
    async fn finish(&self, unfinished: Unfinished, last: &Control) -> io::Result<()> {
        if let Some((out, done)) = unfinished.frame {
            let header = super::wire::Header::new(super::wire::opcode::TEXT, out.frame.len());
            let h = header.as_slice();
            if done < h.len() {
                self.write_all(&h[done..]).await?;
            }
            let skip = done.saturating_sub(h.len());
            self.write_all(&out.frame.as_bytes()[skip..]).await?;
            // Its token drops unsettled-as-written: the client may not read it before the close.
        }
        if let Some((c, done)) = unfinished.control {
            self.write_all(&c.as_slice()[done..]).await?;
        }
        self.write_all(last.as_slice()).await
    }
}

/// Sends the close frame `code` (after finishing any frame begun) and waits for the client's
/// close reply, reading and dropping whatever it still sends, giving up after a while: a
/// client that stopped reading may never take it. Reading matters: closing a socket with
/// unread data makes the kernel reset the connection, and the client would never see the
/// close code.
pub(crate) async fn close_socket(socket: Socket, code: u16) {
    let Parts {
        conn,
        mut reader,
        unfinished,
        max_payload,
    } = socket.into_parts();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if conn
            .finish(unfinished, &Control::close(code))
            .await
            .is_err()
        {
            return;
        }
        loop {
            while let Some(msg) = reader.next(max_payload) {
                match msg {
                    Ok(Incoming::Close(_)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            let filled = std::future::poll_fn(|cx| reader.poll_fill(cx, &conn.stream)).await;
            if filled.is_err() {
                return;
            }
        }
    })
    .await;
}

/// Answers a client's close frame (after finishing any frame begun), so it sees a clean
/// close instead of 1006.
pub(super) async fn reply_close(parts: Parts, code: Option<u16>) {
    let reply = code.map_or_else(Control::close_empty, Control::close);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, parts.conn.finish(parts.unfinished, &reply)).await;
}
