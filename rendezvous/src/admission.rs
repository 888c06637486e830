//! Who may start a handshake: connection quotas, and when to ask a source to
//! prove its address with a QUIC Retry first.
//!
//! A spoofed Initial packet costs its sender nothing, and before this check
//! each one held a slot of the claimed source's per-IP quota until the
//! handshake timed out (10 s) — 64 packets could lock a whole household out.
//! Now an unvalidated source may have at most one handshake in flight; a
//! second one (and every one while many handshakes are pending overall) is
//! answered with a Retry, which only a sender that receives packets at that
//! address can answer. Well-behaved peers connect once and pay nothing; the
//! cost, when Retry is asked, is one extra round trip on the server link only
//! (never on a call's setup).

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start the handshake and count it against the source's quota.
    Accept,
    /// Ask the source to prove its address first (QUIC Retry).
    Retry,
    /// Refuse: a connection limit is reached.
    Refuse,
    /// Drop the packet without an answer: the handshake queue is full. The
    /// peer's QUIC stack sends its Initial again after its retransmission
    /// timeout, which doubles each time (1 s, 2 s, 4 s, …) — backoff for
    /// free, with no new handshake to compute on either side. (Refusing
    /// instead makes a peer start over at once with a fresh key exchange,
    /// and a herd of them collapses the server: measured with 100,000.)
    Drop,
}

/// The numbers a decision needs, read under the server's lock.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Whether the source already proved its address (answered a Retry).
    pub validated: bool,
    /// Connections open or in handshake, all sources.
    pub open: usize,
    /// Handshakes in flight, all sources.
    pub pending: usize,
    /// Connections open or in handshake from this source IP.
    pub from_ip: usize,
    /// Handshakes in flight from this source IP.
    pub pending_from_ip: usize,
}

/// The limits a decision applies.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections from one source IP.
    pub max_per_ip: usize,
    /// Above this many handshakes in flight, every unvalidated source is
    /// asked to Retry (a flood from many spoofed addresses).
    pub retry_above_pending: usize,
    /// At this many handshakes in flight, new attempts are dropped
    /// unanswered, validated or not ([`Admission::Drop`]): a queue longer
    /// than the server drains before the peers' retransmission timers fire
    /// only multiplies the packets (a herd reconnecting after a restart).
    pub max_pending: usize,
}

/// Decides what to do with a connection attempt.
pub fn decide(load: Load, quotas: Quotas) -> Admission {
    if load.open >= quotas.max_connections || load.from_ip >= quotas.max_per_ip {
        return Admission::Refuse;
    }
    if load.pending >= quotas.max_pending {
        return Admission::Drop;
    }
    if !load.validated && (load.pending_from_ip >= 1 || load.pending >= quotas.retry_above_pending)
    {
        return Admission::Retry;
    }
    Admission::Accept
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quotas = Quotas {
        max_connections: 100,
        max_per_ip: 4,
        retry_above_pending: 10,
        max_pending: 20,
    };

    fn load(validated: bool, from_ip: usize, pending_from_ip: usize, pending: usize) -> Load {
        Load {
            validated,
            open: 50,
            pending,
            from_ip,
            pending_from_ip,
        }
    }

    #[test]
    fn a_first_connection_pays_nothing() {
        assert_eq!(decide(load(false, 0, 0, 0), Q), Admission::Accept);
        // Sessions already open (not in handshake) do not trigger Retry.
        assert_eq!(decide(load(false, 3, 0, 0), Q), Admission::Accept);
    }

    #[test]
    fn a_second_concurrent_handshake_must_prove_its_address() {
        assert_eq!(decide(load(false, 1, 1, 1), Q), Admission::Retry);
        assert_eq!(decide(load(true, 1, 1, 1), Q), Admission::Accept);
    }

    #[test]
    fn a_flood_of_handshakes_makes_everyone_unvalidated_retry() {
        assert_eq!(decide(load(false, 0, 0, 10), Q), Admission::Retry);
        assert_eq!(decide(load(true, 0, 0, 10), Q), Admission::Accept);
    }

    #[test]
    fn limits_refuse_even_validated_sources() {
        assert_eq!(decide(load(true, 4, 0, 0), Q), Admission::Refuse);
        let full = Load {
            open: 100,
            ..load(true, 0, 0, 0)
        };
        assert_eq!(decide(full, Q), Admission::Refuse);
    }

    #[test]
    fn a_herd_beyond_the_handshake_queue_is_dropped_even_validated() {
        assert_eq!(decide(load(true, 0, 0, 19), Q), Admission::Accept);
        assert_eq!(decide(load(true, 0, 0, 20), Q), Admission::Drop);
        assert_eq!(decide(load(false, 0, 0, 20), Q), Admission::Drop);
        // A quota reached is said plainly, queue or not.
        assert_eq!(decide(load(true, 4, 0, 20), Q), Admission::Refuse);
    }

    #[test]
    fn spoofed_packets_hold_at_most_one_slot_of_a_victims_quota() {
        // Replay the quota as spoofed Initials arrive and never complete.
        let (mut from_ip, mut pending) = (0, 0);
        let mut accepted = 0;
        for _ in 0..1000 {
            match decide(load(false, from_ip, pending, pending), Q) {
                Admission::Accept => {
                    accepted += 1;
                    from_ip += 1;
                    pending += 1;
                }
                Admission::Retry | Admission::Refuse | Admission::Drop => {}
            }
        }
        assert_eq!(accepted, 1);
        assert!(from_ip < Q.max_per_ip, "the real owner can still connect");
    }
}
