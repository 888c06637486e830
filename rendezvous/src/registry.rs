//! Who is connected and who is callable: sessions and presence, in memory.
//!
//! Plain data, no sockets and no clock: the server's drivers call it under a
//! lock and act on what it returns. It is generic over `H`, the handle the
//! driver needs to reach a session (a `quinn::Connection` in the server, `()`
//! in tests).
//!
//! Rules:
//! - A session is one connection, identified by the key it authenticated with.
//! - A session may register one name, after the [`crate::store`] confirmed
//!   that its key owns it. One key may hold several sessions (a `listen` and a
//!   `call` from the same machine).
//! - Presence belongs to a `listen` session (`presence: true`). A newer
//!   `listen` for the same name replaces the older one, which the driver then
//!   closes with a reason (a laptop that changed networks).
//! - Closing a session drops its presence, unless it was already replaced.

use std::collections::HashMap;
use std::net::SocketAddr;

use common::Fingerprint;
use thiserror::Error;

/// Identifies a connection on this server.
pub type SessionId = u64;

/// Never a session of this server (ids start at 1): the callee of a call
/// whose callee is online at another node of the cluster.
pub const REMOTE: SessionId = 0;

/// One connected peer.
#[derive(Debug, Clone)]
pub struct Session<H> {
    /// The key from the TLS handshake.
    pub fingerprint: Fingerprint,
    /// Where the server sees the connection come from: at the handshake,
    /// then wherever it was last seen ([`Registry::observe`]: quinn follows
    /// a client whose address changed, and so does this).
    pub observed: SocketAddr,
    /// The name it registered, if any.
    pub name: Option<String>,
    /// Keys a `listen` session pre-approved ([`Registry::approve`]): their
    /// calls skip the per-callee offer limits. At most
    /// [`common::messages::MAX_APPROVED`].
    pub approved: Vec<Fingerprint>,
    /// What the session answers the approved callers without being asked
    /// ([`Registry::accept_approved`]); `None`: it is asked every time.
    pub standing: Option<Standing>,
    /// `listen --invisible`: its presence is callable, but lookups and
    /// watchers are told it is offline ([`Registry::set_invisible`]).
    pub invisible: bool,
    /// How the driver reaches this session.
    pub handle: H,
}

/// A listener's standing answer to its approved callers
/// (`AcceptApproved`): the `Accept` it would send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Its local candidates (the broker forwards the vetted few).
    pub candidates: Vec<SocketAddr>,
    /// Whether the caller is given none of its addresses.
    pub hide_addresses: bool,
}

/// Most candidates a [`Standing`] keeps (the broker forwards fewer).
pub const MAX_STANDING_CANDIDATES: usize = 16;

/// A registry rule was broken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The session is unknown (already closed).
    #[error("session is closed")]
    NoSession,
    /// The session already registered another name.
    #[error("this connection is already registered as {current:?}")]
    OtherName {
        /// The name it holds.
        current: String,
    },
    /// The request needs a registered name.
    #[error("register a name on this connection first")]
    NotRegistered,
}

/// What a registration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered<H> {
    /// An older `listen` session this one replaced, to be closed.
    pub replaced: Option<(SessionId, H)>,
}

/// Sessions and presence.
#[derive(Debug)]
pub struct Registry<H> {
    sessions: HashMap<SessionId, Session<H>>,
    presence: HashMap<String, SessionId>,
    next_id: SessionId,
}

impl<H> Default for Registry<H> {
    fn default() -> Self {
        Self {
            sessions: HashMap::new(),
            presence: HashMap::new(),
            next_id: 1,
        }
    }
}

impl<H: Clone> Registry<H> {
    /// Adds a freshly authenticated connection.
    pub fn open(&mut self, fingerprint: Fingerprint, observed: SocketAddr, handle: H) -> SessionId {
        let id = self.next_id;
        self.next_id += 1;
        let session = Session {
            fingerprint,
            observed,
            name: None,
            approved: Vec::new(),
            standing: None,
            invisible: false,
            handle,
        };
        self.sessions.insert(id, session);
        id
    }

    /// Removes a connection; returns the name that went offline, if it was present.
    pub fn close(&mut self, id: SessionId) -> Option<String> {
        let session = self.sessions.remove(&id)?;
        let name = session.name?;
        if self.presence.get(&name) == Some(&id) {
            self.presence.remove(&name);
            return Some(name);
        }
        None
    }

