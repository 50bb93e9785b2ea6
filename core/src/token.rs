//! Connect tokens (`docs/design.md` section 5): self-contained, signed, expiring, single-use and
//! bound to one node.
//!
//! Format: `v1.<base64url(claims JSON)>.<base64url(HMAC-SHA256 over "v1.<claims>")>`.
//! The helper signs with [`TokenSigner`]; the node checks the signature and expiry with the same
//! type and remembers nonces in a [`NonceCache`] until they expire, so no store round trip is
//! needed to refuse a second use.
//!
//! The nonce memory lives in the node's process and dies with it. So that a URL used once stays
//! refused after its node restarts, tokens carry the time they were issued and a node refuses
//! every token issued before its [`NonceCache`] was made (`token_stale`): such a token may have
//! been used by the node's previous run. No state is shared between nodes or runs; the price is
//! that a URL issued just before a restart must be asked for again, and that helpers' clocks
//! must not run behind the nodes' (a helper `d` ms behind gets its tokens for a node refused
//! during the first `d` ms after that node starts).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{envelope::now_ms, ClientId, Error, NodeId, Result, TokenError};

const VERSION: &str = "v1";

/// What a token says. Signed, not encrypted: do not put secrets in `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The client the token admits.
    #[serde(rename = "c")]
    pub client: ClientId,
    /// The only node that accepts it.
    #[serde(rename = "n")]
    pub node: NodeId,
    /// Expiry, unix milliseconds.
    #[serde(rename = "e")]
    pub expires_ms: u64,
    /// Random; a node accepts each nonce once.
    #[serde(rename = "r")]
    pub nonce: String,
    /// When it was issued, unix milliseconds: a node refuses tokens issued before it started.
    /// Tokens of helpers older than this field have none; their issue time is taken as
    /// `expires_ms - auth.token_ttl`.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub issued_ms: Option<u64>,
    /// Business metadata, echoed in online/offline events.
    #[serde(
        rename = "m",
        default,
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub metadata: serde_json::Value,
}

