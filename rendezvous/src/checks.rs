//! What a UDP check request gets ([`common::tunnel::check`]), decided
//! without I/O: the main socket ([`crate::socket`]) and the mapping check
//! port ([`crate::mapping`]) both ask a [`Checker`].
//!
//! A well-formed request gets one answer, within the rates of a
//! [`CheckBudget`] (one per socket): a request flagged
//! [`check::WANT_MAPPING`] a [`check::MAPPING_ANSWER`] naming the server's
//! other check port (0: none), any other the plain [`check::ANSWER`] (what
//! peers older than the flag read). Anything else — junk, a short request,
//! another type byte — gets nothing and spends no budget. Every answer is
//! smaller than the request it answers: the check cannot amplify.
//!
//! It does not own the sockets, the clock or the counters: its callers
//! send what it returns and count it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::tunnel::check;

/// UDP check answers per second, all sources together (each answer is
/// smaller than its request: this only bounds the work).
const CHECKS_PER_SECOND: u32 = 2_000;

/// UDP check answers per second to one source (a peer sends one a minute,
/// two for a mapping check): one sender cannot spend the global budget
/// alone.
const CHECKS_PER_SOURCE: u8 = 10;

/// Slots the per-source counts share, by a keyed hash of the source (4 KiB:
/// 100,000 peers on TCP checking once a minute fill ~0.4 a slot a second).
const CHECK_SLOTS: usize = 4096;

/// The UDP checks answered in the current second: in all, and per source
/// (an IPv6 /64 is one), sources sharing [`CHECK_SLOTS`] counters by a
/// keyed hash so the table has a fixed size. Sans-IO.
pub(crate) struct CheckBudget {
    window: Instant,
    total: u32,
    per_slot: [u8; CHECK_SLOTS],
    hasher: std::collections::hash_map::RandomState,
}

impl CheckBudget {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            window: now,
            total: 0,
            per_slot: [0; CHECK_SLOTS],
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Whether a check from `ip` at `now` may be answered (and counts it).
    pub(crate) fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        use std::hash::BuildHasher;
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.total = 0;
            self.per_slot = [0; CHECK_SLOTS];
        }
        let slot = self.hasher.hash_one(crate::ratelimit::source_key(ip)) as usize % CHECK_SLOTS;
        if self.total >= CHECKS_PER_SECOND || self.per_slot[slot] >= CHECKS_PER_SOURCE {
            return false;
        }
        self.total += 1;
        self.per_slot[slot] += 1;
        true
    }
}

/// The answer to one check request, ready to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// To an unflagged request ([`check::answer`]).
    Plain([u8; check::ANSWER_LEN]),
    /// To a request flagged [`check::WANT_MAPPING`] ([`check::mapping_answer`]).
    Mapping([u8; check::MAPPING_ANSWER_LEN]),
}

impl Answer {
    /// The datagram to send.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Answer::Plain(b) => b,
            Answer::Mapping(b) => b,
        }
    }

    /// Whether this is a mapping answer (what `rendezvous_mapping_checks_total` counts).
    pub(crate) fn is_mapping(&self) -> bool {
        matches!(self, Answer::Mapping(_))
    }
}

/// The answer `bytes` from `seen` gets from a socket whose other check port
/// is `other_port` (0: none); `None` when `bytes` is not a well-formed
/// request.
pub(crate) fn answer_for(bytes: &[u8], seen: SocketAddr, other_port: u16) -> Option<Answer> {
    let nonce = check::parse_request(bytes)?;
    Some(if check::wants_mapping(bytes) {
        Answer::Mapping(check::mapping_answer(nonce, seen, other_port))
    } else {
        Answer::Plain(check::answer(nonce, seen))
    })
}

/// One socket's check answering: its [`CheckBudget`] and the other port it
/// names. Sans-IO.
pub(crate) struct Checker {
    budget: CheckBudget,
    other_port: u16,
}

impl Checker {
    /// A checker naming `other_port` (0: none) in its mapping answers.
    pub(crate) fn new(now: Instant, other_port: u16) -> Self {
        Self {
            budget: CheckBudget::new(now),
            other_port,
        }
    }

