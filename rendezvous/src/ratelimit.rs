//! Per-source token buckets, without a clock of their own.
//!
//! [`RateLimiter::check`] takes `now`, so the rules are unit-tested on a fake
//! clock. Buckets that have refilled completely, or have been idle for
//! [`MAX_IDLE`], are forgotten by [`RateLimiter::sweep`], so memory stays
//! bounded by active sources.
//!
//! A "source" is what one party can cheaply multiply: an IPv4 address, or an
//! IPv6 **/64** ([`source_key`]) — one host routinely holds a whole /64, so
//! counting per /128 would void every per-IP limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// A token bucket: `burst` requests at once, then `per_second`.
///
/// Its text form is `BURST/PER_SECOND` (`20/5`); parsing refuses a zero
/// burst and a rate that is zero, negative or not finite ([`RateError`]):
/// a bucket that never refills would never be forgotten either.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bucket size.
    pub burst: u32,
    /// Refill per second.
    pub per_second: f64,
}

/// Why a `BURST/PER_SECOND` text is not a [`Rate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// Not two numbers around a `/`.
    #[error("{0:?} is not BURST/PER_SECOND (e.g. 20/5)")]
    Syntax(String),
    /// A zero burst, or a refill rate that is not a positive finite number.
    #[error(
        "{0:?}: the burst must be at least 1 and the rate a positive finite number per second"
    )]
    NotPositive(String),
}

impl std::str::FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || RateError::Syntax(s.to_owned());
        let (burst, per) = s.split_once('/').ok_or_else(syntax)?;
        let burst: u32 = burst.trim().parse().map_err(|_| syntax())?;
        let per_second: f64 = per.trim().parse().map_err(|_| syntax())?;
        if burst == 0 || !per_second.is_finite() || per_second <= 0.0 {
            return Err(RateError::NotPositive(s.to_owned()));
        }
        Ok(Rate { burst, per_second })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.burst, self.per_second)
    }
}

/// A bucket untouched this long is forgotten by [`RateLimiter::sweep`]
/// even if it has not refilled (one hour): every default rate refills in
/// under a minute, so this only bounds the memory of a very slow rate.
pub const MAX_IDLE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The key every per-source limit counts under: an IPv4 address as it is
/// (IPv4-mapped IPv6 turned into IPv4 first), an IPv6 address cut to its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// Token buckets keyed by source ([`source_key`] of an IP by default; any
/// key, e.g. `(source, callee)`, for other limits).
#[derive(Debug)]
pub struct RateLimiter<K = IpAddr> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// Limiter with `rate` per source.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now`; false when it must slow down.
    /// For IP keys, pass [`source_key`]`(ip)` (or use [`RateLimiter::check`]).
    pub fn check_key(&mut self, key: K, now: Instant) -> bool {
        self.check_key_n(key, 1, now)
    }

    /// Takes `n` tokens at once for `key` at `now` (a watch of `n` names
    /// costs `n` lookups), or none: false when it must slow down.
    pub fn check_key_n(&mut self, key: K, n: u32, now: Instant) -> bool {
        let rate = self.rate;
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(rate.burst),
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        bucket.last = now;
        if bucket.tokens >= f64::from(n) {
            bucket.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }

    /// The rate this limiter applies.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Forgets sources whose bucket is full again (they would start full
    /// anyway), and any bucket untouched for [`MAX_IDLE`]: a rate that
    /// refills slowly (or, set in code, not at all) cannot keep its
    /// buckets forever.
    pub fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let idle = now.saturating_duration_since(b.last);
            let refilled = b.tokens + idle.as_secs_f64() * rate.per_second;
            idle < MAX_IDLE && refilled < f64::from(rate.burst)
        });
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

impl RateLimiter<IpAddr> {
    /// Takes one token for the source of `ip` ([`source_key`]) at `now`;
    /// false when the source must slow down.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.check_key(source_key(ip), now)
    }

    /// Takes `n` tokens at once for the source of `ip`, or none.
    pub fn check_n(&mut self, ip: IpAddr, n: u32, now: Instant) -> bool {
        self.check_key_n(source_key(ip), n, now)
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

    #[test]
    fn n_tokens_are_taken_at_once_or_not_at_all() {
        let mut l = RateLimiter::new(Rate {
            burst: 10,
            per_second: 0.0,
        });
        let (ip, now) = ("192.0.2.1".parse().expect("ip"), Instant::now());
        assert!(l.check_n(ip, 7, now));
        assert!(!l.check_n(ip, 4, now), "only 3 left");
        assert!(l.check_n(ip, 3, now), "a refused request took nothing");
        assert!(!l.check(ip, now));
    }

    /// A rate that never refills (`per_second` 0, possible in code, refused
    /// by the flag parser) still has its buckets forgotten once idle.
    #[test]
    fn buckets_of_a_rate_that_never_refills_are_swept_once_idle() {
        let mut rl = RateLimiter::new(Rate {
            burst: 1,
            per_second: 0.0,
        });
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        assert!(rl.check(a, t0));
        assert!(!rl.check(a, t0 + Duration::from_secs(60)));
        rl.sweep(t0 + Duration::from_secs(120));
        assert_eq!(rl.tracked(), 1, "a recent bucket is kept");
        rl.sweep(t0 + Duration::from_secs(60) + MAX_IDLE);
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn one_ipv6_slash64_is_one_source() {
        let mut rl = RateLimiter::new(Rate {
            burst: 2,
            per_second: 0.001,
        });
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(rl.check(a, t0) && rl.check(b, t0));
        assert!(
            !rl.check(b, t0),
            "a second address of the /64 shares the bucket"
        );
        assert!(rl.check(other, t0), "the next /64 is another source");
        assert_eq!(source_key(a), source_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    }
}
