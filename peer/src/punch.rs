//! When the callee sends punch datagrams, as a plain schedule.
//!
//! On `Dial`, the callee sends a tiny non-QUIC datagram ([`PUNCH`]) from its
//! one socket to each of the caller's vetted candidates, so its NAT opens a
//! pinhole before the caller's first QUIC Initial arrives. One round may be
//! lost or early, so rounds repeat with growing gaps until the call connects
//! or the schedule runs out ([`OFFSETS_MS`]). No clock inside: the driver
//! asks [`PunchSchedule::poll`] with `now` and sleeps until
//! [`PunchSchedule::next_deadline`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The punch datagram: 4 bytes that never parse as QUIC (quinn drops them)
/// and are too short to provoke a stateless reset.
pub const PUNCH: &[u8] = &[0, 0, 0, 0];

/// When each round goes out, from the start, in milliseconds (bounded: 10 rounds over 4 s).
pub const OFFSETS_MS: [u64; 10] = [0, 10, 30, 60, 120, 250, 500, 1000, 2000, 4000];

/// Rounds of punches toward a fixed set of targets.
#[derive(Debug, Clone)]
pub struct PunchSchedule {
    start: Instant,
    targets: Vec<SocketAddr>,
    round: usize,
}

impl PunchSchedule {
    /// A schedule starting at `now`.
    pub fn new(now: Instant, targets: Vec<SocketAddr>) -> Self {
        Self {
            start: now,
            targets,
            round: 0,
        }
    }

    /// The targets to punch now, if a round is due.
    pub fn poll(&mut self, now: Instant) -> Option<&[SocketAddr]> {
        let due = self.deadline_of(self.round)?;
        if now < due || self.targets.is_empty() {
            return None;
        }
        // Skip rounds we are late for: one burst, not a backlog.
        while self.deadline_of(self.round + 1).is_some_and(|d| d <= now) {
            self.round += 1;
        }
        self.round += 1;
        Some(&self.targets)
    }

    /// When the next round is due; `None` when the schedule is over.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.targets.is_empty() {
            return None;
        }
        self.deadline_of(self.round)
    }

    /// Ends the schedule (the call connected).
    pub fn stop(&mut self) {
        self.round = OFFSETS_MS.len();
    }

    fn deadline_of(&self, round: usize) -> Option<Instant> {
        OFFSETS_MS
            .get(round)
            .map(|ms| self.start + Duration::from_millis(*ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<SocketAddr> {
        vec![
            "198.51.100.1:4000".parse().expect("addr"),
            "192.168.1.5:4000".parse().expect("addr"),
        ]
    }

    #[test]
    fn rounds_follow_the_offsets_then_stop() {
        let t0 = Instant::now();
        let mut s = PunchSchedule::new(t0, targets());
        let mut sent_at = vec![];
        let mut now = t0;
        while let Some(deadline) = s.next_deadline() {
            assert!(s.poll(deadline - Duration::from_millis(1)).is_none() || deadline == t0);
            now = now.max(deadline);
            assert_eq!(s.poll(now).map(<[_]>::len), Some(2));
            sent_at.push(now.duration_since(t0).as_millis() as u64);
        }
        assert_eq!(sent_at, OFFSETS_MS.to_vec());
        assert!(s.poll(now + Duration::from_secs(60)).is_none(), "bounded");
    }

    #[test]
    fn late_poll_sends_one_burst_and_stop_ends_it() {
        let t0 = Instant::now();
        let mut s = PunchSchedule::new(t0, targets());
        assert!(s.poll(t0 + Duration::from_millis(300)).is_some());
        assert!(
            s.poll(t0 + Duration::from_millis(300)).is_none(),
            "rounds 0..=5 collapsed into one"
        );
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_millis(500)));
        s.stop();
        assert_eq!(s.next_deadline(), None);
        assert!(s.poll(t0 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn no_targets_no_punches() {
        let t0 = Instant::now();
        let mut s = PunchSchedule::new(t0, vec![]);
        assert!(s.poll(t0).is_none());
        assert_eq!(s.next_deadline(), None);
    }
}