    /// Registers `name` on session `id`, whose key the store confirmed owns it.
    pub fn register(
        &mut self,
        id: SessionId,
        name: &str,
        presence: bool,
    ) -> Result<Registered<H>, RegistryError> {
        let session = self.sessions.get_mut(&id).ok_or(RegistryError::NoSession)?;
        match &session.name {
            Some(current) if current != name => {
                return Err(RegistryError::OtherName {
                    current: current.clone(),
                });
            }
            _ => session.name = Some(name.to_owned()),
        }
        if !presence {
            return Ok(Registered { replaced: None });
        }
        let old = self.presence.insert(name.to_owned(), id);
        let replaced = old
            .filter(|old| *old != id)
            .and_then(|old| self.sessions.get(&old).map(|s| (old, s.handle.clone())));
        Ok(Registered { replaced })
    }

    /// Sets the keys session `id` pre-approves (replacing the last list).
    /// Only a session that holds its name's presence may: the list only
    /// matters for the callee of a call.
    pub fn approve(
        &mut self,
        id: SessionId,
        mut keys: Vec<Fingerprint>,
    ) -> Result<usize, RegistryError> {
        self.listening(id)?;
        keys.truncate(common::messages::MAX_APPROVED);
        keys.sort_unstable();
        keys.dedup();
        keys.shrink_to_fit();
        let count = keys.len();
        if let Some(session) = self.sessions.get_mut(&id) {
            session.approved = keys;
        }
        Ok(count)
    }

    /// Whether session `id` holds its name's presence (a `listen`): only
    /// such a session approves callers or accepts them without asking.
    fn listening(&self, id: SessionId) -> Result<(), RegistryError> {
        let session = self.sessions.get(&id).ok_or(RegistryError::NoSession)?;
        let present = session
            .name
            .as_ref()
            .is_some_and(|name| self.presence.get(name) == Some(&id));
        match present {
            true => Ok(()),
            false => Err(RegistryError::NotRegistered),
        }
    }

    /// Sets what session `id` answers its approved callers without being
    /// asked (replacing the last). Only a session that holds its name's
    /// presence may; returns how many callers it covers (its approved keys).
    pub fn accept_approved(
        &mut self,
        id: SessionId,
        mut standing: Standing,
    ) -> Result<usize, RegistryError> {
        self.listening(id)?;
        standing.candidates.truncate(MAX_STANDING_CANDIDATES);
        let session = self.sessions.get_mut(&id).ok_or(RegistryError::NoSession)?;
        session.standing = Some(standing);
        Ok(session.approved.len())
    }

    /// Marks session `id` invisible (or not); false if it is closed.
    pub fn set_invisible(&mut self, id: SessionId, invisible: bool) -> bool {
        match self.sessions.get_mut(&id) {
            Some(session) => {
                session.invisible = invisible;
                true
            }
            None => false,
        }
    }

    /// Notes that session `id` is now seen at `observed` (a NAT rebinding,
    /// a peer that moved); false if the session is closed.
    pub fn observe(&mut self, id: SessionId, observed: SocketAddr) -> bool {
        match self.sessions.get_mut(&id) {
            Some(session) => {
                session.observed = observed;
                true
            }
            None => false,
        }
    }

    /// The `listen` session that holds `name`, if it is online.
    pub fn present(&self, name: &str) -> Option<(SessionId, &Session<H>)> {
        let id = *self.presence.get(name)?;
        self.sessions.get(&id).map(|s| (id, s))
    }

    /// A session, if open.
    pub fn session(&self, id: SessionId) -> Option<&Session<H>> {
        self.sessions.get(&id)
    }

