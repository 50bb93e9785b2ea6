//! The broker envelope decoder: every payload a node or helper reads from the broker is decoded
//! with `envelope::decode` as a `NodeCommand` (node inbox), `ClusterCommand` (`{prefix}.all`)
//! or `Event` (`{prefix}.events`). Anything may arrive there (another version, a stray
//! publisher), so decoding must only ever fail with an error, and what decodes must encode and
//! decode again.
#![no_main]

use impush_core::envelope::{decode, encode, ClusterCommand, Event, NodeCommand};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(what: &'static str, data: &[u8]) {
    if let Ok(value) = decode::<T>(what, data) {
        let bytes = encode(what, &value).expect("a decoded envelope encodes");
        decode::<T>(what, &bytes).expect("an encoded envelope decodes");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<NodeCommand>("node command", data);
    round_trip::<ClusterCommand>("cluster command", data);
    round_trip::<Event>("event", data);
});
