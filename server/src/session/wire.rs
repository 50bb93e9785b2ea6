//! WebSocket framing (RFC 6455, no extensions) as the server speaks it: headers of the
//! unmasked frames it sends, and the parsed head of a masked frame a client sent.
//!
//! The session does its own framing instead of going through a WebSocket library so that a
//! frame can be written to an idle socket straight from the fan-out loop (one `writev` of
//! header and shared payload, no copy, no task wake-up), and so that an idle connection holds
//! no read or write buffer (`docs/design.md` section 12).

/// Frame opcodes.
pub(crate) mod opcode {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// The longest payload a control frame may carry.
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// The header of a final, unmasked frame: 2, 4 or 10 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a final frame of `opcode` carrying `payload` bytes.
    #[inline]
    pub(crate) fn new(opcode: u8, payload: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let len = if payload < 126 {
            // Fits in 7 bits: the cast cannot truncate.
            bytes[1] = payload as u8;
            2
        } else if let Ok(short) = u16::try_from(payload) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    /// The header's bytes.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// How long a frame with this header and `payload` bytes is on the wire.
    #[inline]
    pub(crate) fn frame_len(payload: usize) -> usize {
        let header = if payload < 126 {
            2
        } else if payload <= usize::from(u16::MAX) {
            4
        } else {
            10
        };
        header + payload
    }
}

/// A complete control frame the server sends (ping, pong, close): header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Control {
    bytes: [u8; 2 + MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl Control {
    fn new(opcode: u8, payload: &[u8]) -> Self {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mut bytes = [0u8; 2 + MAX_CONTROL_PAYLOAD];
        bytes[0] = 0x80 | opcode;
        // At most 125: the cast cannot truncate.
        bytes[1] = payload.len() as u8;
        bytes[2..2 + payload.len()].copy_from_slice(payload);
        Self {
            bytes,
            len: 2 + payload.len() as u8,
        }
    }

    /// An empty ping.
    pub(crate) fn ping() -> Self {
        Self::new(opcode::PING, &[])
    }

    /// The pong answering a ping that carried `payload`.
    pub(crate) fn pong(payload: &[u8]) -> Self {
        Self::new(opcode::PONG, payload)
    }

    /// A close frame with `code` and no reason.
    pub(crate) fn close(code: u16) -> Self {
        Self::new(opcode::CLOSE, &code.to_be_bytes())
    }

    /// A close frame without a code (the answer to a close frame that carried none).
    pub(crate) fn close_empty() -> Self {
        Self::new(opcode::CLOSE, &[])
    }

    /// The frame's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Why a client's bytes are not a frame the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A frame (or a fragmented message) larger than `limits.max_frame_bytes`: 1009.
    TooLarge,
    /// A text message that is not UTF-8: 1007.
    InvalidUtf8,
    /// Anything else the protocol forbids (unmasked, reserved bits or opcodes, a bad control
    /// frame, a continuation of nothing): the connection is dropped.
    Protocol,
}

/// The head of a client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) mask: [u8; 4],
    /// Header bytes, mask included.
    pub(crate) header_len: usize,
    pub(crate) payload_len: usize,
}

impl Head {
    /// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete. A payload
    /// longer than `max_payload` is refused from its length alone, before any of it is read.
    pub(crate) fn parse(buf: &[u8], max_payload: usize) -> Result<Option<Head>, Violation> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            // No extension was negotiated: reserved bits must be clear.
            return Err(Violation::Protocol);
        }
        let op = b0 & 0x0F;
        match op {
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin || usize::from(b1 & 0x7F) > MAX_CONTROL_PAYLOAD {
                    return Err(Violation::Protocol);
                }
            }
            _ => return Err(Violation::Protocol),
        }
        if b1 & 0x80 == 0 {
            // Every client frame is masked.
            return Err(Violation::Protocol);
        }
        let (len, at) = match b1 & 0x7F {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            n => (u64::from(n), 2),
        };
        let payload_len = match usize::try_from(len) {
            Ok(l) if l <= max_payload => l,
            _ => return Err(Violation::TooLarge),
        };
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Head {
            fin,
            opcode: op,
            mask: [m[0], m[1], m[2], m[3]],
            header_len: at + 4,
            payload_len,
        }))
    }
}

