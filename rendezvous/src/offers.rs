//! Which call offers may ring a callee, decided without I/O.
//!
//! Every offer takes a stream slot at the callee and a prompt on its
//! screen, so offers are limited per callee, not only per caller's source:
//!
//! 1. per (source, callee) — one source cannot spend a callee's whole budget;
//! 2. per callee — many sources together cannot fill its 64 stream slots.
//!
//! Callers the callee has pre-approved ([`common::Message::Approve`]: its
//! known contacts) are not counted, so a stranger's flood cannot lock the
//! callee's contacts out. Sources are [`source_key`]s (IPv6 per /64).

use std::net::IpAddr;
use std::time::Instant;

use common::Fingerprint;

use crate::config::Limits;
use crate::ratelimit::{source_key, RateLimiter};

/// Why an offer may not ring its callee now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfferRefused {
    /// This source rang this callee too often.
    PerSource,
    /// Everyone together rang this callee too often.
    PerCallee,
}

/// The per-(source, callee) and per-callee token buckets.
#[derive(Debug)]
pub(crate) struct OfferLimits {
    pair: RateLimiter<(IpAddr, Fingerprint)>,
    callee: RateLimiter<Fingerprint>,
}

impl OfferLimits {
    /// Buckets at the rates of `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            pair: RateLimiter::new(limits.offer_rate_per_source),
            callee: RateLimiter::new(limits.offer_rate_per_callee),
        }
    }

    /// Whether an offer from `source` to `callee` may ring at `now`;
    /// `approved` when the callee pre-approved the caller's key (not counted).
    pub(crate) fn check(
        &mut self,
        source: IpAddr,
        callee: Fingerprint,
        approved: bool,
        now: Instant,
    ) -> Result<(), OfferRefused> {
        if approved {
            return Ok(());
        }
        if !self.pair.check_key((source_key(source), callee), now) {
            return Err(OfferRefused::PerSource);
        }
        if !self.callee.check_key(callee, now) {
            return Err(OfferRefused::PerCallee);
        }
        Ok(())
    }

    /// Forgets buckets that are full again.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.pair.sweep(now);
        self.callee.sweep(now);
    }

    /// Buckets held.
    pub(crate) fn tracked(&self) -> usize {
        self.pair.tracked() + self.callee.tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            offer_rate_per_source: Rate {
                burst: 2,
                per_second: 1.0,
            },
            offer_rate_per_callee: Rate {
                burst: 3,
                per_second: 1.0,
            },
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn per_source_first_then_per_callee_and_contacts_pass() {
        let mut o = OfferLimits::new(&limits());
        let t0 = Instant::now();
        let (alice, carol) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert!(o.check(ip("203.0.113.1"), alice, false, t0).is_ok());
        assert!(o.check(ip("203.0.113.1"), alice, false, t0).is_ok());
        assert_eq!(
            o.check(ip("203.0.113.1"), alice, false, t0),
            Err(OfferRefused::PerSource)
        );
        assert!(
            o.check(ip("203.0.113.1"), carol, false, t0).is_ok(),
            "another callee has its own buckets"
        );
        assert!(o.check(ip("203.0.113.2"), alice, false, t0).is_ok());
        assert_eq!(
            o.check(ip("203.0.113.3"), alice, false, t0),
            Err(OfferRefused::PerCallee),
            "the callee's budget is spent, whoever rings"
        );
        assert!(
            o.check(ip("203.0.113.3"), alice, true, t0).is_ok(),
            "a pre-approved caller is never counted"
        );
        assert!(o
            .check(ip("203.0.113.3"), alice, false, t0 + Duration::from_secs(1))
            .is_ok());
        o.sweep(t0 + Duration::from_secs(60));
        assert_eq!(o.tracked(), 0);
    }

    #[test]
    fn one_ipv6_slash64_is_one_source_per_callee() {
        let mut o = OfferLimits::new(&limits());
        let t0 = Instant::now();
        let alice = Fingerprint([1; 32]);
        assert!(o.check(ip("2001:db8:1:2::1"), alice, false, t0).is_ok());
        assert!(o.check(ip("2001:db8:1:2::2"), alice, false, t0).is_ok());
        assert_eq!(
            o.check(ip("2001:db8:1:2::3"), alice, false, t0),
            Err(OfferRefused::PerSource)
        );
    }
}
