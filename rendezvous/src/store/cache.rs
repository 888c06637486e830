//! A cache of bindings in front of any store.
//!
//! Names are never released, so a binding once read is true forever: the
//! cache never needs invalidating, only bounding. It answers a
//! re-registration (`Claim::Existing`), a claim of a taken name and the
//! owner of a known name without the store, so peers whose names this node
//! has seen can register and call while the store is down, and a busy node
//! reads the store only for names new to it. New names always go to the
//! store (their claim is the durable write).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::Fingerprint;

use super::{check_claim, Claim, NameStore, StoreError};
use crate::state::lock;

/// Bindings kept (~100 bytes each); past it the cache starts over.
const CAPACITY: usize = 200_000;

/// A [`NameStore`] with the bindings it has seen cached.
pub struct CachedStore {
    inner: Arc<dyn NameStore>,
    known: Mutex<HashMap<String, Fingerprint>>,
}

impl CachedStore {
    /// Caches `inner`'s bindings.
    pub fn new(inner: Arc<dyn NameStore>) -> Self {
        Self {
            inner,
            known: Mutex::default(),
        }
    }

    fn remember(&self, name: &str, key: Fingerprint) {
        let mut known = lock(&self.known);
        if known.len() >= CAPACITY {
            known.clear();
        }
        known.insert(name.to_owned(), key);
    }

    fn known(&self, name: &str) -> Option<Fingerprint> {
        lock(&self.known).get(name).copied()
    }
}

#[async_trait::async_trait]
impl NameStore for CachedStore {
    async fn claim(
        &self,
        name: &str,
        key: Fingerprint,
        max_names: usize,
    ) -> Result<Claim, StoreError> {
        if let Some(owner) = self.known(name) {
            // Existing or NameTaken: neither changes a count.
            return check_claim(Some(owner), name, key, 0, max_names);
        }
        let claim = self.inner.claim(name, key, max_names).await?;
        self.remember(name, key);
        Ok(claim)
    }

    async fn held(&self, key: Fingerprint) -> Result<usize, StoreError> {
        self.inner.held(key).await
    }

    async fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        if let Some(owner) = self.known(name) {
            return Ok(Some(owner));
        }
        let owner = self.inner.owner(name).await?;
        if let Some(key) = owner {
            self.remember(name, key);
        }
        Ok(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// A store that fails every call after `fail` is set.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryStore,
        down: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            match self.down.load(std::sync::atomic::Ordering::Relaxed) {
                true => Err(StoreError::Unavailable("down".into())),
                false => Ok(()),
            }
        }
    }

    #[async_trait::async_trait]
    impl NameStore for Flaky {
        async fn claim(&self, n: &str, k: Fingerprint, m: usize) -> Result<Claim, StoreError> {
            self.check()?;
            self.inner.claim(n, k, m).await
        }
        async fn held(&self, k: Fingerprint) -> Result<usize, StoreError> {
            self.check()?;
            self.inner.held(k).await
        }
        async fn owner(&self, n: &str) -> Result<Option<Fingerprint>, StoreError> {
            self.check()?;
            self.inner.owner(n).await
        }
    }

    #[tokio::test]
    async fn known_bindings_answer_while_the_store_is_down_and_new_names_do_not() {
        let flaky = Arc::new(Flaky::default());
        let store = CachedStore::new(flaky.clone());
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(store.claim("alice", a, 4).await.expect("claim"), Claim::New);
        assert_eq!(flaky.inner.owner("bob").await.expect("owner"), None);
        flaky
            .inner
            .claim("bob", b, 4)
            .await
            .expect("bob, by another node");
        assert_eq!(store.owner("bob").await.expect("read"), Some(b));
        flaky.down.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            store.claim("alice", a, 4).await.expect("re-registration"),
            Claim::Existing
        );
        assert!(matches!(
            store.claim("alice", b, 4).await,
            Err(StoreError::NameTaken { .. })
        ));
        assert_eq!(store.owner("bob").await.expect("cached"), Some(b));
        assert!(
            matches!(
                store.claim("carol", a, 4).await,
                Err(StoreError::Unavailable(_))
            ),
            "a new name needs the store"
        );
        assert!(
            matches!(store.owner("dave").await, Err(StoreError::Unavailable(_))),
            "an unknown name is never 'not found' without the store"
        );
    }
}
