//! Which call offers may ring a callee, decided without I/O.
//!
//! Every offer takes a stream slot at the callee and a prompt on its
//! screen, so offers are limited per callee, not only per caller's source.
//! A stranger's offer is checked
//!
//! 1. per (source, callee) — one source cannot spend a callee's whole budget;
//! 2. per callee — many sources together cannot fill its 64 stream slots.
//!
//! A caller the callee has pre-approved ([`common::Message::Approve`]: its
//! known contacts) skips the shared per-callee bucket, so a stranger's flood
//! cannot lock the callee's contacts out, but is held to its own bucket per
//! (caller key, callee): the key is authenticated, so nobody else can drain
//! it, and a contact (in `AcceptAll` mode, any caller the callee ever
//! accepted) cannot ring without limit either. Sources are [`source_key`]s
//! (IPv6 per /64).

use std::net::IpAddr;
use std::time::Instant;

use common::Fingerprint;

use crate::config::Limits;
use crate::ratelimit::{source_key, RateLimiter};

/// Why an offer may not ring its callee now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferRefused {
    /// This source rang this callee too often.
    Source,
    /// Everyone together rang this callee too often.
    Callee,
    /// This pre-approved caller's key rang this callee too often.
    Contact,
}

/// Who offers a call: the caller's source address and authenticated key.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    /// The caller's observed IP.
    pub source: IpAddr,
    /// The caller's key.
    pub caller: Fingerprint,
    /// The callee's key.
    pub callee: Fingerprint,
    /// Whether the callee pre-approved the caller's key.
    pub approved: bool,
}

/// The per-(source, callee), per-callee and per-(contact, callee) token buckets.
#[derive(Debug)]
pub struct OfferLimits {
    pair: RateLimiter<(IpAddr, Fingerprint)>,
    callee: RateLimiter<Fingerprint>,
    contact: RateLimiter<(Fingerprint, Fingerprint)>,
}

