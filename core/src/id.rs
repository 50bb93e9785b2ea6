//! Validated identifiers: client ids, channel names, node ids, message and connection ids.
//!
//! Ids travel in URLs, broker topic names and JSON, so they are checked once, where they enter
//! (config, HTTP bodies, helper calls), and are cheap to clone afterwards (`Arc<str>` inside).

use std::{borrow::Borrow, fmt, ops::Deref, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// Longest client id or channel name, in characters (the name is kept for compatibility).
pub const MAX_ID_BYTES: usize = 128;
/// Longest node id, in bytes (node ids end up in broker topic names).
pub(crate) const MAX_NODE_ID_BYTES: usize = 64;

fn check_text(kind: &'static str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid_id(kind, "must not be empty"));
    }
    // Counted in characters, as JSON Schema's `maxLength` counts (the OpenAPI document).
    let chars = s.chars().count();
    if chars > MAX_ID_BYTES {
        return Err(Error::invalid_id(
            kind,
            format!("{chars} characters, at most {MAX_ID_BYTES} allowed"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid_id(
            kind,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_node(s: &str) -> Result<()> {
    const KIND: &str = "node id";
    if s.is_empty() || s.len() > MAX_NODE_ID_BYTES {
        return Err(Error::invalid_id(
            KIND,
            format!("must be 1 to {MAX_NODE_ID_BYTES} bytes"),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::invalid_id(
            KIND,
            format!("`{s}` may only contain ASCII letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` and wraps it.
            ///
            /// # Errors
            /// [`Error::InvalidId`] when `s` breaks the rules of this id kind.
            pub fn new(s: impl AsRef<str>) -> Result<Self> {
                let s = s.as_ref();
                ($check)(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A client (user, device group) id: 1-128 characters of UTF-8 without control characters.
    ///
    /// All connections of one client id are held by the node the partitioner assigns it.
    ClientId,
    |s| check_text("client id", s)
);

string_id!(
    /// A channel (group, room) name: 1-128 characters of UTF-8 without control characters.
    ChannelName,
    |s| check_text("channel name", s)
);

string_id!(
    /// A server node id: 1-64 bytes of ASCII letters, digits, `-`, `_`, `.`.
    ///
    /// Node ids appear in broker topic names (`{prefix}.inbox.{node}`), hence the narrow alphabet.
    NodeId,
    check_node
);

string_id!(
    /// A message id, generated by the publisher (time-ordered, unique across the cluster).
    MessageId,
    |s: &str| {
        if s.is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
            Err(Error::invalid_id("message id", "must be 1 to 64 characters without control characters"))
        } else {
            Ok(())
        }
    }
);

string_id!(
    /// One WebSocket connection, unique across the cluster and across node restarts.
    ConnectionId,
    |s: &str| check_text("connection id", s)
);

impl MessageId {
    /// A fresh, time-ordered id (UUID v7 in its 32-character hex form).
    pub fn generate() -> Self {
        // Encoded on the stack: one allocation per id, the `Arc`'s. The random bits come from
        // a thread-local generator seeded by the OS (uuid's `fast-rng`), not a `getrandom`
        // call per id, which cost a batch send 6% of the node's CPU (`BENCHMARKS.md`, "Batch
        // sends through HTTP").
        let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
        Self(Arc::from(
            &*uuid::Uuid::now_v7().simple().encode_lower(&mut buf),
        ))
    }
}

/// Validates every id in `items`, failing on the first bad one.
///
/// # Errors
/// The first [`Error::InvalidId`].
pub fn parse_all<T, S>(items: &[S]) -> Result<Vec<T>>
where
    S: AsRef<str>,
    T: std::str::FromStr<Err = Error>,
{
    items.iter().map(|s| s.as_ref().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rules() {
        assert!(ClientId::new("alice").is_ok());
        assert!(ClientId::new("用户-42").is_ok());
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new("a\nb").is_err());
        assert!(ClientId::new("x".repeat(128)).is_ok());
        assert!(ClientId::new("x".repeat(129)).is_err());
    }

    #[test]
    fn node_id_rules() {
        assert!(NodeId::new("n1").is_ok());
        assert!(NodeId::new("node_a.eu-1").is_ok());
        assert!(NodeId::new("n 1").is_err());
        assert!(NodeId::new("n/1").is_err());
        assert!(NodeId::new("").is_err());
    }

    #[test]
    fn ids_deserialize_with_validation() {
        let ok: ClientId = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(ok.as_str(), "bob");
        let err = serde_json::from_str::<ClientId>("\"\"").unwrap_err();
        assert!(err.to_string().contains("client id"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"bob\"");
    }

    #[test]
    fn message_ids_are_unique_and_ordered() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert_ne!(a, b);
        assert!(a < b);
    }
}
