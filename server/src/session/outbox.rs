//! [`Outbox`]: a connection's outbound side, behind one short mutex: the frames waiting for the
//! socket, a control frame to slip in between them, and the socket itself while the session
//! drives it.
//!
//! Every write to the socket happens under this lock, so frames never interleave: the session
//! task writes what is queued (many frames per `writev`), and a fan-out loop writes a frame
//! straight to an idle socket (nothing queued, nothing half written) without waking the task.
//! A write the socket does not take whole leaves the rest at the front of the queue, where
//! the task finishes it before anything else goes out.
//!
//! The queue holds no heap memory while empty, which keeps idle sockets cheap.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
};

use super::{
    socket::{Conn, Unfinished},
    wire::{opcode, Control, Header},
    Outgoing,
};

/// Most frames gathered into one `writev`.
const GATHER_FRAMES: usize = 128;

/// What writing from the queue came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Everything writable is written: the queue is empty, or what is left waits for acks.
    Done {
        /// Frames wait because too many written ones are unacked (flow control).
        held: bool,
    },
    /// The socket buffer is full: wait until it is writable.
    Blocked,
    /// The socket failed: the peer is gone.
    Failed,
}

/// What a direct write of one frame came to.
#[derive(Debug)]
pub(super) enum Direct {
    /// Written whole: the caller settles it.
    Written(Outgoing),
    /// Not written (the socket is busy or its buffer full): queue it.
    Queue(Outgoing),
    /// Partly written: it was put at the front of the queue for the task to finish.
    Begun,
}

/// Frames waiting for the writer, and the socket.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) frames: VecDeque<Outgoing>,
    pub(super) bytes: usize,
    /// Set once the connection is gone and its queue discarded: nothing is queued after.
    pub(super) closed: bool,
    /// Bytes of `frames[0]` already written (header included).
    front_written: usize,
    /// A control frame to write at the next frame boundary, and its bytes already written.
    control: Option<Box<(Control, usize)>>,
    /// The socket, while the session task drives it.
    conn: Option<Conn>,
}

impl Outbox {
    pub(super) fn install(&mut self, conn: Conn) {
        self.conn = Some(conn);
    }

    /// Takes the socket back (nothing more is written to it here), with whatever output was
    /// begun and not finished.
    pub(super) fn uninstall(&mut self) -> Option<(Conn, Unfinished)> {
        let conn = self.conn.take()?;
        let mut unfinished = Unfinished::default();
        if self.front_written > 0 {
            if let Some(out) = self.frames.pop_front() {
                self.bytes = self.bytes.saturating_sub(out.frame.len());
                unfinished.frame = Some((out, self.front_written));
            }
            self.front_written = 0;
        }
        unfinished.control = self.control.take().map(|c| *c);
        Some((conn, unfinished))
    }

    pub(super) fn conn(&self) -> Option<&Conn> {
        self.conn.as_ref()
    }

    /// Whether a frame may go straight to the socket: it is there, and nothing is queued or
    /// half written before it.
    pub(super) fn idle(&self) -> bool {
        self.conn.is_some() && self.frames.is_empty() && self.control.is_none()
    }

    /// Whether the socket is there and nothing is half written or waiting before the queued
    /// frames: the front one may be written directly ([`Outbox::take_untracked_front`]).
    pub(super) fn at_frame_boundary(&self) -> bool {
        self.conn.is_some() && self.front_written == 0 && self.control.is_none()
    }

    /// Takes the front frame if it is untracked (a channel or broadcast frame: nothing to
    /// remember or settle but its latency).
    pub(super) fn take_untracked_front(&mut self) -> Option<Outgoing> {
        if self.frames.front()?.token.is_some() {
            return None;
        }
        let out = self.frames.pop_front()?;
        self.bytes = self.bytes.saturating_sub(out.frame.len());
        Some(out)
    }

    /// Puts back a frame [`Outbox::take_untracked_front`] took.
    pub(super) fn requeue_front(&mut self, out: Outgoing) {
        self.bytes += out.frame.len();
        self.frames.push_front(out);
    }

    /// Writes `out` at once if the socket takes it; see [`Direct`]. Call only when
    /// [`Outbox::idle`], or with `out` just taken from the front at a frame boundary.
    pub(super) fn write_direct(&mut self, out: Outgoing) -> Direct {
        let Some(conn) = &self.conn else {
            return Direct::Queue(out);
        };
        let header = Header::new(opcode::TEXT, out.frame.len());
        let total = header.as_slice().len() + out.frame.len();
        let iov = [
            IoSlice::new(header.as_slice()),
            IoSlice::new(out.frame.as_bytes()),
        ];
        match write_vectored(conn, &iov) {
            Ok(n) if n == total => Direct::Written(out),
            Ok(0) | Err(_) => Direct::Queue(out),
            Ok(n) => {
                self.bytes += out.frame.len();
                self.frames.push_front(out);
                self.front_written = n;
                Direct::Begun
            }
        }
    }

