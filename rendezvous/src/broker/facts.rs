//! What the broker is told: its configuration, the request, and the
//! server's books ([`Facts`]), which it asks as it goes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::Fingerprint;

use crate::offers::{Offer, OfferRefused};
use crate::registry::{SessionId, Standing};

/// What the broker needs to know of the server it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Whether the server runs a relay (`--relay`, on by default).
    pub relay: bool,
    /// How long the callee has to answer an offer.
    pub answer_timeout: Duration,
}

/// A `Call` request as the caller sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// The name called.
    pub to: String,
    /// The caller's own candidate addresses.
    pub candidates: Vec<SocketAddr>,
    /// Whether the caller keeps its addresses from the callee (relay only).
    pub hide_addresses: bool,
}

/// The calling session, as the registry has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its session.
    pub session: SessionId,
    /// The name it registered.
    pub name: String,
    /// Its key.
    pub fingerprint: Fingerprint,
    /// Where the server sees it (its source for the rate limits; a TCP
    /// peer's real address, not its virtual one).
    pub observed: SocketAddr,
}

/// Why a session may not call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCaller {
    /// It registered no name.
    NotRegistered,
    /// It is gone (closed while its request ran).
    Closed,
}

/// The callee's listening session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callee {
    /// The session the offer goes to; [`crate::registry::REMOTE`] for a
    /// callee at another node (which checks the offer limits itself, and
    /// whose address [`Facts::current_address`] gives from its answer).
    pub session: SessionId,
    /// Whether the callee pre-approved the caller's key.
    pub approved: bool,
    /// The callee's standing answer to the callers it approved
    /// (`AcceptApproved`), if it gave one.
    pub standing: Option<Standing>,
}

/// The server's books, as the broker asks them (in this order, each only
/// if the checks before it passed, so a refused request costs no store
/// read). The server's implementation reads its registry, store and rate
/// limiters under their locks; a test's is a few maps.
pub trait Facts {
    /// The session that sent the request.
    fn caller(&mut self) -> Result<Caller, NoCaller>;
    /// Takes a call token for `source` (false: over its call rate).
    fn allow_call(&mut self, source: IpAddr, now: Instant) -> bool;
    /// The key that owns `name`: `Ok(None)` if nobody registered it,
    /// `Err` (what went wrong) if the store could not be read.
    fn owner(&mut self, name: &str) -> Result<Option<Fingerprint>, String>;
    /// The listening session of `name`, if online, and whether it
    /// pre-approved `caller`.
    fn callee(&mut self, name: &str, caller: Fingerprint) -> Option<Callee>;
    /// Takes a token of the offer limits ([`crate::offers::OfferLimits`]).
    fn check_offer(&mut self, offer: Offer, now: Instant) -> Result<(), OfferRefused>;
    /// A fresh call id.
    fn next_call_id(&mut self) -> u64;
    /// Where `session` is now, as the server's socket sees it (not
    /// canonicalised: relay frames arrive from exactly this address).
    fn current_address(&mut self, session: SessionId) -> SocketAddr;
    /// A fresh random probe key for the two sides.
    fn probe_key(&mut self) -> [u8; 32];
}
