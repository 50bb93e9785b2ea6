//! [`Sessions`]: the console's logins, kept in memory on the node that took them.
//!
//! A session is a random id (the cookie) and a random CSRF token (sent back by the page in a
//! header on every action). The map is keyed by the SHA-256 of the id, so a lookup's timing
//! says nothing about the ids held, and nothing in memory is a usable cookie. Sessions end
//! at `admin.session_ttl` after the login (not extended by use) or at logout; at most
//! [`MAX_SESSIONS`] are held, and a login beyond that ends the one closest to its end.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// Most sessions a node holds at once.
pub(crate) const MAX_SESSIONS: usize = 1024;

/// A random 256-bit value in hex.
pub(crate) fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// One live session as a handler sees it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The token the page must send in `X-CSRF-Token` with every action.
    pub(crate) csrf: String,
    /// When it ends.
    pub(crate) expires: Instant,
}

/// A new login: the cookie value and the CSRF token.
#[derive(Debug)]
pub(crate) struct NewSession {
    pub(crate) id: String,
    pub(crate) csrf: String,
}

/// The sessions of one node.
#[derive(Debug)]
pub(crate) struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session.
    pub(crate) fn create(&self, now: Instant) -> NewSession {
        let new = NewSession {
            id: random_hex(),
            csrf: random_hex(),
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            let soonest = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k);
            if let Some(k) = soonest {
                map.remove(&k);
            }
        }
        map.insert(
            key(&new.id),
            Session {
                csrf: new.csrf.clone(),
                expires: now + self.ttl,
            },
        );
        new
    }

    /// The live session with cookie value `id`; an expired one is forgotten.
    pub(crate) fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let k = key(id);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&k) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends the session with cookie value `id` (nothing when there is none).
    pub(crate) fn remove(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&key(id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_session_lives_until_its_ttl_and_not_after() {
        let s = Sessions::new(Duration::from_secs(10));
        let t = Instant::now();
        let new = s.create(t);
        assert_eq!(new.id.len(), 64);
        assert_ne!(new.id, new.csrf);
        let got = s.get(&new.id, t + Duration::from_secs(9)).unwrap();
        assert_eq!(got.csrf, new.csrf);
        assert!(s.get(&new.id, t + Duration::from_secs(10)).is_none());
        assert_eq!(s.len(), 0, "an expired session is forgotten when seen");
        assert!(s.get("not a session", t).is_none());
    }

    #[test]
    fn logout_ends_only_that_session() {
        let s = Sessions::new(Duration::from_secs(10));
        let t = Instant::now();
        let (a, b) = (s.create(t), s.create(t));
        s.remove(&a.id);
        assert!(s.get(&a.id, t).is_none());
        assert!(s.get(&b.id, t).is_some());
    }

    #[test]
    fn the_map_is_bounded_and_ends_the_oldest_first() {
        let s = Sessions::new(Duration::from_secs(3600));
        let t = Instant::now();
        let first = s.create(t);
        let second = s.create(t + Duration::from_millis(1));
        for i in 2..MAX_SESSIONS + 1 {
            s.create(t + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        let now = t + Duration::from_secs(1);
        assert!(
            s.get(&first.id, now).is_none(),
            "the oldest login made room"
        );
        assert!(s.get(&second.id, now).is_some());
    }
}
