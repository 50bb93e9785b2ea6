//! Which of a [`FaultProxy`](super::FaultProxy)'s connections its switches act on, told from
//! the first bytes the client sends: one proxy in front of a broker that every process of a
//! cluster reaches at the same address can then cut one node's links and spare the others'.
//!
//! Kafka is the case that needs it: a Kafka client connects where the broker advertises
//! itself, so every node of a cluster reaches the broker at one advertised address, and the
//! only thing that tells one node's connections from another's is the client id in each
//! request's header.

use std::{fmt, sync::Arc};

/// What a [`Selector`] makes of the bytes a client sent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The switches act on this connection.
    Faulted,
    /// This connection always passes, whatever the switches say.
    Spared,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Tells a connection's [`Verdict`] from what its client sent first (up to
/// [`Selector::MAX_PREFIX`] bytes). A connection whose client sends nothing within
/// [`Selector::WAIT`], or more than that many bytes without a verdict, is faulted: a cut
/// never leaks through a connection the selector could not place.
#[derive(Clone)]
pub struct Selector(Arc<Judge>);

/// What a [`Selector`] runs on the first bytes.
type Judge = dyn Fn(&[u8]) -> Verdict + Send + Sync;

impl Selector {
    /// The most bytes read before a verdict.
    pub const MAX_PREFIX: usize = 4096;
    /// How long the client has to send them.
    pub const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    /// A selector from a function of the first bytes.
    pub fn new(f: impl Fn(&[u8]) -> Verdict + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Faults the connections whose first Kafka request carries the client id `id` (a
    /// client's `client.id` property) and spares every other.
    ///
    /// Every Kafka request starts with its size (4 bytes), API key (2), API version (2) and
    /// correlation id (4), then the client id as a string with a 2-byte length (-1: none), in
    /// every request header version, flexible ones included.
    pub fn kafka_client_id(id: &str) -> Self {
        let id = id.as_bytes().to_vec();
        Self::new(move |first| {
            let Some(len) = first.get(12..14) else {
                return Verdict::NeedMore;
            };
            let len = i16::from_be_bytes([len[0], len[1]]);
            let Ok(len) = usize::try_from(len) else {
                return Verdict::Spared; // no client id
            };
            match first.get(14..14 + len) {
                None => Verdict::NeedMore,
                Some(got) if got == id.as_slice() => Verdict::Faulted,
                Some(_) => Verdict::Spared,
            }
        })
    }

    pub(super) fn verdict(&self, first: &[u8]) -> Verdict {
        (self.0)(first)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Selector")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Kafka request header (v1) with `client_id`, then some body.
    fn request(client_id: Option<&str>) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0, 0, 18, 0, 3, 0, 0, 0, 1];
        match client_id {
            Some(id) => {
                b.extend_from_slice(&i16::try_from(id.len()).unwrap().to_be_bytes());
                b.extend_from_slice(id.as_bytes());
            }
            None => b.extend_from_slice(&(-1i16).to_be_bytes()),
        }
        b.extend_from_slice(b"body");
        b
    }

    #[test]
    fn a_kafka_client_is_told_by_its_id() {
        let s = Selector::kafka_client_id("impush-cut");
        let cut = request(Some("impush-cut"));
        assert_eq!(s.verdict(&cut), Verdict::Faulted);
        for n in 0..14 + "impush-cut".len() {
            assert_eq!(s.verdict(&cut[..n]), Verdict::NeedMore, "{n} bytes");
        }
        assert_eq!(s.verdict(&request(Some("impush"))), Verdict::Spared);
        assert_eq!(s.verdict(&request(Some("impush-cut-2"))), Verdict::Spared);
        assert_eq!(s.verdict(&request(None)), Verdict::Spared);
    }
}
