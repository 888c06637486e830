//! Per-source token buckets, without a clock of their own.
//!
//! [`RateLimiter::check`] takes `now`, so the rules are unit-tested on a fake
//! clock. Buckets that have refilled completely are forgotten by
//! [`RateLimiter::sweep`], so memory stays bounded by active sources.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::Rate;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by source IP.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// Limiter with `rate` per source.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip` at `now`; false when the source must slow down.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.rate;
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: f64::from(rate.burst),
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose bucket is full again (they would start full anyway).
    pub fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * rate.per_second < f64::from(rate.burst)
        });
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_source() {
        let mut rl = RateLimiter::new(Rate {
            burst: 3,
            per_second: 2.0,
        });
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        assert!((0..3).all(|_| rl.check(a, t0)));
        assert!(!rl.check(a, t0), "burst spent");
        assert!(rl.check(b, t0), "another source is unaffected");
        assert!(!rl.check(a, t0 + Duration::from_millis(400)));
        assert!(
            rl.check(a, t0 + Duration::from_millis(500)),
            "refilled one token"
        );
        rl.sweep(t0 + Duration::from_secs(10));
        assert_eq!(rl.tracked(), 0);
    }
}
