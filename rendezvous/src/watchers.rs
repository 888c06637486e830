//! Who watches whom (`peer watch`): names → watch streams, sans-IO.
//!
//! Plain data, no sockets and no clock, generic over `H`, the handle that
//! wakes a watch stream's writer (a `tokio::sync::Notify` in the server,
//! `()` in tests). The server calls it under its registry lock (lock
//! order: registry → watchers → the cluster's books), so the states it
//! sees change in the order the registry changes.
//!
//! Rules:
//! - A watch is one stream of one session; a session watches at most
//!   [`MAX_WATCHED`] names over all its streams.
//! - The table keeps each watched name's last state ([`Visible`]): a
//!   change that changes nothing (a `listen` replaced by a newer one of
//!   the same key) is not pushed, so a replaced `listen` never flaps.
//! - Each watch has a buffer of states not yet written, at most one per
//!   name (the latest replaces an older one in place): it is bounded by the
//!   names it watches, so a slow watcher costs memory that is bounded and
//!   never blocks the registry or the other watchers.
//! - Closing a watch drops its names; a name nobody watches is forgotten.

use std::collections::{HashMap, HashSet};

use common::messages::MAX_WATCHED;
use common::Fingerprint;
use thiserror::Error;

use crate::registry::SessionId;

/// Identifies one watch stream on this server.
pub type WatchId = u64;

/// What a watcher may know of a name: what a lookup tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    /// Whether a visible `listen` holds it.
    pub online: bool,
    /// Its key; `None`: no one has registered it.
    pub fingerprint: Option<Fingerprint>,
}

impl Visible {
    /// Online with `fingerprint`.
    pub fn online(fingerprint: Fingerprint) -> Self {
        Self {
            online: true,
            fingerprint: Some(fingerprint),
        }
    }

    /// Offline; `fingerprint` if it was ever registered.
    pub fn offline(fingerprint: Option<Fingerprint>) -> Self {
        Self {
            online: false,
            fingerprint,
        }
    }
}

/// A watch request the table refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The watch is closed.
    #[error("the watch is closed")]
    Closed,
    /// The session would watch more than [`MAX_WATCHED`] names.
    #[error("a connection may watch at most {max} names; this one watches {watching}")]
    TooMany {
        /// The cap.
        max: usize,
        /// How many its session watches now.
        watching: usize,
    },
}

#[derive(Debug)]
struct Watch<H> {
    session: SessionId,
    names: HashSet<String>,
    /// States not yet written, oldest first, one per name.
    pending: Vec<(String, Visible)>,
    handle: H,
}

#[derive(Debug)]
struct Entry {
    state: Visible,
    watches: HashSet<WatchId>,
}

/// Names → watches.
#[derive(Debug)]
pub struct Watchers<H> {
    names: HashMap<String, Entry>,
    watches: HashMap<WatchId, Watch<H>>,
    per_session: HashMap<SessionId, usize>,
    next_id: WatchId,
}

impl<H> Default for Watchers<H> {
    fn default() -> Self {
        Self {
            names: HashMap::new(),
            watches: HashMap::new(),
            per_session: HashMap::new(),
            next_id: 1,
        }
    }
}

impl<H: Clone> Watchers<H> {
    /// A new watch stream of `session`, watching nothing yet.
    pub fn open(&mut self, session: SessionId, handle: H) -> WatchId {
        let id = self.next_id;
        self.next_id += 1;
        let watch = Watch {
            session,
            names: HashSet::new(),
            pending: Vec::new(),
            handle,
        };
        self.watches.insert(id, watch);
        id
    }

    /// `names` without those watch `id` has already.
    pub fn unwatched(&self, id: WatchId, names: Vec<String>) -> Vec<String> {
        match self.watches.get(&id) {
            Some(watch) => names
                .into_iter()
                .filter(|n| !watch.names.contains(n))
                .collect(),
            None => names,
        }
    }

    /// How many of `names` watch `id` would add (duplicates and names it
    /// watches already count nothing), or why it may not.
    pub fn check(&self, id: WatchId, names: &[String]) -> Result<usize, WatchError> {
        let watch = self.watches.get(&id).ok_or(WatchError::Closed)?;
        let fresh: HashSet<&String> = names.iter().filter(|n| !watch.names.contains(*n)).collect();
        let watching = self.per_session.get(&watch.session).copied().unwrap_or(0);
        if watching + fresh.len() > MAX_WATCHED {
            return Err(WatchError::TooMany {
                max: MAX_WATCHED,
                watching,
            });
        }
        Ok(fresh.len())
    }

