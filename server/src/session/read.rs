//! [`Reader`]: the client's frames, read from the socket and parsed in place.
//!
//! An idle connection holds no read buffer: one is allocated when bytes arrive and freed once
//! every complete frame in it was handled (clients send little: pings and acks). A frame that
//! arrives in pieces keeps the buffer until it is whole, at most `limits.max_frame_bytes` plus
//! its header; a fragmented message is assembled up to the same bound.

use std::{
    io,
    task::{Context, Poll},
};

use tokio::net::TcpStream;

use super::wire::{self, opcode, Head, Violation};

/// What a read can end with.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client closed its side or the socket failed: the peer is gone.
    Gone,
    /// The client broke the protocol.
    Violation(Violation),
}

impl From<Violation> for ReadError {
    fn from(v: Violation) -> Self {
        Self::Violation(v)
    }
}

/// A complete message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    Text(&'a str),
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The client closes, with this code if it gave one.
    Close(Option<u16>),
}

/// Smallest read: what a handful of acks or pings take.
const READ_CHUNK: usize = 1024;

/// Unparsed bytes and a message being assembled.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    /// Bytes read and not handled yet, from `pos`; unallocated while there are none.
    buf: Vec<u8>,
    pos: usize,
    /// A fragmented message: its opcode, and its payload so far (then, once whole, the
    /// message handed out last).
    frag: Option<Box<(u8, Vec<u8>)>>,
}

impl Reader {
    /// Seeds the buffer with bytes that arrived with the upgrade request.
    pub(crate) fn with_bytes(bytes: &[u8]) -> Self {
        Self {
            buf: bytes.to_vec(),
            pos: 0,
            frag: None,
        }
    }

    /// Whether bytes wait to be parsed (call [`Reader::next`] before reading more).
    pub(crate) fn has_bytes(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Reads what the socket has: ready once some bytes arrived, with `Gone` at end of stream
    /// or on a socket error.
    pub(crate) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        stream: &TcpStream,
    ) -> Poll<Result<(), ReadError>> {
        loop {
            if stream.poll_read_ready(cx).is_pending() {
                return Poll::Pending;
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let want = self.buf.len() + READ_CHUNK;
            if self.buf.capacity() < want {
                self.buf.reserve(want - self.buf.len());
            }
            match stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Poll::Ready(Err(ReadError::Gone)),
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.release_if_empty();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Poll::Ready(Err(ReadError::Gone)),
            }
        }
    }

