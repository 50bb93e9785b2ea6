//! The [`PresenceStore`](impush_core::PresenceStore) cases
//! ([`presence_conformance!`](crate::presence_conformance)): every id a case touches is inside
//! its namespace, and global listings are filtered to it.

mod channels;
mod connections;
mod helpers;
mod nodes;

pub use channels::*;
pub use connections::*;
pub use nodes::*;
