//! The per-party replay window and byte bucket: the two small pieces of
//! state every relayed datagram is checked against.

use std::time::Instant;

use super::config::ByteRate;

/// How a counter compares with what a party sent before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Above every counter seen: may move the party's address.
    Fresh,
    /// Below the highest, inside the window, not seen: reordered.
    Late,
    /// Seen already, or too old to tell.
    Replayed,
}

/// The last 64 counters of one sender, as in IPsec (RFC 4303 §3.4.3) and
/// WireGuard: the highest seen and a bitmap of the 63 below it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReplayWindow {
    /// The highest counter accepted, `None` before the first.
    highest: Option<u64>,
    /// Bit `i`: counter `highest - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Window width in counters.
    pub(crate) const WIDTH: u64 = 64;

    pub(crate) fn check(&self, counter: u64) -> Freshness {
        let Some(highest) = self.highest else {
            return Freshness::Fresh;
        };
        if counter > highest {
            return Freshness::Fresh;
        }
        let back = highest - counter;
        if back >= Self::WIDTH || self.seen & (1 << back) != 0 {
            return Freshness::Replayed;
        }
        Freshness::Late
    }

    /// Records `counter` (checked first: not [`Freshness::Replayed`]).
    pub(crate) fn accept(&mut self, counter: u64) {
        match self.highest {
            Some(highest) if counter <= highest => {
                let back = highest - counter;
                if back < Self::WIDTH {
                    self.seen |= 1 << back;
                }
            }
            Some(highest) => {
                let shift = counter - highest;
                self.seen = if shift >= Self::WIDTH {
                    0
                } else {
                    self.seen << shift
                };
                self.seen |= 1;
                self.highest = Some(counter);
            }
            None => {
                self.seen = 1;
                self.highest = Some(counter);
            }
        }
    }
}

/// A token bucket in bytes, without a clock of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteBucket {
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    /// A full bucket.
    pub(crate) fn new(rate: &ByteRate, now: Instant) -> Self {
        Self {
            tokens: rate.burst as f64,
            last: now,
        }
    }

    /// Takes `len` bytes at `now`; false (nothing taken) when over the rate.
    pub(crate) fn take(&mut self, rate: &ByteRate, len: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second as f64).min(rate.burst as f64);
        self.last = self.last.max(now);
        if self.tokens >= len as f64 {
            self.tokens -= len as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn window_accepts_each_counter_once_and_reordering_within_64() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(1000), Freshness::Fresh);
        w.accept(1000);
        assert_eq!(w.check(1000), Freshness::Replayed);
        assert_eq!(w.check(999), Freshness::Late);
        w.accept(999);
        assert_eq!(w.check(999), Freshness::Replayed);
        assert_eq!(w.check(1000 - 63), Freshness::Late);
        assert_eq!(
            w.check(1000 - 64),
            Freshness::Replayed,
            "older than the window"
        );
        w.accept(1100);
        assert_eq!(w.check(1000), Freshness::Replayed, "slid out");
        assert_eq!(w.check(1099), Freshness::Late);
        w.accept(1101);
        assert_eq!(
            w.check(1100),
            Freshness::Replayed,
            "kept across a shift of one"
        );
        assert_eq!(w.check(u64::MAX), Freshness::Fresh);
        w.accept(u64::MAX);
        assert_eq!(w.check(1101), Freshness::Replayed);
    }

    #[test]
    fn bucket_refills_at_its_rate() {
        let rate = ByteRate {
            per_second: 1000,
            burst: 1500,
        };
        let t0 = Instant::now();
        let mut b = ByteBucket::new(&rate, t0);
        assert!(b.take(&rate, 1500, t0));
        assert!(!b.take(&rate, 1, t0));
        assert!(!b.take(&rate, 200, t0 + Duration::from_millis(100)));
        assert!(b.take(&rate, 200, t0 + Duration::from_millis(200)));
        assert!(
            b.take(&rate, 1500, t0 + Duration::from_secs(60)),
            "capped at the burst"
        );
        assert!(!b.take(&rate, 1, t0 + Duration::from_secs(60)));
    }
}
