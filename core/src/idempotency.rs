//! Idempotent sends (`docs/design.md` section 7): an [`IdempotencyKey`] chosen by the caller
//! names one message, and its [`MessageId`] is derived from the key alone, so every helper and
//! every node's HTTP API computes the same id for a retry without sharing any state. Nodes
//! remember the ids they delivered for `limits.idempotency_window`, so a retry within it is not
//! delivered twice.
//!
//! The id is the first 128 bits of SHA-256 over a version tag, the kind of send (a message, a
//! message to one named channel, a broadcast) and the key, in hex: the same key used for a
//! message and for a channel message names two different messages.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::{ChannelName, Error, MessageId, Result};

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// A caller-chosen key naming one send: 1 to [`MAX_KEY_BYTES`] printable ASCII characters
/// (space to `~`). Use a fresh random value (a UUID) per message, and the same one for each
/// retry of it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates `key`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty key, one over [`MAX_KEY_BYTES`], or one with a
    /// character outside printable ASCII.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "an idempotency key is 1 to {MAX_KEY_BYTES} characters, not {}",
                key.len()
            )));
        }
        if let Some(c) = key.chars().find(|c| !matches!(c, ' '..='~')) {
            return Err(Error::InvalidArgument(format!(
                "an idempotency key is printable ASCII (space to `~`), not {:?}",
                c
            )));
        }
        Ok(Self(key))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the point-to-point message this key names (`send_message`,
    /// `POST /api/v1/messages`).
    pub fn message_id(&self) -> MessageId {
        self.derive(&["message"])
    }

    /// The id of the message to `channel` this key names (`send_channel_message`,
    /// `POST /api/v1/channels/{name}/messages`).
    pub fn channel_message_id(&self, channel: &ChannelName) -> MessageId {
        self.derive(&["channel", channel.as_str()])
    }

    /// The id of the broadcast this key names (`broadcast`, `POST /api/v1/broadcast`).
    pub fn broadcast_id(&self) -> MessageId {
        self.derive(&["broadcast"])
    }

    /// The id of message number `index` (from 0) of the batch this key names
    /// (`POST /api/v1/messages/batch`): a retried batch must list its messages in the same
    /// order.
    pub fn batch_message_id(&self, index: usize) -> MessageId {
        self.derive(&["batch", &index.to_string()])
    }

    fn derive(&self, scope: &[&str]) -> MessageId {
        let mut h = Sha256::new();
        h.update(b"impush idempotency v1");
        // Parts are separated by a newline, which neither channel names nor keys may hold, so
        // two different scopes or keys never hash the same bytes.
        for part in scope.iter().chain([&self.0.as_str()]) {
            h.update(b"\n");
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut hex = String::with_capacity(32);
        for b in &digest[..16] {
            hex.push_str(&format!("{b:02x}"));
        }
        MessageId::new(hex).expect("32 hex digits are a valid message id")
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_128_bytes() {
        assert!(IdempotencyKey::new("a").is_ok());
        assert!(IdempotencyKey::new("x".repeat(128)).is_ok());
        assert!(IdempotencyKey::new("order 42: retry ~1").is_ok());
        for bad in [
            String::new(),
            "x".repeat(129),
            "tab\there".into(),
            "line\nbreak".into(),
            "é".into(),
            "\u{7f}".into(),
        ] {
            let err = IdempotencyKey::new(bad.clone()).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn ids_depend_on_the_key_and_the_kind_only() {
        let k = IdempotencyKey::new("order-42").unwrap();
        let again = IdempotencyKey::new("order-42").unwrap();
        let other = IdempotencyKey::new("order-43").unwrap();
        let lobby: ChannelName = "lobby".parse().unwrap();
        let hall: ChannelName = "hall".parse().unwrap();
        assert_eq!(k.message_id(), again.message_id());
        assert_ne!(k.message_id(), other.message_id());
        let ids = [
            k.message_id(),
            k.channel_message_id(&lobby),
            k.channel_message_id(&hall),
            k.broadcast_id(),
            k.batch_message_id(0),
            k.batch_message_id(1),
            k.batch_message_id(10),
        ];
        assert_eq!(k.batch_message_id(1), again.batch_message_id(1));
        for (i, a) in ids.iter().enumerate() {
            assert_eq!(a.len(), 32, "{a}");
            assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Stable across builds and platforms: helpers and nodes of different versions agree.
        assert_eq!(
            IdempotencyKey::new("k").unwrap().message_id().as_str(),
            "e28b752989e3094c2245b80f03de67ea"
        );
    }
}
