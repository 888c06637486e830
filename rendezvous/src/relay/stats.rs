//! What the relay counts, as a plain struct the driver copies into its
//! Prometheus metrics.

/// Why the relay dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropCause {
    /// Not a relay frame this version can read (truncated, unknown type,
    /// over [`common::relay_frame::MAX_DATAGRAM`]).
    Malformed,
    /// No call with this id (never allocated, ended, or expired and gone).
    UnknownCall,
    /// The tag does not match the party's key: a forgery or a corruption.
    BadMac,
    /// A counter already seen, or older than the replay window, from the
    /// party's own address (a duplicate on the way, or a replay).
    Replayed,
    /// A seen or old counter from an address that is not the party's: a
    /// replay from elsewhere, trying to take the call over.
    ReplayedElsewhere,
    /// The sender's direction is over its rate.
    OverRate,
    /// The call has relayed its byte allowance.
    OverBytes,
    /// The call was idle past its timeout (and is now forgotten).
    Expired,
}

impl DropCause {
    /// Every cause, in the order of [`DropCounts`].
    pub const ALL: [DropCause; 8] = [
        DropCause::Malformed,
        DropCause::UnknownCall,
        DropCause::BadMac,
        DropCause::Replayed,
        DropCause::ReplayedElsewhere,
        DropCause::OverRate,
        DropCause::OverBytes,
        DropCause::Expired,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            DropCause::Malformed => "malformed",
            DropCause::UnknownCall => "unknown_call",
            DropCause::BadMac => "bad_mac",
            DropCause::Replayed => "replayed",
            DropCause::ReplayedElsewhere => "replayed_elsewhere",
            DropCause::OverRate => "over_rate",
            DropCause::OverBytes => "over_bytes",
            DropCause::Expired => "expired",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// Dropped datagrams, per cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropCause::ALL.len()]);

impl DropCounts {
    /// Drops of `cause` so far.
    pub fn get(&self, cause: DropCause) -> u64 {
        self.0[cause.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn add(&mut self, cause: DropCause) {
        self.0[cause.index()] += 1;
    }
}

/// The relay's counters (monotonic unless said otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams forwarded.
    pub packets_relayed: u64,
    /// Bytes forwarded (whole datagrams, header included).
    pub bytes_relayed: u64,
    /// Calls that forwarded at least one datagram.
    pub calls_relayed: u64,
    /// Calls allocated.
    pub allocations: u64,
    /// Calls in the table now (a gauge).
    pub active: u64,
    /// Allocations refused: a party's source holds its share.
    pub refused_source: u64,
    /// Allocations refused: the table is full of active calls.
    pub refused_full: u64,
    /// Calls forgotten after their idle timeout.
    pub expired: u64,
    /// Calls a party ended with an end-of-call frame.
    pub ended: u64,
    /// Quiet calls shed to make room for a new one.
    pub shed: u64,
    /// Times a party's address moved (roaming, on a fresh counter).
    pub roams: u64,
    /// Dropped datagrams by cause.
    pub drops: DropCounts,
}
