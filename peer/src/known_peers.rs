//! Contacts we have talked to: name → fingerprint, like ssh's known_hosts.
//!
//! The server vouches for a name's key, but a lying (or reset) server could
//! hand out another key for a name we know. So the first key seen for a name
//! is recorded, and a different one later is refused with `key_changed`
//! unless the user says to accept it.
//!
//! The file holds one `NAME FINGERPRINT` per line (a valid name, the
//! fingerprint's one text form, nothing else); lines starting with `#` and
//! blank lines are comments. It **fails closed**: a file that cannot be read,
//! a line that is neither, or a name listed twice is an error of kind
//! `known_peers` naming the file and line, the call stops, and the file is
//! not touched — a contact whose line is broken must not silently become
//! "new" (and then accept any key).
//!
//! Updates take an exclusive lock on `<file>.lock`, re-read the file under
//! it, change the one line (or append one), write a fresh temp file in the
//! same folder, fsync it, rename it over the file and fsync the folder; so
//! concurrent `listen`/`call` processes lose no update and a crash leaves
//! the old file or the new one. Comments and blank lines survive.
//!
//! A call checks the file when the offer (or the answer) arrives and
//! records the key once the connection is up, seconds later. Meanwhile
//! another process may pin another key for that name; so the call sites use
//! [`KnownPeers::record_if`], which re-checks under the lock that the entry
//! is still what the check saw and refuses with `key_changed` otherwise.
//! These calls block (lock, fsyncs): async code runs them in
//! `spawn_blocking` ([`KnownPeers::record_if_async`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{validate_name, Fingerprint};

use crate::error::{Error, Result};

/// The first line of a file this module creates.
const HEADER: &str = "# peers this machine has called or been called by: NAME FINGERPRINT";

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

impl Check {
    /// Compares `key` with what is `recorded` for a name.
    pub fn of(recorded: Option<Fingerprint>, key: &Fingerprint) -> Self {
        match recorded {
            None => Self::New,
            Some(k) if k == *key => Self::Known,
            Some(k) => Self::Changed(k),
        }
    }
}

/// The known_peers file.
#[derive(Debug, Clone)]
pub struct KnownPeers {
    path: PathBuf,
}

/// A file as read: its lines, and where each name is.
struct Parsed {
    lines: Vec<String>,
    /// Name → (index into `lines`, key).
    entries: BTreeMap<String, (usize, Fingerprint)>,
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

    fn error(&self, line: Option<usize>, reason: impl Into<String>) -> Error {
        Error::KnownPeers {
            file: self.path.clone(),
            line,
            reason: reason.into(),
        }
    }