    /// The registered name of session `id`, for requests that need one.
    pub fn name_of(&self, id: SessionId) -> Result<&str, RegistryError> {
        let session = self.sessions.get(&id).ok_or(RegistryError::NoSession)?;
        session.name.as_deref().ok_or(RegistryError::NotRegistered)
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Names online.
    pub fn online(&self) -> usize {
        self.presence.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 1], port))
    }

    #[test]
    fn presence_follows_the_listen_session() {
        let mut r = Registry::<u8>::default();
        let key = Fingerprint([1; 32]);
        let call = r.open(key, addr(1), 1);
        let listen = r.open(key, addr(2), 2);
        assert!(r.present("alice").is_none());
        r.register(call, "alice", false).expect("call session");
        assert!(
            r.present("alice").is_none(),
            "a call session is not presence"
        );
        assert_eq!(
            r.register(listen, "alice", true).expect("listen").replaced,
            None
        );
        assert_eq!(r.present("alice").map(|(id, _)| id), Some(listen));
        assert_eq!(
            r.close(call),
            None,
            "closing the call session changes nothing"
        );
        assert_eq!(r.present("alice").map(|(id, _)| id), Some(listen));
        assert_eq!(r.close(listen), Some("alice".to_owned()));
        assert!(r.present("alice").is_none());
    }

    #[test]
    fn newer_listen_replaces_older() {
        let mut r = Registry::<u8>::default();
        let key = Fingerprint([1; 32]);
        let old = r.open(key, addr(1), 10);
        let new = r.open(key, addr(2), 20);
        r.register(old, "alice", true).expect("old");
        let reg = r.register(new, "alice", true).expect("new");
        assert_eq!(reg.replaced, Some((old, 10)));
        assert_eq!(r.present("alice").map(|(_, s)| s.observed), Some(addr(2)));
        assert_eq!(
            r.close(old),
            None,
            "the replaced session no longer holds presence"
        );
        assert_eq!(r.present("alice").map(|(id, _)| id), Some(new));
        assert_eq!(
            r.register(new, "alice", true).expect("again").replaced,
            None
        );
    }

    #[test]
    fn an_invisible_listen_is_present_and_says_so() {
        let mut r = Registry::<()>::default();
        let id = r.open(Fingerprint([1; 32]), addr(1), ());
        r.register(id, "alice", true).expect("listen");
        assert!(r.set_invisible(id, true));
        let (_, s) = r.present("alice").expect("still callable");
        assert!(s.invisible);
        r.close(id);
        assert!(!r.set_invisible(id, true));
    }

    #[test]
    fn the_observed_address_follows_the_session() {
        let mut r = Registry::<()>::default();
        let id = r.open(Fingerprint([1; 32]), addr(1), ());
        r.register(id, "alice", true).expect("listen");
        assert!(r.observe(id, addr(9)));
        assert_eq!(r.present("alice").map(|(_, s)| s.observed), Some(addr(9)));
        assert_eq!(r.session(id).map(|s| s.observed), Some(addr(9)));
        r.close(id);
        assert!(!r.observe(id, addr(3)), "a closed session is not revived");
        assert_eq!(r.sessions(), 0);
    }

    #[test]
    fn one_name_per_session_and_registration_required() {
        let mut r = Registry::<()>::default();
        let id = r.open(Fingerprint([1; 32]), addr(1), ());
        assert_eq!(r.name_of(id), Err(RegistryError::NotRegistered));
        r.register(id, "alice", false).expect("alice");
        assert_eq!(r.name_of(id), Ok("alice"));
        assert_eq!(
            r.register(id, "bob", false),
            Err(RegistryError::OtherName {
                current: "alice".into()
            })
        );
        r.close(id);
        assert_eq!(r.register(id, "alice", true), Err(RegistryError::NoSession));
        assert_eq!(r.sessions(), 0);
    }

    #[test]
    fn only_a_listen_session_approves_and_the_list_is_capped() {
        let mut r: Registry<()> = Registry::default();
        let fp = Fingerprint([1; 32]);
        let id = r.open(fp, addr(1), ());
        let keys: Vec<Fingerprint> = (0..=255u8).map(|i| Fingerprint([i; 32])).collect();
        assert_eq!(
            r.approve(id, keys.clone()),
            Err(RegistryError::NotRegistered)
        );
        r.register(id, "alice", false).expect("register");
        assert_eq!(
            r.approve(id, keys.clone()),
            Err(RegistryError::NotRegistered),
            "not a listen session"
        );
        r.register(id, "alice", true).expect("listen");
        assert_eq!(r.approve(id, keys), Ok(common::messages::MAX_APPROVED));
        let (_, s) = r.present("alice").expect("online");
        assert!(s.approved.contains(&Fingerprint([0; 32])));
        assert_eq!(r.approve(id, vec![fp, fp]), Ok(1));
    }

    #[test]
    fn only_a_listen_session_accepts_its_approved_callers_and_keeps_a_few_candidates() {
        let mut r: Registry<()> = Registry::default();
        let id = r.open(Fingerprint([1; 32]), addr(1), ());
        let standing = Standing {
            candidates: (0..40).map(addr).collect(),
            hide_addresses: false,
        };
        assert_eq!(
            r.accept_approved(id, standing.clone()),
            Err(RegistryError::NotRegistered)
        );
        r.register(id, "alice", false).expect("register");
        assert_eq!(
            r.accept_approved(id, standing.clone()),
            Err(RegistryError::NotRegistered),
            "not a listen session"
        );
        r.register(id, "alice", true).expect("listen");
        r.approve(id, vec![Fingerprint([2; 32])]).expect("approve");
        assert_eq!(r.accept_approved(id, standing), Ok(1));
        let (_, s) = r.present("alice").expect("online");
        let kept = s.standing.as_ref().expect("standing");
        assert_eq!(kept.candidates.len(), MAX_STANDING_CANDIDATES);
    }
}
