//! The `Impush-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
//! keyed with the endpoint's `secret` (`docs/design.md` section 17).
//!
//! The timestamp is signed with the body, and set anew on every attempt, so a receiver that
//! refuses timestamps outside a window (five minutes is usual) cannot be fed a captured request
//! again later. The body carries event ids, so retries of a request it already took can be
//! recognised too.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Impush-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; the error exists for other MACs.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at unix second `t`.
pub(crate) fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    let mut out = format!("t={t},v1=");
    for b in tag {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The header is missing its `t=` or `v1=` part, or they are not numbers / hex.
    #[error("malformed Impush-Signature header")]
    Malformed,
    /// The timestamp is outside the replay window.
    #[error("Impush-Signature timestamp outside the replay window")]
    Stale,
    /// No `v1=` signature matches the body and the secret.
    #[error("Impush-Signature does not match")]
    Mismatch,
}

/// Checks a webhook request as a receiver written in Rust would: `header` is the
/// `Impush-Signature` value, `body` the raw request body (before any JSON parsing), `now` the
/// receiver's clock in unix seconds, `window` how far the signed timestamp may be from it
/// (five minutes is usual). Several `v1=` parts are allowed; one matching is enough.
///
/// ```
/// use impush_server::webhooks::{verify, VerifyError};
/// use std::time::Duration;
/// let header = "t=1700000000,v1=00";
/// let five_min = Duration::from_secs(300);
/// assert_eq!(verify(b"secret", header, b"{}", 1_700_000_000, five_min), Err(VerifyError::Mismatch));
/// assert_eq!(verify(b"secret", header, b"{}", 1_800_000_000, five_min), Err(VerifyError::Stale));
/// ```
///
/// # Errors
/// [`VerifyError`] saying why the request must be refused.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    window: Duration,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", v)) => tags.push(unhex(v).ok_or(VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if tags.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(t) > window.as_secs() {
        return Err(VerifyError::Stale);
    }
    // `verify_slice` compares in constant time.
    if tags
        .iter()
        .any(|tag| mac(secret, t, body).verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    #[test]
    fn a_signature_verifies_and_binds_body_time_and_secret() {
        let h = sign(b"k1-0123456789abcdef", 1_700_000_000, b"{\"events\":[]}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        let ok = |secret: &[u8], body: &[u8], now| verify(secret, &h, body, now, WINDOW);
        assert_eq!(
            ok(b"k1-0123456789abcdef", b"{\"events\":[]}", 1_700_000_100),
            Ok(())
        );
        assert_eq!(
            ok(b"k1-0123456789abcdef", b"{\"events\":[1]}", 1_700_000_000),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            ok(b"k2-0123456789abcdef", b"{\"events\":[]}", 1_700_000_000),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            ok(b"k1-0123456789abcdef", b"{\"events\":[]}", 1_700_000_301),
            Err(VerifyError::Stale)
        );
        // The timestamp is signed: moving it into the window breaks the signature.
        let moved = h.replace("t=1700000000", "t=1700000200");
        assert_eq!(
            verify(
                b"k1-0123456789abcdef",
                &moved,
                b"{\"events\":[]}",
                1_700_000_300,
                WINDOW
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_known_vector() {
        // HMAC-SHA256("key", "1.body"), computed independently
        // (`printf 1.body | openssl dgst -sha256 -hmac key`).
        assert_eq!(
            sign(b"key", 1, b"body"),
            "t=1,v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for h in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=0g", "t=1,v1=abc"] {
            assert_eq!(
                verify(b"k", h, b"", 1, WINDOW),
                Err(VerifyError::Malformed),
                "{h}"
            );
        }
    }
}
