//! The connect-token verifier: the `?token=` of every `/ws` request is untrusted text. Two
//! shapes of input:
//! - first byte even: the rest is a token as a client would send it, checked by the node's
//!   `NonceCache::verify` (signature, expiry, node binding, single use);
//! - first byte odd: the rest is a claims payload the fuzzer cannot forge a signature for, so it
//!   is signed here with the test secret; this drives the claims decoding behind a valid MAC.
//!
//! Nothing may panic; an accepted token must carry this node's id, must not have been issued
//! before the node started, and must be refused as reused on its second use.
#![no_main]

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use hmac::{Hmac, Mac};
use impush_core::{
    token::{NonceCache, TokenSigner},
    NodeId, TokenError,
};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-secret";
/// A fixed "now" so runs are reproducible: 2025-01-01T00:00:00Z.
const NOW_MS: u64 = 1_735_689_600_000;
/// When the node started: a minute before "now", so tokens issued before it (stale) and after
/// it are both reachable.
const STARTED_MS: u64 = NOW_MS - 60_000;

fn sign(payload: &[u8]) -> String {
    let mut token = format!("v1.{}", B64.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(token.as_bytes());
    token.push('.');
    token.push_str(&B64.encode(mac.finalize().into_bytes()));
    token
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        sign(rest)
    };
    let signer =
        TokenSigner::new(SECRET, Duration::from_secs(30), 1024).expect("a valid signer");
    let node: NodeId = "n1".parse().expect("a valid node id");
    let nonces = NonceCache::started_at(node.clone(), 16, STARTED_MS);
    if let Ok(claims) = nonces.verify(&signer, &token, NOW_MS) {
        assert_eq!(claims.node, node);
        assert!(claims.expires_ms > NOW_MS);
        let issued = claims.issued_ms.unwrap_or(claims.expires_ms - 30_000);
        assert!(issued >= STARTED_MS, "a token issued before the node started");
        assert!(matches!(
            nonces.verify(&signer, &token, NOW_MS),
            Err(TokenError::Reused)
        ));
    }
});