    /// Queues a control frame for the next frame boundary; a pending one of the same kind is
    /// replaced (only the latest ping needs its pong).
    pub(super) fn set_control(&mut self, c: Control) {
        match &self.control {
            // Begun: it must be finished; the new one is dropped (a ping or pong is only a
            // keep-alive, and another follows).
            Some(pending) if pending.1 > 0 => {}
            _ => self.control = Some(Box::new((c, 0))),
        }
    }

    /// Writes from the front: the frame begun, a pending control frame, then whole frames,
    /// at most `budget` of them tracked (flow control: the budget is decremented), gathered
    /// into `writev`s of up to `gather` bytes (`limits.write_buffer`; at least one frame each).
    /// Frames written whole move to `written`, in order.
    pub(super) fn write_queued(
        &mut self,
        budget: &mut usize,
        gather: usize,
        written: &mut Vec<Outgoing>,
    ) -> Step {
        loop {
            let Some(conn) = &self.conn else {
                return Step::Done { held: false };
            };
            let mut headers = [Header::new(opcode::TEXT, 0); GATHER_FRAMES];
            let mut iov = [IoSlice::new(&[]); 2 * GATHER_FRAMES + 1];
            let mut n_iov = 0;
            let mut total = 0;
            let mut placed = 0;
            let mut gathered = 0;
            let mut held = false;
            let mut tracked_left = *budget;
            let front_begun = self.front_written > 0;
            for (i, out) in self.frames.iter().enumerate() {
                if i == GATHER_FRAMES || (i > 0 && gathered >= gather) {
                    break;
                }
                let begun = i == 0 && front_begun;
                if out.token.is_some() {
                    // A frame begun is finished whatever the budget.
                    if tracked_left == 0 && !begun {
                        held = true;
                        break;
                    }
                    tracked_left = tracked_left.saturating_sub(1);
                }
                headers[i] = Header::new(opcode::TEXT, out.frame.len());
                gathered += Header::frame_len(out.frame.len());
                placed = i + 1;
            }
            let mut skip = if front_begun { self.front_written } else { 0 };
            let control = self.control.as_ref().map(|c| &c.0.as_slice()[c.1..]);
            let mut control_placed = false;
            for (i, out) in self.frames.iter().take(placed).enumerate() {
                if i == 0 && !front_begun {
                    // Between two frames: the control frame goes first.
                    place_control(
                        &mut iov,
                        &mut n_iov,
                        &mut total,
                        control,
                        &mut control_placed,
                    );
                }
                for part in [headers[i].as_slice(), out.frame.as_bytes()] {
                    let from = skip.min(part.len());
                    skip -= from;
                    if from < part.len() {
                        iov[n_iov] = IoSlice::new(&part[from..]);
                        n_iov += 1;
                        total += part.len() - from;
                    }
                }
                if i == 0 && front_begun {
                    place_control(
                        &mut iov,
                        &mut n_iov,
                        &mut total,
                        control,
                        &mut control_placed,
                    );
                }
            }
            if placed == 0 {
                place_control(
                    &mut iov,
                    &mut n_iov,
                    &mut total,
                    control,
                    &mut control_placed,
                );
            }
            if n_iov == 0 {
                return Step::Done { held };
            }
            let n = match write_vectored(conn, &iov[..n_iov]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Blocked,
                Err(_) => return Step::Failed,
            };
            let mut left = n;
            let mut i = 0;
            while i < placed {
                if i == 0 && !front_begun && control_placed {
                    left = self.account_control(left);
                }
                let Some(out) = self.frames.front() else {
                    break;
                };
                let len = Header::frame_len(out.frame.len()) - self.front_written;
                if left < len {
                    self.front_written += left;
                    left = 0;
                    break;
                }
                left -= len;
                self.front_written = 0;
                if let Some(out) = self.frames.pop_front() {
                    self.bytes = self.bytes.saturating_sub(out.frame.len());
                    if out.token.is_some() {
                        *budget = budget.saturating_sub(1);
                    }
                    written.push(out);
                }
                if i == 0 && front_begun && control_placed {
                    left = self.account_control(left);
                }
                i += 1;
            }
            if placed == 0 && control_placed {
                left = self.account_control(left);
            }
            debug_assert_eq!(left, 0);
            if n < total {
                // The socket buffer is full.
                return Step::Blocked;
            }
            if held || self.frames.is_empty() {
                return Step::Done { held };
            }
        }
    }

    /// Counts `left` written bytes against the pending control frame; returns what is left.
    fn account_control(&mut self, left: usize) -> usize {
        let Some(c) = self.control.as_mut() else {
            return left;
        };
        let rest = c.0.as_slice().len() - c.1;
        if left >= rest {
            self.control = None;
            left - rest
        } else {
            c.1 += left;
            0
        }
    }
}

/// Puts the pending control frame's rest into `iov`, once.
fn place_control<'a>(
    iov: &mut [IoSlice<'a>],
    n_iov: &mut usize,
    total: &mut usize,
    control: Option<&'a [u8]>,
    placed: &mut bool,
) {
    if let (Some(c), false) = (control, *placed) {
        iov[*n_iov] = IoSlice::new(c);
        *n_iov += 1;
        *total += c.len();
        *placed = true;
    }
}

/// One non-blocking `writev`, retried when interrupted.
fn write_vectored(conn: &Conn, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match conn.stream.try_write_vectored(iov) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
