//! Several payloads in one AMQP message.
//!
//! Publishes to one topic that queue up behind the one in flight go out as one message (see
//! `publish`). A message holding a single payload is sent as is, so other AMQP clients can read
//! what impush publishes one at a time; a message holding several has the AMQP `type` property
//! [`BATCH_TYPE`] and a body of `u32` big-endian length + bytes, per payload, in publish order.

use bytes::{BufMut, Bytes};

/// The `type` property of a message that carries several payloads.
pub(crate) const BATCH_TYPE: &str = "impush.batch";

/// The body of a message carrying `payloads`.
pub(crate) fn encode<'a>(payloads: impl Iterator<Item = &'a Bytes> + Clone) -> Vec<u8> {
    let size: usize = payloads.clone().map(|p| 4 + p.len()).sum();
    let mut body = Vec::with_capacity(size);
    for p in payloads {
        // Payloads are far below 4 GiB: RabbitMQ refuses messages over 512 MiB.
        body.put_u32(u32::try_from(p.len()).unwrap_or(u32::MAX));
        body.put_slice(p);
    }
    body
}

/// The payloads of a batch body, sharing its memory.
///
/// # Errors
/// A description of the damage when `body` is not a well-formed batch.
pub(crate) fn decode(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let Some(len) = body.get(at..at + 4) else {
            return Err(format!("truncated length at byte {at}"));
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| format!("payload at byte {start} runs past the end"))?;
        out.push(body.slice(start..end));
        at = end;
    }
    if out.is_empty() {
        return Err("empty batch".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let payloads = vec![
            Bytes::new(),
            Bytes::from_static(b"one"),
            Bytes::from(vec![0u8; 70_000]),
            Bytes::from_static(b"\xff\x00"),
        ];
        let body = Bytes::from(encode(payloads.iter()));
        assert_eq!(decode(&body).unwrap(), payloads);
    }

    #[test]
    fn damaged_batches_are_refused() {
        let body = Bytes::from(encode([Bytes::from_static(b"abc")].iter()));
        assert!(decode(&body.slice(..5)).is_err());
        assert!(decode(&body.slice(..2)).is_err());
        assert!(decode(&Bytes::new()).is_err());
    }
}
