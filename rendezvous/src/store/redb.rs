//! [`RedbStore`]: bindings in an embedded redb database (fsynced, group
//! commits), the default store of a single node.
//!
//! Its claims block on disk, so the async [`NameStore`] methods run the
//! synchronous ones (kept as inherent fns, for the unit tests) on tokio's
//! blocking pool.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use common::Fingerprint;

use super::{check_claim, Claim, NameStore, StoreError};

const NAMES: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("names");
/// Names held per key (derived from `names`; rebuilt if missing).
const HELD: TableDefinition<&[u8; 32], u32> = TableDefinition::new("names_per_key");

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
    inner: Arc<Inner>,
}

/// The database and its commit group, shared with the blocking tasks.
struct Inner {
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
            inner: Arc::new(Inner {
                db,
                group: Mutex::new(Group::default()),
                committed: Condvar::new(),
            }),
        })
    }

    /// [`NameStore::claim`], blocking until the claim's group is committed.
    pub fn claim_blocking(
        &self,
        name: &str,
        key: Fingerprint,
        max_names: usize,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(name, key, max_names)
    }

    /// [`NameStore::owner`], blocking.
    pub fn owner_blocking(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        self.inner.owner(name)
    }

    /// [`NameStore::held`], blocking.
    pub fn held_blocking(&self, key: Fingerprint) -> Result<usize, StoreError> {
        self.inner.held(key)
    }

    /// Runs `f` on the blocking pool (a lost task is a backend failure).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("name store task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl NameStore for RedbStore {
    async fn claim(
        &self,
        name: &str,
        key: Fingerprint,
        max_names: usize,
    ) -> Result<Claim, StoreError> {
        let name = name.to_owned();
        self.blocking(move |s| s.claim(&name, key, max_names)).await
    }

    async fn held(&self, key: Fingerprint) -> Result<usize, StoreError> {
        self.blocking(move |s| s.held(key)).await
    }

    async fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        let name = name.to_owned();
        self.blocking(move |s| s.owner(&name)).await
    }
}

impl Inner {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// No cap (for the tests of the other rules).
    const ANY: usize = usize::MAX;

    fn exercise(store: &RedbStore) {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(
            store.claim_blocking("alice", a, ANY).expect("claim"),
            Claim::New
        );
        assert_eq!(
            store.claim_blocking("alice", a, ANY).expect("again"),
            Claim::Existing
        );
        assert!(matches!(
            store.claim_blocking("alice", b, ANY),
            Err(StoreError::NameTaken { .. })
        ));
        assert_eq!(store.owner_blocking("alice").expect("owner"), Some(a));
        assert_eq!(store.owner_blocking("bob").expect("owner"), None);
        assert_eq!(
            store.claim_blocking("bob", b, ANY).expect("bob"),
            Claim::New
        );
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
                            (
                                name.clone(),
                                store.claim_blocking(&name, Fingerprint([t; 32]), ANY),
                            )
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
                reopened.owner_blocking(name).expect("owner").is_some(),
                "{name} lost"
            );
        }
        assert!(reopened.inner.group().done.is_empty());
    }

    #[test]
    fn redb_store_rules_and_persistence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.redb");
        exercise(&RedbStore::open(&path).expect("open"));
        let reopened = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            reopened.owner_blocking("alice").expect("owner"),
            Some(Fingerprint([1; 32]))
        );
        assert!(matches!(
            reopened.claim_blocking("alice", Fingerprint([2; 32]), ANY),
            Err(StoreError::NameTaken { .. })
        ));
    }

    fn cap_rules(store: &RedbStore) {
        let (a, b) = (Fingerprint([5; 32]), Fingerprint([6; 32]));
        for i in 0..4 {
            assert_eq!(
                store.claim_blocking(&format!("a{i}"), a, 4).expect("claim"),
                Claim::New
            );
        }
        assert!(matches!(
            store.claim_blocking("a4", a, 4),
            Err(StoreError::TooManyNames { max: 4 })
        ));
        assert_eq!(
            store.owner_blocking("a4").expect("owner"),
            None,
            "a refused claim binds nothing"
        );
        assert_eq!(
            store.claim_blocking("a2", a, 4).expect("own name"),
            Claim::Existing
        );
        assert_eq!(
            store.claim_blocking("b0", b, 4).expect("another key"),
            Claim::New
        );
        assert_eq!(store.held_blocking(a).expect("held"), 4);
        assert_eq!(store.held_blocking(b).expect("held"), 1);
    }

    #[test]
    fn names_per_key_are_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.redb");
        cap_rules(&RedbStore::open(&path).expect("open"));
        let reopened = RedbStore::open(&path).expect("reopen");
        assert!(matches!(
            reopened.claim_blocking("a9", Fingerprint([5; 32]), 4),
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
                std::thread::spawn(move || {
                    store.claim_blocking(&format!("k{i}"), Fingerprint([7; 32]), 4)
                })
            })
            .collect();
        let won = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|o| matches!(o, Ok(Claim::New)))
            .count();
        assert_eq!(won, 4);
        assert_eq!(store.held_blocking(Fingerprint([7; 32])).expect("held"), 4);
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
        assert_eq!(store.held_blocking(Fingerprint([8; 32])).expect("held"), 5);
        assert!(matches!(
            store.claim_blocking("x6", Fingerprint([8; 32]), 4),
            Err(StoreError::TooManyNames { .. })
        ));
    }
}
