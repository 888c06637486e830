//! Durable name bindings: which key owns which name.
//!
//! Losing a binding lets someone steal a name, so a claim is acknowledged
//! only after it is committed to disk. The protocol code sees only the
//! [`NameStore`] trait, so a shared, replicated database can replace the
//! embedded [`RedbStore`] later without touching it. [`MemoryStore`] is for
//! tests. Presence (who is online) is not stored here: see [`crate::registry`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::Fingerprint;
use redb::{Database, ReadableTable, TableDefinition};
use thiserror::Error;

const NAMES: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("names");

/// Outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name was free and is now bound to the key.
    New,
    /// The key already owned the name.
    Existing,
}

/// Why the store failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The name belongs to another key.
    #[error("name {name:?} is taken by another key")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Backend(String),
}

/// Name → key bindings. Implementations must make a [`Claim::New`] durable
/// before returning it.
pub trait NameStore: Send + Sync + 'static {
    /// Binds `name` to `key` if it is free; succeeds if `key` already owns it.
    fn claim(&self, name: &str, key: Fingerprint) -> Result<Claim, StoreError>;
    /// The key that owns `name`, if any.
    fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError>;
}

/// The pure rule behind every store: the first key to claim a name owns it.
pub fn check_claim(
    current: Option<Fingerprint>,
    name: &str,
    key: Fingerprint,
) -> Result<Claim, StoreError> {
    match current {
        None => Ok(Claim::New),
        Some(owner) if owner == key => Ok(Claim::Existing),
        Some(_) => Err(StoreError::NameTaken {
            name: name.to_owned(),
        }),
    }
}

/// Bindings in an embedded redb database (fsynced commits).
///
/// Claims of new names are committed in groups: while one commit is being
/// fsynced, the claims that arrive wait for it and then go to disk together
/// in the next one. Each claim is still acknowledged only after the commit
/// that holds it is durable; a burst of registrations (a ramp, or a
/// community's first day) costs one fsync per group instead of one each.
pub struct RedbStore {
    db: Database,
    group: Mutex<Group>,
    committed: Condvar,
}

/// Claims waiting for a commit, and the outcome of finished ones.
#[derive(Default)]
struct Group {
    /// Claims for the next commit: (ticket, name, key).
    queue: Vec<(u64, String, Fingerprint)>,
    /// A thread is committing a group now.
    committing: bool,
    /// Tickets whose claimant still waits for the outcome.
    waiting: HashSet<u64>,
    /// Outcomes not yet picked up, by ticket.
    done: HashMap<u64, Result<Claim, StoreError>>,
    next_ticket: u64,
}

/// A claim's ticket and its outcome.
type Outcome = (u64, Result<Claim, StoreError>);

/// Most claims in one commit.
const MAX_GROUP: usize = 1024;
/// Longest a claim waits for its group's commit.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(NAMES).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self {
            db,
            group: Mutex::new(Group::default()),
            committed: Condvar::new(),
        })
    }

    fn group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One write transaction for `claims`, one fsync; an outcome per claim.
    fn commit_group(&self, claims: &[(u64, String, Fingerprint)]) -> Vec<Outcome> {
        let attempt = || -> Result<Vec<Outcome>, StoreError> {
            let tx = self.db.begin_write().map_err(backend)?;
            let mut outcomes = Vec::with_capacity(claims.len());
            {
                let mut table = tx.open_table(NAMES).map_err(backend)?;
                for (ticket, name, key) in claims {
                    // Reads see this transaction's own inserts: two claims of
                    // one name in a group cannot both win.
                    let current = table
                        .get(name.as_str())
                        .map_err(backend)?
                        .map(|v| Fingerprint(*v.value()));
                    let claim = check_claim(current, name, *key);
                    if let Ok(Claim::New) = claim {
                        table.insert(name.as_str(), &key.0).map_err(backend)?;
                    }
                    outcomes.push((*ticket, claim));
                }
            }
            // Durability::Immediate (redb's default): commit returns after fsync.
            tx.commit().map_err(backend)?;
            Ok(outcomes)
        };
        attempt().unwrap_or_else(|e| {
            let msg = e.to_string();
            claims
                .iter()
                .map(|(t, _, _)| (*t, Err(StoreError::Backend(msg.clone()))))
                .collect()
        })
    }
}

