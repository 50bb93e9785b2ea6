//! [`ConnectThrottle`]: `limits.connect_rate` (per node) and `limits.connect_rate_per_ip`
//! (`docs/design.md` section 16). A reconnect storm (a node died, a deploy) is flattened at
//! the door: `/ws` answers `503` (node) or `429` (address) with `Retry-After` before any
//! token is verified, so refused connects cost almost nothing.
//!
//! Both are token buckets refilled at the rate per second, holding at most one second's
//! worth. The per-address buckets live in a map bounded by [`MAX_ADDRESSES`]: when it is full,
//! buckets that have refilled completely (their address has been quiet for a second) are
//! dropped first; if none has, the new address is refused rather than the map grown.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most addresses with a bucket at once.
pub(crate) const MAX_ADDRESSES: usize = 65_536;

/// Why a connect was refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// This node is over `limits.connect_rate`.
    Node(Duration),
    /// The address is over `limits.connect_rate_per_ip`.
    Address(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate),
            at: now,
        }
    }

    /// Takes a token; otherwise how long until one is there.
    fn take(&mut self, rate: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn is_full(&self, rate: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * f64::from(rate) >= f64::from(rate)
    }
}

/// The connect limits of one node.
#[derive(Debug)]
pub(crate) struct ConnectThrottle {
    rate: u32,
    per_ip: u32,
    node: Mutex<Bucket>,
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
}

impl ConnectThrottle {
    /// Limits of `rate` connects per second for the node and `per_ip` per address (0: none).
    pub(crate) fn new(rate: u32, per_ip: u32) -> Self {
        let now = Instant::now();
        Self {
            rate,
            per_ip,
            node: Mutex::new(Bucket::full(rate, now)),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one connect from `ip`, or says why not and when to try again. The address is
    /// checked first, so one noisy address cannot spend the whole node's budget.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if self.per_ip > 0 {
            let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
            if !map.contains_key(&ip) && map.len() >= MAX_ADDRESSES {
                let per_ip = self.per_ip;
                map.retain(|_, b| !b.is_full(per_ip, now));
                if map.len() >= MAX_ADDRESSES {
                    return Err(Refused::Address(Duration::from_secs(1)));
                }
            }
            let bucket = map
                .entry(ip)
                .or_insert_with(|| Bucket::full(self.per_ip, now));
            bucket.take(self.per_ip, now).map_err(Refused::Address)?;
        }
        if self.rate > 0 {
            let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
            node.take(self.rate, now).map_err(Refused::Node)?;
        }
        Ok(())
    }
}

/// `Retry-After` in whole seconds, at least one.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_second_of_connects_then_the_rate() {
        let t = ConnectThrottle::new(10, 0);
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(t.admit(ip(1), start), Ok(()));
        }
        let Err(Refused::Node(wait)) = t.admit(ip(2), start) else {
            panic!("the eleventh connect in the same instant must be refused");
        };
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        // A tenth of a second later there is one token again.
        let later = start + Duration::from_millis(100);
        assert_eq!(t.admit(ip(3), later), Ok(()));
        assert!(t.admit(ip(3), later).is_err());
    }

    #[test]
    fn one_address_cannot_spend_the_whole_node() {
        let t = ConnectThrottle::new(100, 2);
        let now = Instant::now();
        assert_eq!(t.admit(ip(1), now), Ok(()));
        assert_eq!(t.admit(ip(1), now), Ok(()));
        assert!(matches!(t.admit(ip(1), now), Err(Refused::Address(_))));
        assert_eq!(t.admit(ip(2), now), Ok(()), "other addresses still get in");
    }

    #[test]
    fn the_address_map_is_bounded() {
        let t = ConnectThrottle::new(0, 1);
        let now = Instant::now();
        for i in 0..MAX_ADDRESSES {
            let a = IpAddr::from((i as u32).to_be_bytes());
            assert_eq!(t.admit(a, now), Ok(()));
        }
        // Every bucket is empty (each spent its one token now): a new address is refused
        // instead of growing the map.
        assert!(matches!(
            t.admit(IpAddr::from([255, 255, 255, 255]), now),
            Err(Refused::Address(_))
        ));
        // A second later they have all refilled and make room.
        let later = now + Duration::from_secs(1);
        assert_eq!(t.admit(IpAddr::from([255, 255, 255, 255]), later), Ok(()));
        assert_eq!(t.addresses.lock().unwrap().len(), 1);
    }
}