    fn release_if_empty(&mut self) {
        if self.pos >= self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// The next complete message in the buffer, or `None` until more bytes are read. The
    /// buffer is freed once the last one was handed out (on the next call).
    pub(crate) fn next(&mut self, max_payload: usize) -> Option<Result<Incoming<'_>, ReadError>> {
        if self.frag.as_ref().is_some_and(|f| f.0 == 0) {
            // The message assembled last was handled.
            self.frag = None;
        }
        loop {
            let Some(rest) = self.buf.get(self.pos..) else {
                self.release_if_empty();
                return None;
            };
            let head = match Head::parse(rest, max_payload) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.release_if_empty();
                    return None;
                }
                Err(v) => return Some(Err(v.into())),
            };
            let start = self.pos + head.header_len;
            let end = start + head.payload_len;
            if self.buf.len() < end {
                // The frame is not whole yet: make room for the rest of it at once.
                let need = end - self.pos;
                if self.buf.capacity() - self.pos < need {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.buf.reserve(need - self.buf.len());
                }
                return None;
            }
            self.pos = end;
            let payload = &mut self.buf[start..end];
            wire::unmask(payload, head.mask);
            match (head.opcode, head.fin) {
                (opcode::TEXT | opcode::BINARY, _) if self.assembling() => {
                    return Some(Err(Violation::Protocol.into()));
                }
                (opcode::TEXT, true) => {
                    return Some(match std::str::from_utf8(&self.buf[start..end]) {
                        Ok(text) => Ok(Incoming::Text(text)),
                        Err(_) => Err(Violation::InvalidUtf8.into()),
                    });
                }
                (opcode::BINARY, true) => return Some(Ok(Incoming::Binary)),
                (op @ (opcode::TEXT | opcode::BINARY), false) => {
                    self.frag = Some(Box::new((op, self.buf[start..end].to_vec())));
                }
                (opcode::CONTINUATION, fin) => {
                    let Some(frag) = self.frag.as_mut().filter(|f| f.0 != 0) else {
                        return Some(Err(Violation::Protocol.into()));
                    };
                    if frag.1.len() + (end - start) > max_payload {
                        return Some(Err(Violation::TooLarge.into()));
                    }
                    frag.1.extend_from_slice(&self.buf[start..end]);
                    if fin {
                        return Some(self.assembled());
                    }
                }
                (opcode::PING, _) => return Some(Ok(Incoming::Ping(&self.buf[start..end]))),
                (opcode::PONG, _) => return Some(Ok(Incoming::Pong)),
                (opcode::CLOSE, _) => {
                    return Some(
                        wire::close_code(&self.buf[start..end])
                            .map(Incoming::Close)
                            .map_err(Into::into),
                    );
                }
                _ => return Some(Err(Violation::Protocol.into())),
            }
        }
    }

    /// A fragmented message is being assembled (opcode 0 marks one already handed out).
    fn assembling(&self) -> bool {
        self.frag.as_ref().is_some_and(|f| f.0 != 0)
    }

    /// The fragmented message just completed; its storage is freed on the next call.
    fn assembled(&mut self) -> Result<Incoming<'_>, ReadError> {
        let Some(frag) = self.frag.as_mut() else {
            return Err(Violation::Protocol.into());
        };
        let op = std::mem::replace(&mut frag.0, 0);
        if op == opcode::BINARY {
            frag.1 = Vec::new();
            return Ok(Incoming::Binary);
        }
        match std::str::from_utf8(&frag.1) {
            Ok(text) => Ok(Incoming::Text(text)),
            Err(_) => Err(Violation::InvalidUtf8.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        let mut v = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        wire::unmask(&mut p, mask);
        v.extend_from_slice(&p);
        v
    }

    /// Every message the reader hands out of `bytes`, fed `step` bytes at a time.
    fn read_all(bytes: &[u8], step: usize, max: usize) -> Vec<Result<String, String>> {
        let mut r = Reader::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            r.buf.extend_from_slice(chunk);
            loop {
                let m = match r.next(max) {
                    None => break,
                    Some(Ok(Incoming::Text(t))) => Ok(format!("text:{t}")),
                    Some(Ok(m)) => Ok(format!("{m:?}")),
                    Some(Err(e)) => {
                        out.push(Err(format!("{e:?}")));
                        return out;
                    }
                };
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_the_buffer_is_freed() {
        let mut bytes = frame(opcode::TEXT, true, br#"{"type":"ping"}"#);
        bytes.extend(frame(opcode::PING, true, b"p"));
        bytes.extend(frame(opcode::TEXT, false, b"hel"));
        bytes.extend(frame(opcode::PONG, true, b""));
        bytes.extend(frame(opcode::CONTINUATION, false, b"lo "));
        bytes.extend(frame(opcode::CONTINUATION, true, "wörld".as_bytes()));
        bytes.extend(frame(opcode::BINARY, true, &[0xFF; 300]));
        bytes.extend(frame(opcode::CLOSE, true, &1000u16.to_be_bytes()));
        let want: Vec<Result<String, String>> = vec![
            Ok(r#"text:{"type":"ping"}"#.into()),
            Ok("Ping([112])".into()),
            Ok("Pong".into()),
            Ok("text:hello wörld".into()),
            Ok("Binary".into()),
            Ok("Close(Some(1000))".into()),
        ];
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            assert_eq!(read_all(&bytes, step, 1024), want, "step {step}");
        }
        // Nothing left: the buffer was released.
        let mut r = Reader::with_bytes(&frame(opcode::PONG, true, b""));
        assert_eq!(r.next(10).unwrap().unwrap(), Incoming::Pong);
        assert!(r.next(10).is_none());
        assert_eq!(r.buf.capacity(), 0);
    }

    #[test]
    fn broken_messages_are_refused() {
        let bad_utf8 = frame(opcode::TEXT, true, &[0xC3, 0x28]);
        assert_eq!(
            read_all(&bad_utf8, 64, 100),
            vec![Err("Violation(InvalidUtf8)".into())]
        );
        let mut split_utf8 = frame(opcode::TEXT, false, &[0xC3]);
        split_utf8.extend(frame(opcode::CONTINUATION, true, &[0xA9]));
        assert_eq!(read_all(&split_utf8, 64, 100), vec![Ok("text:é".into())]);
        let mut bad_split = frame(opcode::TEXT, false, &[0xC3]);
        bad_split.extend(frame(opcode::CONTINUATION, true, &[0x28]));
        assert_eq!(
            read_all(&bad_split, 64, 100),
            vec![Err("Violation(InvalidUtf8)".into())]
        );
        let orphan = frame(opcode::CONTINUATION, true, b"x");
        assert_eq!(
            read_all(&orphan, 64, 100),
            vec![Err("Violation(Protocol)".into())]
        );
        let mut interleaved = frame(opcode::TEXT, false, b"a");
        interleaved.extend(frame(opcode::TEXT, true, b"b"));
        assert_eq!(
            read_all(&interleaved, 64, 100),
            vec![Err("Violation(Protocol)".into())]
        );
        let mut long = frame(opcode::TEXT, false, &[b'a'; 60]);
        long.extend(frame(opcode::CONTINUATION, true, &[b'a'; 60]));
        assert_eq!(
            read_all(&long, 64, 100),
            vec![Err("Violation(TooLarge)".into())]
        );
        let big = frame(opcode::TEXT, true, &[b'a'; 101]);
        assert_eq!(
            read_all(&big, 1, 100),
            vec![Err("Violation(TooLarge)".into())]
        );
    }
}
