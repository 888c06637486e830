//! The tunnel's send queue: a bounded FIFO that behaves like a UDP socket's
//! buffer, not like TCP's.
//!
//! QUIC runs its own congestion control. Over a TCP connection that never
//! drops, QUIC would see no loss and grow its window without limit while
//! TCP queued ever more (seconds of data, and every call on the link behind
//! it). So a datagram that waited longer than [`QueueLimits::max_delay`]
//! (≈ 50 ms) is dropped when it reaches the head, as a router drops from a
//! full buffer; and nothing is queued past [`QueueLimits::max_bytes`]. QUIC
//! sees the loss and slows down; the queue stays short. The writer keeps the
//! kernel's own TCP buffer small (`TCP_NOTSENT_LOWAT`), so the waiting
//! happens here, where it is measured.
//!
//! Many queues may share a [`Budget`] (a server's tunnels: their queues
//! together stay within it, whatever each peer does).
//!
//! Sans-IO: the caller passes the time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How much a [`SendQueue`] holds.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Oldest a datagram may be when it is sent; older ones are dropped.
    pub max_delay: Duration,
    /// Most bytes queued at once.
    pub max_bytes: usize,
    /// Largest datagram accepted.
    pub max_datagram: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_delay: Duration::from_millis(50),
            max_bytes: 256 * 1024,
            max_datagram: super::MAX_DATAGRAM,
        }
    }
}

/// Bytes that many queues share (a server's tunnels together): a push
/// that would take it past `max` is refused like a full queue.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` bytes, none used.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.max).then_some(u + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What [`SendQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Dropped: the queue holds [`QueueLimits::max_bytes`] already.
    Full,
    /// Dropped: larger than [`QueueLimits::max_datagram`].
    TooBig,
}

/// Datagrams waiting to be written, with their arrival times.
#[derive(Debug)]
pub struct SendQueue {
    limits: QueueLimits,
    frames: VecDeque<(Instant, Bytes)>,
    bytes: usize,
    budget: Option<Arc<Budget>>,
    /// Dropped at the head for waiting too long, since creation.
    pub dropped_stale: u64,
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.bytes);
        }
    }
}

impl SendQueue {
    /// An empty queue.
    pub fn new(limits: QueueLimits) -> Self {
        Self::with_budget(limits, None)
    }

    /// An empty queue whose bytes also count against `budget`.
    pub fn with_budget(limits: QueueLimits, budget: Option<Arc<Budget>>) -> Self {
        Self {
            limits,
            frames: VecDeque::new(),
            bytes: 0,
            budget,
            dropped_stale: 0,
        }
    }

    /// Queues a copy of `datagram`, arriving at `now`.
    pub fn push(&mut self, now: Instant, datagram: &[u8]) -> Pushed {
        if datagram.len() > self.limits.max_datagram {
            return Pushed::TooBig;
        }
        if self.bytes + datagram.len() > self.limits.max_bytes {
            return Pushed::Full;
        }
        if !self.budget.as_ref().is_none_or(|b| b.take(datagram.len())) {
            return Pushed::Full;
        }
        self.bytes += datagram.len();
        self.frames
            .push_back((now, Bytes::copy_from_slice(datagram)));
        Pushed::Queued
    }

    /// The next datagram to write at `now`, dropping those that waited
    /// longer than [`QueueLimits::max_delay`].
    pub fn pop(&mut self, now: Instant) -> Option<Bytes> {
        while let Some((at, bytes)) = self.frames.pop_front() {
            self.bytes -= bytes.len();
            if let Some(b) = &self.budget {
                b.give(bytes.len());
            }
            if now.saturating_duration_since(at) <= self.limits.max_delay {
                return Some(bytes);
            }
            self.dropped_stale += 1;
        }
        None
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> QueueLimits {
        QueueLimits {
            max_delay: Duration::from_millis(50),
            max_bytes: 3000,
            max_datagram: 1220,
        }
    }

    #[test]
    fn fifo_within_the_delay() {
        let mut q = SendQueue::new(limits());
        let t = Instant::now();
        assert_eq!(q.push(t, b"one"), Pushed::Queued);
        assert_eq!(q.push(t, b"two"), Pushed::Queued);
        assert_eq!(q.bytes(), 6);
        let later = t + Duration::from_millis(50);
        assert_eq!(q.pop(later).as_deref(), Some(&b"one"[..]));
        assert_eq!(q.pop(later).as_deref(), Some(&b"two"[..]));
        assert_eq!(q.pop(later), None);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn datagrams_that_waited_too_long_are_dropped_at_the_head() {
        let mut q = SendQueue::new(limits());
        let t = Instant::now();
        q.push(t, b"old");
        q.push(t + Duration::from_millis(40), b"new");
        let at = t + Duration::from_millis(60);
        assert_eq!(q.pop(at).as_deref(), Some(&b"new"[..]));
        assert_eq!(q.dropped_stale, 1);
        assert!(q.is_empty());
    }

    #[test]
    fn queues_sharing_a_budget_stay_within_it_and_give_it_back() {
        let budget = Budget::new(2500);
        let mut a = SendQueue::with_budget(limits(), Some(budget.clone()));
        let mut b = SendQueue::with_budget(limits(), Some(budget.clone()));
        let t = Instant::now();
        assert_eq!(a.push(t, &[0; 1200]), Pushed::Queued);
        assert_eq!(b.push(t, &[0; 1200]), Pushed::Queued);
        assert_eq!(b.push(t, &[0; 200]), Pushed::Full, "over the shared budget");
        assert_eq!(budget.used(), 2400);
        a.pop(t);
        assert_eq!(budget.used(), 1200);
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped queue gives its bytes back");
    }

    #[test]
    fn a_full_queue_and_a_giant_datagram_are_refused() {
        let mut q = SendQueue::new(limits());
        let t = Instant::now();
        assert_eq!(q.push(t, &[0; 1221]), Pushed::TooBig);
        assert_eq!(q.push(t, &[0; 1200]), Pushed::Queued);
        assert_eq!(q.push(t, &[0; 1200]), Pushed::Queued);
        assert_eq!(q.push(t, &[0; 1200]), Pushed::Full);
        assert_eq!(q.bytes(), 2400);
        q.pop(t);
        assert_eq!(q.push(t, &[0; 1200]), Pushed::Queued);
    }
}
