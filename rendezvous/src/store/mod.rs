//! Durable name bindings: which key owns which name.
//!
//! Losing a binding lets someone steal a name, so a claim is acknowledged
//! only after it is committed. The protocol code sees only the async
//! [`NameStore`] trait; behind it are the embedded [`RedbStore`] (the
//! default: one node, no service to run), [`PgStore`] (PostgreSQL, shared by
//! every node of a cluster) and [`MemoryStore`] (tests). Presence (who is
//! online) is not stored here: see [`crate::registry`].
//!
//! Names are never released, so each key may hold at most a few
//! ([`crate::Limits::max_names_per_key`]); every store counts them per key
//! and checks the cap in the same transaction as the claim, by the one rule
//! [`check_claim`].
//!
//! A store that cannot answer says [`StoreError::Unavailable`]
//! (retryable: the peer is told `unavailable`), never "no owner": a wrong
//! "not found" or a second owner is worse than a late answer.

mod cache;
mod memory;
mod postgres;
mod redb;

pub use self::cache::CachedStore;
pub use self::memory::MemoryStore;
pub use self::postgres::PgStore;
pub use self::redb::RedbStore;

use common::Fingerprint;
use thiserror::Error;

/// Outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name was free and is now bound to the key.
    New,
    /// The key already owned the name.
    Existing,
}

/// Why the store refused or failed.
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
    /// The store cannot be reached or did not answer in time (connection
    /// refused or lost, pool wait or statement timeout, serialization
    /// failures past the retries, an overloaded commit queue). Retryable:
    /// nothing was decided, or what was committed is found on the retry.
    #[error("name store unavailable: {0}")]
    Unavailable(String),
    /// The storage engine failed in a way a retry does not fix (a schema
    /// newer than this binary, bad data).
    #[error("storage error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Name → key bindings. Implementations must make a [`Claim::New`] durable
/// before returning it, and must answer [`StoreError::Unavailable`] (never
/// `Ok(None)` or [`StoreError::NameTaken`]) when they cannot tell.
#[async_trait::async_trait]
pub trait NameStore: Send + Sync + 'static {
    /// Binds `name` to `key` if it is free and `key` holds fewer than
    /// `max_names` names; succeeds if `key` already owns it.
    async fn claim(
        &self,
        name: &str,
        key: Fingerprint,
        max_names: usize,
    ) -> Result<Claim, StoreError>;
    /// How many names `key` holds.
    async fn held(&self, key: Fingerprint) -> Result<usize, StoreError>;
    /// The key that owns `name`, if any.
    async fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError>;
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

/// Where a server keeps its name bindings.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// `names.redb` in the data dir ([`RedbStore`]): one node, nothing to run.
    #[default]
    Embedded,
    /// PostgreSQL at this `postgres://` URL ([`PgStore`]), shared by nodes.
    Postgres(String),
}

/// Never shows the URL (it may hold a password).
impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// Why a `--store` value was refused.
#[derive(Debug, Error)]
#[error(
    "--store takes {}; without --store the names are kept in the data dir",
    postgres::URL_FORMS
)]
pub struct StoreChoiceError;

/// `postgres://…` or `postgresql://…` (the URL is checked at connect).
impl std::str::FromStr for StoreChoice {
    type Err = StoreChoiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_owned()))
        } else {
            Err(StoreChoiceError)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No cap (for the tests of the other rules).
    pub(super) const ANY: usize = usize::MAX;

    /// The rules every store keeps (new, existing, taken, cap, held).
    pub(super) async fn exercise(store: &dyn NameStore) {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(
            store.claim("alice", a, ANY).await.expect("claim"),
            Claim::New
        );
        assert_eq!(
            store.claim("alice", a, ANY).await.expect("again"),
            Claim::Existing
        );
        assert!(matches!(
            store.claim("alice", b, ANY).await,
            Err(StoreError::NameTaken { .. })
        ));
        assert_eq!(store.owner("alice").await.expect("owner"), Some(a));
        assert_eq!(store.owner("bob").await.expect("owner"), None);
        assert_eq!(store.claim("bob", b, ANY).await.expect("bob"), Claim::New);
        assert_eq!(store.held(a).await.expect("held"), 1);
    }

    #[tokio::test]
    async fn memory_store_rules() {
        exercise(&MemoryStore::default()).await;
    }

    #[tokio::test]
    async fn redb_store_rules_through_the_trait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("n.redb")).expect("open");
        exercise(&store).await;
    }

    #[test]
    fn a_store_is_a_postgres_url_and_its_debug_hides_it() {
        for good in ["postgres://u:pw@h/db", "postgresql://h/db"] {
            let choice: StoreChoice = good.parse().expect(good);
            assert_eq!(choice, StoreChoice::Postgres(good.to_owned()));
            assert!(!format!("{choice:?}").contains("pw"));
        }
        for bad in [
            "mysql://h/db",
            "redb",
            "",
            "postgres:/h",
            "/var/lib/names.redb",
        ] {
            let e = bad.parse::<StoreChoice>().expect_err(bad).to_string();
            assert!(
                e.contains("postgres://") && e.contains("postgresql://"),
                "{e}"
            );
        }
    }

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(StoreError::Unavailable("down".into()).is_retryable());
        assert!(!StoreError::Backend("schema".into()).is_retryable());
        assert!(!StoreError::NameTaken { name: "a".into() }.is_retryable());
        assert!(!StoreError::TooManyNames { max: 1 }.is_retryable());
    }

    #[test]
    fn the_rule() {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(check_claim(None, "n", a, 0, 1).expect("free"), Claim::New);
        assert!(matches!(
            check_claim(None, "n", a, 1, 1),
            Err(StoreError::TooManyNames { max: 1 })
        ));
        // The cap does not stop a key from re-registering a name it holds.
        assert_eq!(
            check_claim(Some(a), "n", a, 9, 1).expect("own"),
            Claim::Existing
        );
        assert!(matches!(
            check_claim(Some(b), "n", a, 0, 1),
            Err(StoreError::NameTaken { .. })
        ));
    }
}
