//! Durable name bindings: which key owns which name.
//!
//! Losing a binding lets someone steal a name, so a claim is acknowledged
//! only after it is committed to disk. The protocol code sees only the
//! [`NameStore`] trait, so a shared, replicated database can replace the
//! embedded [`RedbStore`] later without touching it. [`MemoryStore`] is for
//! tests. Presence (who is online) is not stored here: see [`crate::registry`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

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
pub struct RedbStore {
    db: Database,
}

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
        Ok(Self { db })
    }
}

impl NameStore for RedbStore {
    fn claim(&self, name: &str, key: Fingerprint) -> Result<Claim, StoreError> {
        if let Some(owner) = self.owner(name)? {
            return check_claim(Some(owner), name, key);
        }
        // redb has one writer at a time, so the check below cannot race.
        let tx = self.db.begin_write().map_err(backend)?;
        let claim = {
            let mut table = tx.open_table(NAMES).map_err(backend)?;
            let current = table
                .get(name)
                .map_err(backend)?
                .map(|v| Fingerprint(*v.value()));
            let claim = check_claim(current, name, key)?;
            if claim == Claim::New {
                table.insert(name, &key.0).map_err(backend)?;
            }
            claim
        };
        // Durability::Immediate (redb's default): commit returns after fsync.
        tx.commit().map_err(backend)?;
        Ok(claim)
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
