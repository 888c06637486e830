//! Durable name bindings: which key owns which name.
//!
//! Losing a binding lets someone steal a name, so a claim is acknowledged
//! only after it is committed to disk. The protocol code sees only the
//! [`NameStore`] trait, so a shared, replicated database can replace the
//! embedded [`RedbStore`] later without touching it. [`MemoryStore`] is for
//! tests. Presence (who is online) is not stored here: see [`crate::registry`].
//!
//! Names are never released, so each key may hold at most a few
//! ([`crate::Limits::max_names_per_key`]); the store counts them per key and
//! checks the cap in the same transaction as the claim.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::Fingerprint;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

const NAMES: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("names");
/// Names held per key (derived from `names`; rebuilt if missing).
const HELD: TableDefinition<&[u8; 32], u32> = TableDefinition::new("names_per_key");

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
    /// The key already holds the most names allowed.
    #[error("this key already holds {max} names, the most allowed")]
    TooManyNames {
        /// The cap.
        max: usize,
    },
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Backend(String),
}

/// Name → key bindings. Implementations must make a [`Claim::New`] durable
/// before returning it.
pub trait NameStore: Send + Sync + 'static {
    /// Binds `name` to `key` if it is free and `key` holds fewer than
    /// `max_names` names; succeeds if `key` already owns it.
    fn claim(&self, name: &str, key: Fingerprint, max_names: usize) -> Result<Claim, StoreError>;
    /// How many names `key` holds.
    fn held(&self, key: Fingerprint) -> Result<usize, StoreError>;
    /// The key that owns `name`, if any.
    fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError>;
}

/// The pure rule behind every store: the first key to claim a name owns
/// it, and a key holding `held` names gets a new one only below `max_names`.
pub fn check_claim(
    current: Option<Fingerprint>,
    name: &str,
    key: Fingerprint,
    held: usize,
    max_names: usize,
) -> Result<Claim, StoreError> {
    match current {
        None if held >= max_names => Err(StoreError::TooManyNames { max: max_names }),
        None => Ok(Claim::New),
        Some(owner) if owner == key => Ok(Claim::Existing),
        Some(_) => Err(StoreError::NameTaken {
            name: name.to_owned(),
        }),
    }
}

/// Bindings in an embedded redb database (fsynced commits).
///
/// Every write uses redb's two-phase commit. Its docs warn that without it
/// a writer who chooses stored data and can crash the machine mid-fsync
/// could in theory craft a checksum collision that makes a torn commit
/// look valid; here strangers choose the names stored. The cost is a
/// second fsync per commit, shared by every claim of a group. In a debug
/// build (container disk, 3 runs each) one claim at a time made 140–440/s
/// with it against 300–1,700/s without, and 64 claimants at once
/// 4,500–5,100/s against 5,700–6,600/s; `cargo bench -p rendezvous --bench
/// store` measures the release build (2,817/s and 25,505/s in one run). Only new names
/// are written (a peer re-registering its name reads, never commits), and
/// ~5,000 new names a second is far above what the register rate lets
/// sources ask for, so integrity wins.
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
    /// Claims for the next commit.
    queue: Vec<Queued>,
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

/// A claim waiting for a commit.
struct Queued {
    ticket: u64,
    name: String,
    key: Fingerprint,
    max_names: usize,
}

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
        let mut tx = db.begin_write().map_err(backend)?;
        tx.set_two_phase_commit(true);
        {
            let names = tx.open_table(NAMES).map_err(backend)?;
            let mut held = tx.open_table(HELD).map_err(backend)?;
            // A store from before the per-key count: count once.
            if held.is_empty().map_err(backend)? && !names.is_empty().map_err(backend)? {
                let mut counts: HashMap<[u8; 32], u32> = HashMap::new();
                for entry in names.iter().map_err(backend)? {
                    let (_, key) = entry.map_err(backend)?;
                    *counts.entry(*key.value()).or_default() += 1;
                }
                for (key, n) in counts {
                    held.insert(&key, n).map_err(backend)?;
                }
            }
        }
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
    fn commit_group(&self, claims: &[Queued]) -> Vec<Outcome> {
        let attempt = || -> Result<Vec<Outcome>, StoreError> {
            let mut tx = self.db.begin_write().map_err(backend)?;
            tx.set_two_phase_commit(true);
            let mut outcomes = Vec::with_capacity(claims.len());
            {
                let mut table = tx.open_table(NAMES).map_err(backend)?;
                let mut held = tx.open_table(HELD).map_err(backend)?;
                for q in claims {
                    // Reads see this transaction's own inserts: two claims of
                    // one name in a group cannot both win, nor one key pass
                    // its cap with claims in one group.
                    let current = table
                        .get(q.name.as_str())
                        .map_err(backend)?
                        .map(|v| Fingerprint(*v.value()));
                    let n = held
                        .get(&q.key.0)
                        .map_err(backend)?
                        .map_or(0, |v| v.value());
                    let claim = check_claim(current, &q.name, q.key, n as usize, q.max_names);
                    if let Ok(Claim::New) = claim {
                        table.insert(q.name.as_str(), &q.key.0).map_err(backend)?;
                        held.insert(&q.key.0, n.saturating_add(1))
                            .map_err(backend)?;
                    }
                    outcomes.push((q.ticket, claim));
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
                .map(|q| (q.ticket, Err(StoreError::Backend(msg.clone()))))
                .collect()
        })
    }
}