    /// What a datagram `bytes` from `from` at `now` gets: `None` for
    /// anything but a well-formed request, and past the rates. The address
    /// in the answer is `from` with an IPv4-mapped IPv6 address as IPv4.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Option<Answer> {
        let seen = common::candidates::canonical(from);
        let answer = answer_for(bytes, seen, self.other_port)?;
        self.budget.allow(now, seen.ip()).then_some(answer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_ten_check_answers_a_second_and_all_together_two_thousand() {
        let t = Instant::now();
        let mut budget = CheckBudget::new(t);
        let one: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!((0..20).filter(|_| budget.allow(t, one)).count(), 10);
        // Another address of the same IPv6 /64 is the same source.
        let a: IpAddr = "2001:db8:1:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:1::2".parse().unwrap();
        assert_eq!((0..10).filter(|_| budget.allow(t, a)).count(), 10);
        assert!(!budget.allow(t, b));
        // A second later, again.
        let later = t + Duration::from_secs(1);
        assert!(budget.allow(later, one));
        // Many sources: the global cap holds.
        let mut budget = CheckBudget::new(t);
        let answered = (0..10_000u32)
            .filter(|i| budget.allow(t, IpAddr::from(i.to_be_bytes())))
            .count();
        assert!(answered <= 2_000, "{answered}");
    }

    #[test]
    fn a_flagged_request_gets_a_mapping_answer_naming_the_other_port() {
        let seen = addr("203.0.113.9:4242");
        let nonce = [3u8; 16];
        let answer = answer_for(&check::mapping_request(nonce), seen, 7701).unwrap();
        assert!(answer.is_mapping());
        assert_eq!(
            check::parse_mapping_answer(answer.bytes()),
            Some((nonce, seen, Some(7701)))
        );
        let none = answer_for(&check::mapping_request(nonce), seen, 0).unwrap();
        assert_eq!(
            check::parse_mapping_answer(none.bytes()),
            Some((nonce, seen, None))
        );
    }

    #[test]
    fn an_unflagged_request_gets_the_plain_answer_old_peers_read() {
        let seen = addr("[2001:db8::1]:7000");
        let nonce = [4u8; 16];
        let answer = answer_for(&check::request(nonce), seen, 7701).unwrap();
        assert!(!answer.is_mapping());
        assert_eq!(check::parse_answer(answer.bytes()), Some((nonce, seen)));
        // Another value in byte 17 is no flag.
        let mut other = check::request(nonce);
        other[17] = 2;
        assert!(!answer_for(&other, seen, 7701).unwrap().is_mapping());
    }

    #[test]
    fn junk_and_short_requests_get_nothing_and_no_answer_outgrows_its_request() {
        let seen = addr("198.51.100.1:1");
        let req = check::mapping_request([5u8; 16]);
        for len in 0..check::REQUEST_LEN {
            assert!(answer_for(&req[..len], seen, 9).is_none(), "{len} bytes");
        }
        let mut wrong = req;
        wrong[0] = check::ANSWER;
        assert!(answer_for(&wrong, seen, 9).is_none());
        assert!(answer_for(&[0xC0; 1200], seen, 9).is_none());
        for req in [check::request([1; 16]), check::mapping_request([1; 16])] {
            let answer = answer_for(&req, seen, 9).unwrap();
            assert!(answer.bytes().len() < req.len());
        }
    }

    #[test]
    fn a_checker_answers_within_its_budget_and_junk_spends_none() {
        let t = Instant::now();
        let mut checker = Checker::new(t, 7701);
        let from = addr("198.51.100.7:5000");
        for _ in 0..100 {
            assert!(checker.handle(t, from, &[check::REQUEST; 12]).is_none());
        }
        let req = check::mapping_request([6u8; 16]);
        let answered: Vec<_> = (0..20)
            .filter_map(|_| checker.handle(t, from, &req))
            .collect();
        assert_eq!(
            answered.len(),
            10,
            "the junk spent budget, or the limit is gone"
        );
        // An IPv4-mapped source is answered as IPv4 and counted as one.
        let mapped = addr("[::ffff:198.51.100.7]:5000");
        assert!(checker.handle(t, mapped, &req).is_none());
        let later = t + Duration::from_secs(1);
        let answer = checker.handle(later, mapped, &req).unwrap();
        assert_eq!(
            check::parse_mapping_answer(answer.bytes()),
            Some(([6u8; 16], from, Some(7701)))
        );
    }
}