impl NameStore for RedbStore {
    fn claim(&self, name: &str, key: Fingerprint) -> Result<Claim, StoreError> {
        if let Some(owner) = self.owner(name)? {
            return check_claim(Some(owner), name, key);
        }
        let deadline = Instant::now() + CLAIM_TIMEOUT;
        let mut group = self.group();
        let ticket = group.next_ticket;
        group.next_ticket += 1;
        group.queue.push((ticket, name.to_owned(), key));
        group.waiting.insert(ticket);
        loop {
            if let Some(outcome) = group.done.remove(&ticket) {
                return outcome;
            }
            if !group.committing {
                // Lead: commit everything queued so far (this claim included).
                group.committing = true;
                let take = group.queue.len().min(MAX_GROUP);
                let claims: Vec<_> = group.queue.drain(..take).collect();
                drop(group);
                let outcomes = self.commit_group(&claims);
                group = self.group();
                group.committing = false;
                for (t, outcome) in outcomes {
                    if group.waiting.remove(&t) {
                        group.done.insert(t, outcome);
                    }
                }
                self.committed.notify_all();
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                group.waiting.remove(&ticket);
                return Err(StoreError::Backend(format!(
                    "no commit within {CLAIM_TIMEOUT:?}"
                )));
            }
            group = self
                .committed
                .wait_timeout(group, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(NAMES).map_err(backend)?;
        let owner = table
            .get(name)
            .map_err(backend)?
            .map(|v| Fingerprint(*v.value()));
        Ok(owner)
    }
}

/// Bindings in memory only (tests; a server that may forget names).
#[derive(Default)]
pub struct MemoryStore {
    names: Mutex<HashMap<String, Fingerprint>>,
}

impl NameStore for MemoryStore {
    fn claim(&self, name: &str, key: Fingerprint) -> Result<Claim, StoreError> {
        let mut names = self.names.lock().map_err(backend)?;
        let claim = check_claim(names.get(name).copied(), name, key)?;
        names.insert(name.to_owned(), key);
        Ok(claim)
    }

    fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        Ok(self.names.lock().map_err(backend)?.get(name).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn NameStore) {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(store.claim("alice", a).expect("claim"), Claim::New);
        assert_eq!(store.claim("alice", a).expect("again"), Claim::Existing);
        assert!(matches!(
            store.claim("alice", b),
            Err(StoreError::NameTaken { .. })
        ));
        assert_eq!(store.owner("alice").expect("owner"), Some(a));
        assert_eq!(store.owner("bob").expect("owner"), None);
        assert_eq!(store.claim("bob", b).expect("bob"), Claim::New);
    }

    #[test]
    fn memory_store_rules() {
        exercise(&MemoryStore::default());
    }

    #[test]
    fn concurrent_claims_share_commits_and_one_key_wins_each_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.redb");
        let store = std::sync::Arc::new(RedbStore::open(&path).expect("open"));
        // 16 threads × 20 claims; every name is claimed by two keys at once.
        let threads: Vec<_> = (0..16u8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|i| {
                            let name = format!("n{}-{i}", t / 2);
                            (name.clone(), store.claim(&name, Fingerprint([t; 32])))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut wins: HashMap<String, usize> = HashMap::new();
        for t in threads {
            for (name, outcome) in t.join().expect("thread") {
                match outcome {
                    Ok(Claim::New) => *wins.entry(name).or_default() += 1,
                    Err(StoreError::NameTaken { .. }) => {
                        wins.entry(name).or_default();
                    }
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
        assert_eq!(wins.len(), 8 * 20);
        assert!(wins.values().all(|w| *w == 1), "{wins:?}");
        drop(store);
        let reopened = RedbStore::open(&path).expect("reopen");
        for name in wins.keys() {
            assert!(
                reopened.owner(name).expect("owner").is_some(),
                "{name} lost"
            );
        }
        assert!(reopened.group().done.is_empty());
    }

    #[test]
    fn redb_store_rules_and_persistence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.redb");
        exercise(&RedbStore::open(&path).expect("open"));
        let reopened = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            reopened.owner("alice").expect("owner"),
            Some(Fingerprint([1; 32]))
        );
        assert!(matches!(
            reopened.claim("alice", Fingerprint([2; 32])),
            Err(StoreError::NameTaken { .. })
        ));
    }
}
