//! [`MemoryStore`]: bindings in memory only (tests; a server that may
//! forget names).

use std::collections::HashMap;
use std::sync::Mutex;

use common::Fingerprint;

use super::{check_claim, Claim, NameStore, StoreError};

/// Bindings in memory only (tests; a server that may forget names).
#[derive(Default)]
pub struct MemoryStore {
    names: Mutex<HashMap<String, Fingerprint>>,
}

fn poisoned(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[async_trait::async_trait]
impl NameStore for MemoryStore {
    async fn claim(
        &self,
        name: &str,
        key: Fingerprint,
        max_names: usize,
    ) -> Result<Claim, StoreError> {
        let mut names = self.names.lock().map_err(poisoned)?;
        let held = names.values().filter(|k| **k == key).count();
        let claim = check_claim(names.get(name).copied(), name, key, held, max_names)?;
        names.insert(name.to_owned(), key);
        Ok(claim)
    }

    async fn held(&self, key: Fingerprint) -> Result<usize, StoreError> {
        let names = self.names.lock().map_err(poisoned)?;
        Ok(names.values().filter(|k| **k == key).count())
    }

    async fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        Ok(self.names.lock().map_err(poisoned)?.get(name).copied())
    }
}