/// Signs and verifies connect tokens with the cluster's shared secret.
#[derive(Clone)]
pub struct TokenSigner {
    mac: Hmac<Sha256>,
    ttl: Duration,
    max_metadata_bytes: usize,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer for `secret` whose tokens live `ttl`, with metadata up to `max_metadata_bytes`
    /// of JSON.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty secret.
    pub fn new(secret: &[u8], ttl: Duration, max_metadata_bytes: usize) -> Result<Self> {
        if secret.is_empty() {
            return Err(Error::Config("auth.secret: must not be empty".into()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| Error::Config("auth.secret: unusable as an HMAC key".into()))?;
        Ok(Self {
            mac,
            ttl,
            max_metadata_bytes,
        })
    }

    /// How long tokens stay valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// When `claims` were issued: their own `issued_ms`, or for a token without one (from an
    /// older helper) its expiry minus this signer's TTL.
    fn issued_ms(&self, claims: &TokenClaims) -> u64 {
        claims
            .issued_ms
            .unwrap_or_else(|| claims.expires_ms.saturating_sub(self.ttl_ms()))
    }

    /// Mints a token admitting `client` to `node`.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when the metadata serialises to more than the limit.
    pub fn sign(
        &self,
        client: &ClientId,
        node: &NodeId,
        metadata: serde_json::Value,
    ) -> Result<String> {
        let nonce: [u8; 12] = rand::random();
        let now = now_ms();
        let claims = TokenClaims {
            client: client.clone(),
            node: node.clone(),
            expires_ms: now.saturating_add(self.ttl_ms()),
            nonce: B64.encode(nonce),
            issued_ms: Some(now),
            metadata,
        };
        let meta_len = if claims.metadata.is_null() {
            0
        } else {
            serde_json::to_vec(&claims.metadata)
                .map_err(|e| Error::codec("token metadata", e))?
                .len()
        };
        if meta_len > self.max_metadata_bytes {
            return Err(Error::TooLarge {
                what: "metadata",
                size: meta_len,
                limit: self.max_metadata_bytes,
            });
        }
        let json = serde_json::to_vec(&claims).map_err(|e| Error::codec("token claims", e))?;
        let mut token = format!("{VERSION}.{}", B64.encode(json));
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        token.push('.');
        token.push_str(&sig);
        Ok(token)
    }

    /// Checks signature and expiry (at `now_ms`) and returns the claims. Node binding and
    /// single use are checked by [`NonceCache::verify`].
    ///
    /// # Errors
    /// [`TokenError::Malformed`], [`TokenError::BadSignature`] or [`TokenError::Expired`].
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<TokenClaims, TokenError> {
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (version, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if version != VERSION {
            return Err(TokenError::Malformed);
        }
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: TokenClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_ms <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// A node's memory of the token nonces it accepted, kept until each token expires.
///
/// Bounded: it holds at most `capacity` unexpired nonces and refuses tokens beyond that
/// ([`TokenError::Overloaded`]) rather than forgetting one early, which would allow a replay.
/// It starts empty, so it refuses tokens issued before it was made ([`TokenError::Stale`]):
/// those may have been used by a cache that is gone (the node's previous run).
#[derive(Debug)]
pub struct NonceCache {
    node: NodeId,
    capacity: usize,
    started_ms: u64,
    inner: Mutex<Nonces>,
}

#[derive(Debug, Default)]
struct Nonces {
    seen: HashMap<String, u64>,
    by_expiry: VecDeque<(u64, String)>,
}

impl NonceCache {
    /// A cache for tokens addressed to `node`, accepting tokens issued from now on. Make it
    /// when the node starts, never from a store that outlives the process.
    pub fn new(node: NodeId, capacity: usize) -> Self {
        Self::started_at(node, capacity, now_ms())
    }

    /// [`NonceCache::new`] for a node that started at `started_ms` (unix ms): tokens issued
    /// before it are refused as [`TokenError::Stale`].
    pub fn started_at(node: NodeId, capacity: usize, started_ms: u64) -> Self {
        Self {
            node,
            capacity,
            started_ms,
            inner: Mutex::new(Nonces::default()),
        }
    }

    /// Verifies `token` fully for this node and consumes it.
    ///
    /// # Errors
    /// Any [`TokenError`].
    pub fn verify(
        &self,
        signer: &TokenSigner,
        token: &str,
        now_ms: u64,
    ) -> Result<TokenClaims, TokenError> {
        let claims = signer.verify(token, now_ms)?;
        if claims.node != self.node {
            return Err(TokenError::WrongNode);
        }
        if signer.issued_ms(&claims) < self.started_ms {
            return Err(TokenError::Stale);
        }
        let mut n = self.inner.lock().map_err(|_| TokenError::Overloaded)?;
        // Tokens share one TTL, so expiry order is (nearly) insertion order: popping from the
        // front while expired keeps this O(1) amortised.
        while n.by_expiry.front().is_some_and(|(e, _)| *e <= now_ms) {
            if let Some((_, nonce)) = n.by_expiry.pop_front() {
                n.seen.remove(&nonce);
            }
        }
        if n.seen.contains_key(&claims.nonce) {
            return Err(TokenError::Reused);
        }
        if n.seen.len() >= self.capacity {
            return Err(TokenError::Overloaded);
        }
        n.seen.insert(claims.nonce.clone(), claims.expires_ms);
        n.by_expiry
            .push_back((claims.expires_ms, claims.nonce.clone()));
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(b"secret", Duration::from_secs(30), 64).unwrap()
    }

    #[test]
    fn round_trip_and_single_use() {
        let s = signer();
        let c = ClientId::new("alice").unwrap();
        let n = NodeId::new("n1").unwrap();
        let t = s.sign(&c, &n, serde_json::json!({"dev":"ios"})).unwrap();
        let cache = NonceCache::started_at(n.clone(), 10, 0);
        let claims = cache.verify(&s, &t, now_ms()).unwrap();
        assert_eq!(claims.client, c);
        assert_eq!(claims.metadata["dev"], "ios");
        assert_eq!(cache.verify(&s, &t, now_ms()), Err(TokenError::Reused));
    }

    #[test]
    fn refuses_forged_expired_and_wrong_node() {
        let s = signer();
        let other = TokenSigner::new(b"other", Duration::from_secs(30), 64).unwrap();
        let c = ClientId::new("alice").unwrap();
        let n1 = NodeId::new("n1").unwrap();
        let n2 = NodeId::new("n2").unwrap();
        let cache = NonceCache::started_at(n1.clone(), 10, 0);
        let forged = other.sign(&c, &n1, serde_json::Value::Null).unwrap();
        assert_eq!(
            cache.verify(&s, &forged, now_ms()),
            Err(TokenError::BadSignature)
        );
        let t = s.sign(&c, &n1, serde_json::Value::Null).unwrap();
        assert_eq!(
            cache.verify(&s, &t, now_ms() + 31_000),
            Err(TokenError::Expired)
        );
        let t2 = s.sign(&c, &n2, serde_json::Value::Null).unwrap();
        assert_eq!(cache.verify(&s, &t2, now_ms()), Err(TokenError::WrongNode));
        assert_eq!(
            cache.verify(&s, "garbage", now_ms()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            cache.verify(&s, "v1.x.y", now_ms()),
            Err(TokenError::Malformed)
        );
        // Tampering with the claims breaks the signature.
        let (head, sig) = t.rsplit_once('.').unwrap();
        let tampered = format!("{head}A.{sig}");
        assert!(cache.verify(&s, &tampered, now_ms()).is_err());
    }

    #[test]
    fn metadata_is_bounded() {
        let s = signer();
        let big = serde_json::Value::String("x".repeat(100));
        let err = s
            .sign(
                &ClientId::new("a").unwrap(),
                &NodeId::new("n1").unwrap(),
                big,
            )
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
    }

    #[test]
    fn cache_is_bounded_and_forgets_expired() {
        let s = signer();
        let n = NodeId::new("n1").unwrap();
        let cache = NonceCache::started_at(n.clone(), 2, 0);
        let c = ClientId::new("a").unwrap();
        let now = now_ms();
        for _ in 0..2 {
            let t = s.sign(&c, &n, serde_json::Value::Null).unwrap();
            cache.verify(&s, &t, now).unwrap();
        }
        let t = s.sign(&c, &n, serde_json::Value::Null).unwrap();
        assert_eq!(cache.verify(&s, &t, now), Err(TokenError::Overloaded));
        // Once the first two expire (verify at a later "now" still inside t's own validity is
        // impossible with one TTL, so use a longer-lived signer for the third token).
        let long = TokenSigner::new(b"secret", Duration::from_secs(300), 64).unwrap();
        let t3 = long.sign(&c, &n, serde_json::Value::Null).unwrap();
        assert!(cache.verify(&long, &t3, now + 60_000).is_ok());
    }

    #[test]
    fn tokens_issued_before_the_cache_started_are_stale() {
        let s = signer();
        let c = ClientId::new("alice").unwrap();
        let n = NodeId::new("n1").unwrap();
        let t = s.sign(&c, &n, serde_json::Value::Null).unwrap();
        let issued = s.verify(&t, now_ms()).unwrap().issued_ms.unwrap();
        // The node's previous run accepted it; the new run starts after it was issued.
        let before = NonceCache::started_at(n.clone(), 10, issued);
        before.verify(&s, &t, now_ms()).unwrap();
        let restarted = NonceCache::started_at(n.clone(), 10, issued + 1);
        assert_eq!(restarted.verify(&s, &t, now_ms()), Err(TokenError::Stale));
        // Tokens issued from the start on are fine.
        let t2 = s.sign(&c, &n, serde_json::Value::Null).unwrap();
        let again = NonceCache::started_at(n.clone(), 10, issued);
        again.verify(&s, &t2, now_ms()).unwrap();
        // `new` starts now: nothing issued before it was made gets in.
        let fresh = NonceCache::new(n, 10);
        assert!(fresh.started_ms >= issued);
    }

    #[test]
    fn tokens_without_an_issue_time_count_from_their_expiry() {
        // As an older helper signed them: no `i` claim.
        let s = signer();
        let now = now_ms();
        let claims = serde_json::json!({"c": "alice", "n": "n1", "e": now + 30_000, "r": "x"});
        let payload = B64.encode(claims.to_string());
        let mut mac = s.mac.clone();
        let signed = format!("v1.{payload}");
        mac.update(signed.as_bytes());
        let t = format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()));
        let n = NodeId::new("n1").unwrap();
        assert_eq!(s.verify(&t, now).unwrap().issued_ms, None);
        // Issued at `e - ttl` = now.
        assert!(NonceCache::started_at(n.clone(), 10, now)
            .verify(&s, &t, now)
            .is_ok());
        assert_eq!(
            NonceCache::started_at(n, 10, now + 1).verify(&s, &t, now),
            Err(TokenError::Stale)
        );
    }
}
