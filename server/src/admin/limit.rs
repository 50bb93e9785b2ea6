//! [`LoginLimit`]: how fast the console's login may be guessed at.
//!
//! Every attempt takes a token from its address's bucket and from the node's; a right secret
//! gives them back, so only wrong guesses count. An address may guess [`PER_ADDRESS_BURST`]
//! times at once, then once a second; the node as a whole [`NODE_BURST`] times, then
//! [`NODE_RATE`] times a second, so guessing from many addresses is no faster. An attempt
//! with no token left is refused (429) before the secret is looked at. Behind a proxy every
//! login comes from the proxy's address and shares its bucket.
//!
//! The address map is bounded ([`MAX_ADDRESSES`]): when full, addresses whose bucket refilled
//! are forgotten first; if none has, a new address is refused rather than the map grown.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Wrong guesses an address may make at once.
pub(crate) const PER_ADDRESS_BURST: f64 = 5.0;
/// Wrong guesses per second an address regains.
pub(crate) const PER_ADDRESS_RATE: f64 = 1.0;
/// Wrong guesses the node takes at once, from all addresses.
pub(crate) const NODE_BURST: f64 = 20.0;
/// Wrong guesses per second the node regains.
pub(crate) const NODE_RATE: f64 = 5.0;
/// Most addresses with a bucket at once.
pub(crate) const MAX_ADDRESSES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    burst: f64,
    rate: f64,
}

impl Bucket {
    fn new(burst: f64, rate: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
            burst,
            rate,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// How long until a token is there (zero: there is one).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    fn give_back(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// The login limits of one node.
#[derive(Debug)]
pub(crate) struct LoginLimit {
    node: Mutex<Bucket>,
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
}

impl LoginLimit {
    pub(crate) fn new() -> Self {
        Self {
            node: Mutex::new(Bucket::new(NODE_BURST, NODE_RATE, Instant::now())),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for an attempt from `ip`, or says how long to wait. Give it back with
    /// [`LoginLimit::succeeded`] when the secret was right.
    pub(crate) fn attempt(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        // Both locks at once (address first, always), so a refused attempt takes nothing.
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&ip) && map.len() >= MAX_ADDRESSES {
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= MAX_ADDRESSES {
                return Err(Duration::from_secs(1));
            }
        }
        let addr = map
            .entry(ip)
            .or_insert_with(|| Bucket::new(PER_ADDRESS_BURST, PER_ADDRESS_RATE, now));
        let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        let wait = addr.wait(now).max(node.wait(now));
        if !wait.is_zero() {
            return Err(wait);
        }
        addr.take();
        node.take();
        Ok(())
    }

    /// The attempt from `ip` had the right secret: it does not count.
    pub(crate) fn succeeded(&self, ip: IpAddr, now: Instant) {
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get_mut(&ip) {
            b.give_back(now);
        }
        self.node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .give_back(now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn an_address_gets_a_burst_then_one_guess_a_second() {
        let l = LoginLimit::new();
        let t = Instant::now();
        for _ in 0..PER_ADDRESS_BURST as usize {
            assert_eq!(l.attempt(ip(1), t), Ok(()));
        }
        let wait = l.attempt(ip(1), t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(l.attempt(ip(1), t + Duration::from_millis(900)).is_err());
        assert_eq!(l.attempt(ip(1), t + Duration::from_secs(1)), Ok(()));
        assert_eq!(
            l.attempt(ip(2), t),
            Ok(()),
            "another address is not held up"
        );
    }

    #[test]
    fn right_secrets_do_not_count() {
        let l = LoginLimit::new();
        let t = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.attempt(ip(1), t), Ok(()));
            l.succeeded(ip(1), t);
        }
    }

    #[test]
    fn many_addresses_share_the_node_budget() {
        let l = LoginLimit::new();
        let t = Instant::now();
        for i in 0..NODE_BURST as u8 {
            assert_eq!(l.attempt(ip(i), t), Ok(()));
        }
        let wait = l.attempt(ip(200), t).unwrap_err();
        assert_eq!(wait, Duration::from_secs_f64(1.0 / NODE_RATE));
    }

    #[test]
    fn the_address_map_is_bounded() {
        let l = LoginLimit::new();
        let t = Instant::now();
        {
            let mut map = l.addresses.lock().unwrap();
            for i in 0..MAX_ADDRESSES as u32 {
                let mut b = Bucket::new(PER_ADDRESS_BURST, PER_ADDRESS_RATE, t);
                b.take();
                map.insert(IpAddr::from(i.to_be_bytes()), b);
            }
        }
        assert!(l.attempt(IpAddr::from([255, 255, 255, 255]), t).is_err());
        // A second later every bucket has refilled and makes room.
        let later = t + Duration::from_secs(1);
        assert_eq!(l.attempt(IpAddr::from([255, 255, 255, 255]), later), Ok(()));
        assert_eq!(l.addresses.lock().unwrap().len(), 1);
    }
}
