//! [`InboundRate`]: the per-connection limit on frames a client sends (`docs/design.md`
//! section 10).

use tokio::time::Instant;

/// A token bucket over the client's frames: `rate` per second, `burst` at once.
#[derive(Debug)]
pub(super) struct InboundRate {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl InboundRate {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            rate: f64::from(rate.max(1)),
            burst,
            last: Instant::now(),
        }
    }

    /// Takes one frame; `false` when the client is over its rate.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn inbound_rate_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = InboundRate::new(10, 3);
        assert!(r.take(t0) && r.take(t0) && r.take(t0));
        assert!(!r.take(t0), "burst exhausted");
        assert!(
            r.take(t0 + Duration::from_millis(110)),
            "one earned after 100 ms"
        );
        assert!(!r.take(t0 + Duration::from_millis(120)));
        assert!(r.take(t0 + Duration::from_secs(10)), "refilled");
    }
}