impl OfferLimits {
    /// Buckets at the rates of `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            pair: RateLimiter::new(limits.offer_rate_per_source),
            callee: RateLimiter::new(limits.offer_rate_per_callee),
            contact: RateLimiter::new(limits.offer_rate_per_contact),
        }
    }

    /// Whether `offer` may ring its callee at `now`.
    pub fn check(&mut self, offer: Offer, now: Instant) -> Result<(), OfferRefused> {
        if offer.approved {
            return match self.contact.check_key((offer.caller, offer.callee), now) {
                true => Ok(()),
                false => Err(OfferRefused::Contact),
            };
        }
        if !self
            .pair
            .check_key((source_key(offer.source), offer.callee), now)
        {
            return Err(OfferRefused::Source);
        }
        if !self.callee.check_key(offer.callee, now) {
            return Err(OfferRefused::Callee);
        }
        Ok(())
    }

    /// Forgets buckets that are full again.
    pub fn sweep(&mut self, now: Instant) {
        self.pair.sweep(now);
        self.callee.sweep(now);
        self.contact.sweep(now);
    }

    /// Buckets held.
    pub fn tracked(&self) -> usize {
        self.pair.tracked() + self.callee.tracked() + self.contact.tracked()
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
            offer_rate_per_contact: Rate {
                burst: 2,
                per_second: 1.0,
            },
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const STRANGER: Fingerprint = Fingerprint([9; 32]);

    /// A stranger's offer (key [`STRANGER`]) from `source` to `callee`.
    fn stranger(source: &str, callee: Fingerprint) -> Offer {
        Offer {
            source: ip(source),
            caller: STRANGER,
            callee,
            approved: false,
        }
    }

    /// An offer from a key `callee` pre-approved.
    fn contact(source: &str, caller: Fingerprint, callee: Fingerprint) -> Offer {
        Offer {
            source: ip(source),
            caller,
            callee,
            approved: true,
        }
    }

    #[test]
    fn per_source_first_then_per_callee_and_contacts_pass() {
        let mut o = OfferLimits::new(&limits());
        let t0 = Instant::now();
        let (alice, carol) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        let bob = Fingerprint([3; 32]);
        assert!(o.check(stranger("203.0.113.1", alice), t0).is_ok());
        assert!(o.check(stranger("203.0.113.1", alice), t0).is_ok());
        assert_eq!(
            o.check(stranger("203.0.113.1", alice), t0),
            Err(OfferRefused::Source)
        );
        assert!(
            o.check(stranger("203.0.113.1", carol), t0).is_ok(),
            "another callee has its own buckets"
        );
        assert!(o.check(stranger("203.0.113.2", alice), t0).is_ok());
        assert_eq!(
            o.check(stranger("203.0.113.3", alice), t0),
            Err(OfferRefused::Callee),
            "the callee's budget is spent, whoever rings"
        );
        assert!(
            o.check(contact("203.0.113.3", bob, alice), t0).is_ok(),
            "a pre-approved caller does not need the callee's shared budget"
        );
        assert!(o
            .check(stranger("203.0.113.3", alice), t0 + Duration::from_secs(1))
            .is_ok());
        o.sweep(t0 + Duration::from_secs(60));
        assert_eq!(o.tracked(), 0);
    }

    /// A key on the callee's approved list (in `AcceptAll` mode: any caller
    /// it ever accepted) is still held to its own bucket, from any source;
    /// another contact's bucket is its own.
    #[test]
    fn a_pre_approved_key_is_limited_by_its_own_bucket() {
        let mut o = OfferLimits::new(&limits());
        let t0 = Instant::now();
        let (alice, bob, carol) = (
            Fingerprint([1; 32]),
            Fingerprint([3; 32]),
            Fingerprint([4; 32]),
        );
        assert!(o.check(contact("203.0.113.1", bob, alice), t0).is_ok());
        assert!(o.check(contact("203.0.113.2", bob, alice), t0).is_ok());
        for source in ["203.0.113.1", "203.0.113.3", "2001:db8::1"] {
            assert_eq!(
                o.check(contact(source, bob, alice), t0),
                Err(OfferRefused::Contact),
                "a new session or source does not refill {source}"
            );
        }
        assert!(
            o.check(contact("203.0.113.1", carol, alice), t0).is_ok(),
            "another contact is not drained by bob"
        );
        assert!(
            o.check(contact("203.0.113.1", bob, carol), t0).is_ok(),
            "bob calling another callee has another bucket"
        );
        assert!(o
            .check(
                contact("203.0.113.1", bob, alice),
                t0 + Duration::from_secs(1)
            )
            .is_ok());
    }

    /// Strangers spending the callee's whole budget do not lock out a contact.
    #[test]
    fn strangers_cannot_drain_a_contacts_bucket() {
        let mut o = OfferLimits::new(&limits());
        let t0 = Instant::now();
        let (alice, carol) = (Fingerprint([1; 32]), Fingerprint([4; 32]));
        for i in 1..=50 {
            let _ = o.check(stranger(&format!("198.51.100.{i}"), alice), t0);
        }
        assert_eq!(
            o.check(stranger("198.51.100.51", alice), t0),
            Err(OfferRefused::Callee)
        );
        assert!(o.check(contact("198.51.100.1", carol, alice), t0).is_ok());
    }

    #[test]
    fn one_ipv6_slash64_is_one_source_per_callee() {
        let mut o = OfferLimits::new(&limits());
        let t0 = Instant::now();
        let alice = Fingerprint([1; 32]);
        assert!(o.check(stranger("2001:db8:1:2::1", alice), t0).is_ok());
        assert!(o.check(stranger("2001:db8:1:2::2", alice), t0).is_ok());
        assert_eq!(
            o.check(stranger("2001:db8:1:2::3", alice), t0),
            Err(OfferRefused::Source)
        );
    }
}
