//! A token bucket over every probe a call sends, pings and pongs alike.

use std::time::{Duration, Instant};

/// At most `burst` probes at once and `rate` a second after that: in any
/// window of `t` seconds, at most `burst + rate·t` go out.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    tokens: u32,
    burst: u32,
    per_token: Duration,
    /// When the last token was credited.
    last: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst.max(1),
            burst: burst.max(1),
            per_token: Duration::from_secs(1) / rate.max(1),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let per = self.per_token.as_nanos().max(1);
        let earned = now.saturating_duration_since(self.last).as_nanos() / per;
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(self.burst);
        self.last = if self.tokens == self.burst {
            now
        } else {
            self.last + self.per_token * earned
        };
    }

    /// Takes one token if there is one.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// When the next token will be there; `None` if one is now.
    pub(super) fn ready_at(&self) -> Option<Instant> {
        (self.tokens == 0).then(|| self.last + self.per_token)
    }
}
