//! When `peer forward` may call again, and what an unanswered stream
//! means: the decisions of the forward side, without I/O or clocks of
//! their own (every method takes `now`).

use std::time::{Duration, Instant};

/// Backoff between failed call attempts. A call that was up and got lost
/// is called again at once (the listener may be back already); each
/// attempt that fails doubles the wait, from `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Redial {
    min: Duration,
    max: Duration,
    failures: u32,
    not_before: Option<Instant>,
}

impl Redial {
    /// Backoff from `min` to `max` (`max` bounds how long a restarted
    /// listener waits for the next attempt).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
            not_before: None,
        }
    }

    /// How long to wait before the next attempt may start (zero: now).
    pub fn wait(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// An attempt failed at `now`: the next waits longer.
    pub fn failed(&mut self, now: Instant) {
        let backoff = self
            .min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + backoff);
    }

    /// A call is up: the backoff starts over.
    pub fn connected(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}

/// What became of a forward stream's opening on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The listener answered `Forwarded`: bridge the bytes.
    Answered,
    /// The listener reset the stream with this code.
    Reset(u32),
    /// The call's connection is gone.
    ConnectionLost,
    /// Nothing came back within the answer timeout.
    Unanswered,
    /// The listener answered something other than `Forwarded`.
    Misanswered,
}

/// What to do with the TCP connection after an [`Opening`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Bridge it.
    Serve,
    /// The target refused or could not be reached: close the TCP
    /// connection and say so; the call is fine.
    TargetRefused,
    /// The listener does not forward (another `listen` mode), or broke
    /// the protocol: close and say so; the call is fine.
    NotForwarding,
    /// The call is lost (a killed listener is otherwise noticed only at
    /// the idle timeout): drop it and try this connection on a new call.
    CallLost,
}

/// The lost-call rule: an open that goes unanswered means the call is gone.
pub fn verdict(opening: Opening) -> Verdict {
    match opening {
        Opening::Answered => Verdict::Serve,
        Opening::Reset(code) if code == super::FORWARD_REFUSED => Verdict::TargetRefused,
        Opening::Reset(_) | Opening::Misanswered => Verdict::NotForwarding,
        Opening::ConnectionLost | Opening::Unanswered => Verdict::CallLost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_on_success() {
        let t0 = Instant::now();
        let mut r = Redial::new(Duration::from_millis(250), Duration::from_secs(2));
        assert_eq!(r.wait(t0), Duration::ZERO);
        let mut waits = Vec::new();
        for _ in 0..6 {
            r.failed(t0);
            waits.push(r.wait(t0).as_millis());
        }
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(r.wait(t0 + Duration::from_secs(2)), Duration::ZERO);
        r.connected();
        assert_eq!(r.wait(t0), Duration::ZERO);
        r.failed(t0);
        assert_eq!(r.wait(t0), Duration::from_millis(250));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let t0 = Instant::now();
        let mut r = Redial::new(Duration::from_secs(1), Duration::from_secs(4));
        for _ in 0..100 {
            r.failed(t0);
        }
        assert_eq!(r.wait(t0), Duration::from_secs(4));
    }

    #[test]
    fn unanswered_or_lost_means_call_again_and_refusal_does_not() {
        assert_eq!(verdict(Opening::Answered), Verdict::Serve);
        assert_eq!(verdict(Opening::Unanswered), Verdict::CallLost);
        assert_eq!(verdict(Opening::ConnectionLost), Verdict::CallLost);
        assert_eq!(
            verdict(Opening::Reset(super::super::FORWARD_REFUSED)),
            Verdict::TargetRefused
        );
        assert_eq!(verdict(Opening::Reset(1)), Verdict::NotForwarding);
        assert_eq!(verdict(Opening::Misanswered), Verdict::NotForwarding);
    }
}