    fn read(&self) -> Result<Parsed> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.error(None, format!("cannot be read: {e}"))),
        };
        self.parse(&text)
    }

    fn parse(&self, text: &str) -> Result<Parsed> {
        let mut parsed = Parsed {
            lines: Vec::new(),
            entries: BTreeMap::new(),
        };
        for (i, line) in text.lines().enumerate() {
            parsed.lines.push(line.to_owned());
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (name, key) = self.parse_entry(i + 1, trimmed)?;
            if let Some((first, _)) = parsed.entries.get(&name) {
                return Err(self.error(
                    Some(i + 1),
                    format!(
                        "{name} is listed again (first on line {}); keep one line per name",
                        first + 1
                    ),
                ));
            }
            parsed.entries.insert(name, (i, key));
        }
        Ok(parsed)
    }

    fn parse_entry(&self, line_no: usize, line: &str) -> Result<(String, Fingerprint)> {
        let mut words = line.split_whitespace();
        let (Some(name), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(self.error(
                Some(line_no),
                "expected NAME FINGERPRINT (or a # comment); fix or remove the line",
            ));
        };
        validate_name(name).map_err(|e| self.error(Some(line_no), e.to_string()))?;
        let key = key
            .parse()
            .map_err(|e: common::fingerprint::ParseFingerprintError| {
                self.error(Some(line_no), e.to_string())
            })?;
        Ok((name.to_owned(), key))
    }

    /// Compares `key` with the record for `name`.
    pub fn check(&self, name: &str, key: &Fingerprint) -> Result<Check> {
        Ok(Check::of(self.get(name)?, key))
    }

    /// Every (name, key) recorded, in file order (oldest first: new
    /// entries are appended), so contacts recorded later cannot push early
    /// ones out of a capped list such as the pre-approved keys.
    pub(crate) fn entries(&self) -> Result<Vec<(String, Fingerprint)>> {
        let mut entries: Vec<(usize, String, Fingerprint)> = self
            .read()?
            .entries
            .into_iter()
            .map(|(name, (line, key))| (line, name, key))
            .collect();
        entries.sort_by_key(|(line, _, _)| *line);
        Ok(entries
            .into_iter()
            .map(|(_, name, key)| (name, key))
            .collect())
    }

    /// The recorded key of `name`.
    pub fn get(&self, name: &str) -> Result<Option<Fingerprint>> {
        Ok(self.read()?.entries.get(name).map(|(_, k)| *k))
    }

    /// Records (or replaces, whatever is there) the key of `name`, under
    /// the file's lock. Calls use [`KnownPeers::record_if`].
    pub fn record(&self, name: &str, key: &Fingerprint) -> Result<()> {
        self.update(name, key, None)
    }

    /// Records `key` for `name` if the entry is still what a check saw:
    /// `seen` (`None`: no entry). Re-read under the lock: if another process
    /// pinned a key other than `seen` meanwhile, the file is left alone and
    /// the error is `key_changed`. With `seen = Some(old)` and `key != old`
    /// this replaces `old` (the user agreed to replace that key, and only
    /// that one). An entry removed meanwhile is recorded afresh.
    pub fn record_if(
        &self,
        name: &str,
        seen: Option<Fingerprint>,
        key: &Fingerprint,
    ) -> Result<()> {
        self.update(name, key, Some(seen))
    }

    /// [`KnownPeers::record_if`] on a blocking thread (it takes a lock and
    /// fsyncs), for async code.
    pub async fn record_if_async(
        &self,
        name: &str,
        seen: Option<Fingerprint>,
        key: &Fingerprint,
    ) -> Result<()> {
        let (this, name, key) = (self.clone(), name.to_owned(), *key);
        tokio::task::spawn_blocking(move || this.record_if(&name, seen, &key))
            .await
            .map_err(|e| self.error(None, format!("recording task failed: {e}")))?
    }

    /// Sets `name` to `key` under the lock; with `seen`, only if the entry
    /// is `key` already, or what was seen, or gone.
    fn update(
        &self,
        name: &str,
        key: &Fingerprint,
        seen: Option<Option<Fingerprint>>,
    ) -> Result<()> {
        validate_name(name)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let io = |what: &str, e: std::io::Error| self.error(None, format!("{what}: {e}"));
        std::fs::create_dir_all(&dir).map_err(|e| io("creating its folder", e))?;
        let lock = self.lock(&dir).map_err(|e| io("locking", e))?;
        let mut parsed = self.read()?;
        let line = format!("{name} {key}");
        match parsed.entries.get(name) {
            Some((_, k)) if k == key => return Ok(()),
            Some((_, k)) if seen.is_some_and(|seen| seen != Some(*k)) => {
                return Err(self.changed_error(name, k, key));
            }
            Some((i, _)) => parsed.lines[*i] = line,
            None => {
                if parsed.lines.is_empty() {
                    parsed.lines.push(HEADER.to_owned());
                }
                parsed.lines.push(line);
            }
        }
        let mut text = parsed.lines.join("\n");
        text.push('\n');
        self.replace(&dir, &text).map_err(|e| io("writing", e))?;
        drop(lock);
        Ok(())
    }

    /// Holds the exclusive lock on `<file>.lock` until the returned file is
    /// dropped. A separate file, because the data file itself is replaced.
    fn lock(&self, dir: &Path) -> std::io::Result<File> {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(name))?;
        file.lock()?;
        Ok(file)
    }

    /// Writes `text` to a fresh temp file beside the file, fsyncs it, renames
    /// it over the file and fsyncs the folder.
    fn replace(&self, dir: &Path, text: &str) -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".known_peers.")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        File::open(dir)?.sync_all()
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
#[path = "known_peers_tests.rs"]
mod tests;
