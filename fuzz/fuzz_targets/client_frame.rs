//! The client frame parser: any text a WebSocket client sends is parsed as a `ClientFrame`
//! (`{"type":"ping"}`, `{"type":"ack","id":...}`); it must never panic, and what parses must
//! carry a valid id.
#![no_main]

use impush_core::protocol::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (tungstenite refuses others before the node sees them).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientFrame::Ack { id }) = serde_json::from_str::<ClientFrame>(text) {
        // A parsed id passed validation: it parses again to itself.
        let again: impush_core::MessageId = id.as_str().parse().expect("a parsed id re-parses");
        assert_eq!(again, id);
    }
});
