//! Link ids: a client names each WebSocket it opens (`link=` in the connect URL) and, when it
//! connects again, names the one it left (`replaces=`). A link the client gave up on may still
//! look open to the node (a reset it has not read yet, a frozen path), holding messages written
//! there and never acked; the new connection closes it first, so those messages are back in the
//! inbox before the new connection reads it, ahead of anything newer (`docs/design.md` section
//! 15, "Order per sender").
//!
//! The node keeps a hash of the name, not the name: eight bytes per socket, no allocation. Only
//! the client's own sockets are searched, and names are the client's random strings, so a
//! collision could only close another socket of the same client, which then reconnects.

use std::{
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    num::NonZeroU64,
};

/// The longest link name accepted.
pub(crate) const MAX_LINK: usize = 64;

/// A link name as the node keeps it: non-zero, so `Option<LinkId>` is eight bytes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkId(NonZeroU64);

/// What a connect request says of its links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Links {
    /// This connection's name, when the client gave one.
    pub(crate) this: Option<LinkId>,
    /// The connection of the same client this one takes over from.
    pub(crate) replaces: Option<LinkId>,
}

/// Why the link parameters of a connect request were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("`link` and `replaces` are 1-64 characters of A-Z, a-z, 0-9, `-` and `_`")]
pub(crate) struct BadLink;

impl Links {
    /// Reads the `link` and `replaces` query parameters (either may be absent).
    pub(crate) fn parse(this: Option<&str>, replaces: Option<&str>) -> Result<Self, BadLink> {
        Ok(Self {
            this: this.map(LinkId::parse).transpose()?,
            replaces: replaces.map(LinkId::parse).transpose()?,
        })
    }
}

impl LinkId {
    fn parse(name: &str) -> Result<Self, BadLink> {
        let well_formed = (1..=MAX_LINK).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return Err(BadLink);
        }
        // The same name gives the same id within one process, which is all a node compares.
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        Ok(Self(NonZeroU64::new(hash).unwrap_or(NonZeroU64::MIN)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_compared_by_hash() {
        let a = Links::parse(Some("tab-1_A"), None).unwrap();
        assert!(a.this.is_some() && a.replaces.is_none());
        let b = Links::parse(Some("tab-2"), Some("tab-1_A")).unwrap();
        assert_eq!(b.replaces, a.this);
        assert_ne!(b.this, a.this);
        assert_eq!(Links::parse(None, None).unwrap(), Links::default());
        let long = "x".repeat(MAX_LINK);
        assert!(Links::parse(Some(&long), None).is_ok());
        let too_long = "x".repeat(MAX_LINK + 1);
        for bad in ["", "a b", "tab/1", "é", too_long.as_str()] {
            assert_eq!(Links::parse(Some(bad), None), Err(BadLink), "{bad:?}");
            assert_eq!(Links::parse(None, Some(bad)), Err(BadLink), "{bad:?}");
        }
        assert_eq!(std::mem::size_of::<Option<LinkId>>(), 8);
    }
}
