//! Which id a send gets (`docs/design.md` section 7): the body's `id`, else one derived from its
//! `Idempotency-Key` header, else a new one. The first two make a send idempotent: a retry
//! carries the same id, so nodes deliver it once, and the answer is computed from the request
//! and the id alone, so a retry on any node answers like the first call.
//!
//! A request with both is not refused (no schema can say "not both", and either makes the send
//! idempotent): the `id` the caller chose names the message.

use axum::http::HeaderMap;
use impush_core::{idempotency::IdempotencyKey, MessageId};
use serde::{Deserialize, Deserializer};

use super::error::ApiError;

/// The request header naming a send.
pub(crate) const HEADER: &str = "idempotency-key";

/// The id of a send: the body's `id`, else from its `Idempotency-Key` (through `derive`, which
/// scopes the key to the kind of send), else new.
///
/// # Errors
/// `400 invalid_idempotency_key` for a header that is not 1 to 128 printable ASCII characters
/// or is given twice (also next to an `id`: a malformed request is refused either way).
pub(crate) fn message_id(
    headers: &HeaderMap,
    id: Option<MessageId>,
    derive: impl FnOnce(&IdempotencyKey) -> MessageId,
) -> Result<MessageId, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(id.unwrap_or_else(MessageId::generate));
    };
    if values.next().is_some() {
        return Err(invalid("give one Idempotency-Key header, not several"));
    }
    let key = value
        .to_str()
        .ok()
        .and_then(|v| IdempotencyKey::new(v).ok())
        .ok_or_else(|| {
            invalid("an Idempotency-Key is 1 to 128 printable ASCII characters (space to `~`)")
        })?;
    Ok(id.unwrap_or_else(|| derive(&key)))
}

/// `#[serde(default, deserialize_with = "some_id")]`: an `id` that is present must be a message
/// id; `null` is refused like any other wrong type, as the API document says.
pub(crate) fn some_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MessageId>, D::Error> {
    MessageId::deserialize(d).map(Some)
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("invalid_idempotency_key", message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::{http::HeaderValue, response::IntoResponse};

    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn status(r: Result<MessageId, ApiError>) -> u16 {
        r.unwrap_err().into_response().status().as_u16()
    }

    #[test]
    fn the_key_the_body_id_or_a_new_one() {
        let by_key = |k: &IdempotencyKey| k.message_id();
        let a = message_id(&headers(&[b"order-1"]), None, by_key).unwrap();
        let b = message_id(&headers(&[b"order-1"]), None, by_key).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, IdempotencyKey::new("order-1").unwrap().message_id());
        let chosen: MessageId = "my-id".parse().unwrap();
        assert_eq!(
            message_id(&HeaderMap::new(), Some(chosen.clone()), by_key).unwrap(),
            chosen
        );
        let x = message_id(&HeaderMap::new(), None, by_key).unwrap();
        let y = message_id(&HeaderMap::new(), None, by_key).unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn bad_keys_are_refused() {
        let by_key = |k: &IdempotencyKey| k.message_id();
        let long = vec![b'k'; 129];
        for bad in [&b""[..], &long, b"caf\xc3\xa9", b"tab\there"] {
            assert_eq!(status(message_id(&headers(&[bad]), None, by_key)), 400);
        }
        assert_eq!(
            status(message_id(&headers(&[b"a", b"b"]), None, by_key)),
            400
        );
        let chosen: MessageId = "my-id".parse().unwrap();
        let bad_key = message_id(&headers(&[b""]), Some(chosen.clone()), by_key);
        assert_eq!(status(bad_key), 400);
        // Both: the chosen id names the message.
        let both = message_id(&headers(&[b"a"]), Some(chosen.clone()), by_key).unwrap();
        assert_eq!(both, chosen);
    }
}
