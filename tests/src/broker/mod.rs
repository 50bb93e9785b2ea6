//! The [`Broker`](impush_core::Broker) cases ([`broker_conformance!`](crate::broker_conformance)):
//! one `pub async fn` per behaviour of the trait's contract.

mod fanout;
mod helpers;
mod queue;

pub use fanout::*;
pub use queue::*;