    /// Adds `names` with their states now to watch `id`: each state is
    /// queued for it (its first answer), and one that differs from what
    /// the table knew is queued for the name's other watchers too. All or
    /// nothing: past the session's cap nothing is added. Returns how many
    /// names the watch has, and the handles to wake.
    pub fn add(
        &mut self,
        id: WatchId,
        names: Vec<(String, Visible)>,
    ) -> Result<(usize, Vec<H>), WatchError> {
        let list: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        let fresh = self.check(id, &list)?;
        let session = self.watches.get(&id).ok_or(WatchError::Closed)?.session;
        *self.per_session.entry(session).or_default() += fresh;
        let mut wake = Vec::new();
        for (name, state) in names {
            if let Some(watch) = self.watches.get_mut(&id) {
                watch.names.insert(name.clone());
                queue(&mut watch.pending, &name, state);
            }
            let entry = self.names.entry(name.clone()).or_insert(Entry {
                state,
                watches: HashSet::new(),
            });
            entry.watches.insert(id);
            if entry.state != state {
                entry.state = state;
                let others: Vec<WatchId> =
                    entry.watches.iter().copied().filter(|w| *w != id).collect();
                wake.extend(self.push(&others, &name, state));
            }
        }
        let count = self.watches.get(&id).map_or(0, |w| w.names.len());
        wake.extend(self.watches.get(&id).map(|w| w.handle.clone()));
        Ok((count, wake))
    }

    /// `name` is online with this key now (`Some`) or offline (`None`,
    /// keeping the key it had: bindings never change). Returns the handles
    /// of the watches to wake: none if nobody watches it or nothing changed.
    pub fn update(&mut self, name: &str, online: Option<Fingerprint>) -> Vec<H> {
        let Some(entry) = self.names.get_mut(name) else {
            return vec![];
        };
        let state = match online {
            Some(fp) => Visible::online(fp),
            None => Visible::offline(entry.state.fingerprint),
        };
        if entry.state == state {
            return vec![];
        }
        entry.state = state;
        let watches: Vec<WatchId> = entry.watches.iter().copied().collect();
        self.push(&watches, name, state)
    }

    /// `name` was just bound to `fingerprint` (a registration): a watched
    /// name shown offline without a key ("not registered") gets it.
    pub fn bound(&mut self, name: &str, fingerprint: Fingerprint) -> Vec<H> {
        let Some(entry) = self.names.get_mut(name) else {
            return vec![];
        };
        if entry.state.online || entry.state.fingerprint.is_some() {
            return vec![];
        }
        let state = Visible::offline(Some(fingerprint));
        entry.state = state;
        let watches: Vec<WatchId> = entry.watches.iter().copied().collect();
        self.push(&watches, name, state)
    }

    fn push(&mut self, watches: &[WatchId], name: &str, state: Visible) -> Vec<H> {
        let mut wake = Vec::new();
        for w in watches {
            if let Some(watch) = self.watches.get_mut(w) {
                queue(&mut watch.pending, name, state);
                wake.push(watch.handle.clone());
            }
        }
        wake
    }

    /// The states queued for watch `id`, oldest first (and the queue emptied).
    pub fn take(&mut self, id: WatchId) -> Vec<(String, Visible)> {
        self.watches
            .get_mut(&id)
            .map(|w| std::mem::take(&mut w.pending))
            .unwrap_or_default()
    }

    /// Ends watch `id` (its stream or its session went).
    pub fn close(&mut self, id: WatchId) {
        let Some(watch) = self.watches.remove(&id) else {
            return;
        };
        if let Some(count) = self.per_session.get_mut(&watch.session) {
            *count = count.saturating_sub(watch.names.len());
            if *count == 0 {
                self.per_session.remove(&watch.session);
            }
        }
        for name in watch.names {
            if let Some(entry) = self.names.get_mut(&name) {
                entry.watches.remove(&id);
                if entry.watches.is_empty() {
                    self.names.remove(&name);
                }
            }
        }
    }

    /// Every name someone watches (to check them all after a resync).
    pub fn watched(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// Whether someone watches `name`.
    pub fn is_watched(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Subscriptions: (watch, name) pairs.
    pub fn subscriptions(&self) -> usize {
        self.watches.values().map(|w| w.names.len()).sum()
    }

    /// Open watch streams.
    pub fn watches(&self) -> usize {
        self.watches.len()
    }
}

/// Queues `state` for `name`, replacing a state of it not yet written.
fn queue(pending: &mut Vec<(String, Visible)>, name: &str, state: Visible) {
    match pending.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = state,
        None => pending.push((name.to_owned(), state)),
    }
}

#[cfg(test)]
#[path = "watchers_tests.rs"]
mod tests;
