//! Contacts we have talked to: name → fingerprint, like ssh's known_hosts.
//!
//! The server vouches for a name's key, but a lying (or reset) server could
//! hand out another key for a name we know. So the first key seen for a name
//! is recorded, and a different one later is refused with `key_changed`
//! unless the user says to accept it. One line per contact: `NAME FINGERPRINT`;
//! `#` starts a comment. Writes are atomic (temp file + rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::Fingerprint;

use crate::error::{Error, Result};

/// What the file says about a name and a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Never seen: record it.
    New,
    /// Same key as on record.
    Known,
    /// Another key is on record.
    Changed(Fingerprint),
}

/// The known_peers file.
#[derive(Debug, Clone)]
pub struct KnownPeers {
    path: PathBuf,
}

impl KnownPeers {
    /// The file at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<BTreeMap<String, Fingerprint>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
        };
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(fp)) = (parts.next(), parts.next()) {
                if let Ok(fp) = fp.parse() {
                    map.insert(name.to_owned(), fp);
                }
            }
        }
        Ok(map)
    }

    /// Compares `key` with the record for `name`.
    pub fn check(&self, name: &str, key: &Fingerprint) -> Result<Check> {
        Ok(match self.read()?.get(name) {
            None => Check::New,
            Some(k) if k == key => Check::Known,
            Some(k) => Check::Changed(*k),
        })
    }

    /// Every (name, key) recorded, in name order.
    pub(crate) fn entries(&self) -> Result<Vec<(String, Fingerprint)>> {
        Ok(self.read()?.into_iter().collect())
    }

    /// The recorded key of `name`.
    pub fn get(&self, name: &str) -> Result<Option<Fingerprint>> {
        Ok(self.read()?.get(name).copied())
    }

    /// Records (or replaces) the key of `name`.
    pub fn record(&self, name: &str, key: &Fingerprint) -> Result<()> {
        let mut map = self.read()?;
        if map.get(name) == Some(key) {
            return Ok(());
        }
        map.insert(name.to_owned(), *key);
        let mut text =
            String::from("# peers this machine has called or been called by: NAME FINGERPRINT\n");
        for (n, k) in &map {
            text.push_str(&format!("{n} {k}\n"));
        }
        let ctx = |e| Error::io(format!("writing {}", self.path.display()), e);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(ctx)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(ctx)?;
        std::fs::rename(&tmp, &self.path).map_err(ctx)
    }

    /// The error for a changed key.
    pub fn changed_error(&self, name: &str, old: &Fingerprint, new: &Fingerprint) -> Error {
        Error::KeyChanged {
            name: name.to_owned(),
            old: old.to_string(),
            new: new.to_string(),
            file: self.path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_check_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kp = KnownPeers::new(dir.path().join("sub/known_peers"));
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(kp.check("alice", &a).expect("check"), Check::New);
        kp.record("alice", &a).expect("record");
        assert_eq!(kp.check("alice", &a).expect("check"), Check::Known);
        assert_eq!(kp.check("alice", &b).expect("check"), Check::Changed(a));
        kp.record("bob", &b).expect("record");
        kp.record("alice", &b).expect("replace");
        assert_eq!(kp.get("alice").expect("get"), Some(b));
        assert_eq!(kp.get("bob").expect("get"), Some(b));
    }
}