impl NameStore for RedbStore {
    fn claim(&self, name: &str, key: Fingerprint, max_names: usize) -> Result<Claim, StoreError> {
        if let Some(owner) = self.owner(name)? {
            return check_claim(Some(owner), name, key, 0, max_names);
        }
        let deadline = Instant::now() + CLAIM_TIMEOUT;
        let mut group = self.group();
        let ticket = group.next_ticket;
        group.next_ticket += 1;
        group.queue.push(Queued {
            ticket,
            name: name.to_owned(),
            key,
            max_names,
        });
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

    fn held(&self, key: Fingerprint) -> Result<usize, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(HELD).map_err(backend)?;
        let n = table.get(&key.0).map_err(backend)?.map_or(0, |v| v.value());
        Ok(n as usize)
    }
}

/// Bindings in memory only (tests; a server that may forget names).
#[derive(Default)]
pub struct MemoryStore {
    names: Mutex<HashMap<String, Fingerprint>>,
}

impl NameStore for MemoryStore {
    fn claim(&self, name: &str, key: Fingerprint, max_names: usize) -> Result<Claim, StoreError> {
        let mut names = self.names.lock().map_err(backend)?;
        let held = names.values().filter(|k| **k == key).count();
        let claim = check_claim(names.get(name).copied(), name, key, held, max_names)?;
        names.insert(name.to_owned(), key);
        Ok(claim)
    }

    fn held(&self, key: Fingerprint) -> Result<usize, StoreError> {
        let names = self.names.lock().map_err(backend)?;
        Ok(names.values().filter(|k| **k == key).count())
    }

    fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        Ok(self.names.lock().map_err(backend)?.get(name).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No cap (for the tests of the other rules).
    const ANY: usize = usize::MAX;

    fn exercise(store: &dyn NameStore) {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(store.claim("alice", a, ANY).expect("claim"), Claim::New);
        assert_eq!(
            store.claim("alice", a, ANY).expect("again"),
            Claim::Existing
        );
        assert!(matches!(
            store.claim("alice", b, ANY),
            Err(StoreError::NameTaken { .. })
        ));
        assert_eq!(store.owner("alice").expect("owner"), Some(a));
        assert_eq!(store.owner("bob").expect("owner"), None);
        assert_eq!(store.claim("bob", b, ANY).expect("bob"), Claim::New);
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
                            (name.clone(), store.claim(&name, Fingerprint([t; 32]), ANY))
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
            reopened.claim("alice", Fingerprint([2; 32]), ANY),
            Err(StoreError::NameTaken { .. })
        ));
    }

    fn names_per_key_are_capped(store: &dyn NameStore) {
        let (a, b) = (Fingerprint([5; 32]), Fingerprint([6; 32]));
        for i in 0..4 {
            assert_eq!(
                store.claim(&format!("a{i}"), a, 4).expect("claim"),
                Claim::New
            );
        }
        assert!(matches!(
            store.claim("a4", a, 4),
            Err(StoreError::TooManyNames { max: 4 })
        ));
        assert_eq!(
            store.owner("a4").expect("owner"),
            None,
            "a refused claim binds nothing"
        );
        assert_eq!(store.claim("a2", a, 4).expect("own name"), Claim::Existing);
        assert_eq!(store.claim("b0", b, 4).expect("another key"), Claim::New);
        assert_eq!(store.held(a).expect("held"), 4);
        assert_eq!(store.held(b).expect("held"), 1);
    }

    #[test]
    fn names_per_key_are_capped_in_every_store() {
        names_per_key_are_capped(&MemoryStore::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.redb");
        names_per_key_are_capped(&RedbStore::open(&path).expect("open"));
        let reopened = RedbStore::open(&path).expect("reopen");
        assert!(matches!(
            reopened.claim("a9", Fingerprint([5; 32]), 4),
            Err(StoreError::TooManyNames { .. })
        ));
    }

    #[test]
    fn one_key_claiming_at_once_cannot_pass_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(RedbStore::open(&dir.path().join("n.redb")).expect("open"));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || store.claim(&format!("k{i}"), Fingerprint([7; 32]), 4))
            })
            .collect();
        let won = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|o| matches!(o, Ok(Claim::New)))
            .count();
        assert_eq!(won, 4);
        assert_eq!(store.held(Fingerprint([7; 32])).expect("held"), 4);
    }

    #[test]
    fn a_store_from_before_the_count_is_counted_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.redb");
        {
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("tx");
            {
                let mut names = tx.open_table(NAMES).expect("table");
                for n in ["x1", "x2", "x3", "x4", "x5"] {
                    names.insert(n, &[8; 32]).expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        let store = RedbStore::open(&path).expect("open");
        assert_eq!(store.held(Fingerprint([8; 32])).expect("held"), 5);
        assert!(matches!(
            store.claim("x6", Fingerprint([8; 32]), 4),
            Err(StoreError::TooManyNames { .. })
        ));
    }
}