/// Unmasks a client payload in place.
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// What a close frame's payload says: the code, if it carried one a peer may send.
pub(crate) fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            // 1005, 1006 and 1015 only ever describe a close locally; below 1000 is unused.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid || std::str::from_utf8(reason).is_err() {
                return Err(Violation::Protocol);
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(op: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        v.extend_from_slice(&p);
        v
    }

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(Header::new(opcode::TEXT, 5).as_slice(), &[0x81, 5]);
        assert_eq!(Header::new(opcode::TEXT, 125).as_slice(), &[0x81, 125]);
        assert_eq!(
            Header::new(opcode::TEXT, 126).as_slice(),
            &[0x81, 126, 0, 126]
        );
        assert_eq!(
            Header::new(opcode::TEXT, 65535).as_slice(),
            &[0x81, 126, 0xFF, 0xFF]
        );
        assert_eq!(
            Header::new(opcode::TEXT, 65536).as_slice(),
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        for n in [0, 1, 125, 126, 65535, 65536, 1 << 20] {
            assert_eq!(
                Header::frame_len(n),
                Header::new(opcode::TEXT, n).as_slice().len() + n
            );
        }
        assert_eq!(Control::ping().as_slice(), &[0x89, 0]);
        assert_eq!(Control::close(4008).as_slice(), &[0x88, 2, 0x0F, 0xA8]);
        assert_eq!(Control::pong(b"hi").as_slice(), &[0x8A, 2, b'h', b'i']);
    }

    #[test]
    fn a_masked_frame_parses_at_every_length_encoding_and_not_before_it_is_whole() {
        let mask = [1, 2, 3, 4];
        for n in [0usize, 3, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let frame = masked(opcode::TEXT, true, &payload, mask);
            let head = Head::parse(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!((head.fin, head.opcode, head.payload_len), (true, 1, n));
            assert_eq!(head.header_len + n, frame.len());
            let mut body = frame[head.header_len..].to_vec();
            unmask(&mut body, head.mask);
            assert_eq!(body, payload);
            for cut in 0..head.header_len {
                assert_eq!(Head::parse(&frame[..cut], 1 << 20), Ok(None), "cut {cut}");
            }
        }
    }

    #[test]
    fn forbidden_frames_are_refused() {
        let mask = [9, 9, 9, 9];
        let too_big = masked(opcode::TEXT, true, &[b'x'; 200], mask);
        assert_eq!(Head::parse(&too_big, 199), Err(Violation::TooLarge));
        assert!(Head::parse(&too_big, 200).unwrap().is_some());
        // A 64-bit length is refused from the header alone.
        let huge = [0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(Head::parse(&huge, 1 << 20), Err(Violation::TooLarge));
        let unmasked = [0x81, 0x01, b'x'];
        assert_eq!(Head::parse(&unmasked, 100), Err(Violation::Protocol));
        let rsv = masked(opcode::TEXT | 0x40, true, b"x", mask);
        assert_eq!(Head::parse(&rsv, 100), Err(Violation::Protocol));
        let reserved_op = masked(0x3, true, b"x", mask);
        assert_eq!(Head::parse(&reserved_op, 100), Err(Violation::Protocol));
        let fragmented_ping = masked(opcode::PING, false, b"x", mask);
        assert_eq!(Head::parse(&fragmented_ping, 100), Err(Violation::Protocol));
        let long_ping = masked(opcode::PING, true, &[0; 126], mask);
        assert_eq!(Head::parse(&long_ping, 1000), Err(Violation::Protocol));
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_code(&[]), Ok(None));
        assert_eq!(close_code(&[3]), Err(Violation::Protocol));
        assert_eq!(close_code(&[0x03, 0xE8]), Ok(Some(1000)));
        assert_eq!(close_code(&[0x03, 0xE8, b'o', b'k']), Ok(Some(1000)));
        assert_eq!(close_code(&[0x03, 0xED]), Err(Violation::Protocol), "1005");
        assert_eq!(close_code(&[0x03, 0xE8, 0xFF]), Err(Violation::Protocol));
    }
}
