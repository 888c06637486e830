//! Identities: a long-lived Ed25519 key and the self-signed certificate made from it.
//!
//! Peers and the server each have one key, stored as a PKCS#8 PEM file readable
//! only by its owner (0600). The first use creates it. The certificate is made
//! afresh from the key at every start (rcgen); nothing trusts the certificate's
//! contents — trust comes from the key's [`Fingerprint`] alone.
//!
//! This module does not own TLS configuration (see [`crate::tls`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::Fingerprint;

/// A key pair with its self-signed certificate.
pub struct Identity {
    key_pkcs8: Vec<u8>,
    cert: CertificateDer<'static>,
    fingerprint: Fingerprint,
}

/// Why an identity could not be loaded or created.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file (or its folder) could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The key file exists but does not hold an Ed25519 PKCS#8 PEM key.
    #[error("identity file {path} does not hold a usable key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file can be read by other users.
    #[error(
        "identity file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key path is a symlink to nothing.
    #[error("identity file {path} is a symlink to {target}, which does not exist; remove the link or create its target")]
    DanglingSymlink {
        /// The key path.
        path: PathBuf,
        /// Where the link points.
        target: PathBuf,
    },
    /// Making the certificate failed (should not happen with a good key).
    #[error("cannot make a certificate: {0}")]
    Certificate(String),
}

impl Identity {
    /// A fresh, in-memory identity (tests, load tools).
    pub fn generate() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        Self::from_key(&key)
    }

    /// Loads the identity at `path`, creating it (and its folder) on first use.
    ///
    /// A symlink at `path` is followed when it points at a key; one pointing
    /// nowhere is an error (creating through it would write wherever it
    /// points, or nowhere at all), never a retry.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        Self::load_or_create_with(path, || {})
    }

    /// [`Identity::load_or_create`], running `between` after the first
    /// look found no key (tests: another process creating it right then).
    fn load_or_create_with(path: &Path, between: impl FnOnce()) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(id) = Self::load(path)? {
            return Ok(id);
        }
        between();
        match missing(path).map_err(io_err)? {
            Missing::Absent => {}
            Missing::Dangling(target) => {
                return Err(IdentityError::DanglingSymlink {
                    path: path.to_owned(),
                    target,
                })
            }
            // Another process created the key since we looked: use it.
            Missing::Appeared => return Self::load(path)?.ok_or_else(|| io_err(vanished())),
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        write_private(path, key.serialize_pem().as_bytes()).map_err(io_err)?;
        // Read back once: if another process won the race to create the
        // key, its key is the one on disk and the one to use.
        Self::load(path)?.ok_or_else(|| io_err(vanished()))
    }

    /// The identity at `path`, or `None` if there is no file there.
    fn load(path: &Path) -> Result<Option<Self>, IdentityError> {
        let pem = match fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        check_private(path)?;
        let bad = |reason: String| IdentityError::BadKey {
            path: path.to_owned(),
            reason,
        };
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        if !key.is_compatible(&rcgen::PKCS_ED25519) {
            return Err(bad("not an Ed25519 key".into()));
        }
        Self::from_key(&key).map(Some)
    }

    fn from_key(key: &rcgen::KeyPair) -> Result<Self, IdentityError> {
        let params = rcgen::CertificateParams::new(vec!["rendezvous-peer".to_owned()])
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let cert = params
            .self_signed(key)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        Ok(Self {
            key_pkcs8: key.serialize_der(),
            fingerprint: Fingerprint::of_spki(&key.public_key_der()),
            cert: cert.der().clone(),
        })
    }

    /// This key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The self-signed certificate.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The private key, for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// Secret bytes derived from the key for `purpose` (e.g. the server's
    /// stateless-reset key), so that they are stable across restarts without
    /// being stored, and useless for anything else.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key_pkcs8);
        let tag = ring::hmac::sign(&key, purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn vanished() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "the key file vanished right after it was there",
    )
}

/// What is at a key path where reading found no file.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    /// Nothing: create the key.
    Absent,
    /// A symlink whose target does not exist.
    Dangling(PathBuf),
    /// A file (or a link to one) is there now: another process made it.
    Appeared,
}

/// Looks again at `path` after reading it found nothing. Only a symlink
/// whose target is missing is [`Missing::Dangling`]; anything else that is
/// there now appeared since the read.
fn missing(path: &Path) -> io::Result<Missing> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Missing::Absent),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_symlink() {
        return Ok(Missing::Appeared);
    }
    match fs::metadata(path) {
        Ok(_) => Ok(Missing::Appeared),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Missing::Dangling(fs::read_link(path).unwrap_or_default()))
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

/// Writes a new file only its owner can read (0600 from its creation): a
/// fresh, uniquely named temp file in the same folder, fsynced, linked into
/// place (never over an existing key), then the folder fsynced. Creates the
/// folder (0700) if needed. A temp file left by a crash has another name and
/// is in no one's way.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let mut temp = tempfile::Builder::new();
    temp.prefix(".identity-").suffix(".tmp");
    #[cfg(unix)]
    temp.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let mut file = temp.tempfile_in(dir)?;
    file.write_all(data)?;
    file.as_file().sync_all()?;
    // No-clobber (link + unlink), so two processes creating the key at once
    // cannot overwrite each other: the loser reads the winner's key.
    match file.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e.error),
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/key.pem");
        let a = Identity::load_or_create(&path).expect("create");
        let b = Identity::load_or_create(&path).expect("load");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(Fingerprint::of_cert(&b.cert()), Ok(b.fingerprint()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn different_keys_differ() {
        let a = Identity::generate().expect("a");
        let b = Identity::generate().expect("b");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.derive_secret("x"), b.derive_secret("x"));
        assert_eq!(a.derive_secret("x"), a.derive_secret("x"));
        assert_ne!(a.derive_secret("x"), a.derive_secret("y"));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        Identity::load_or_create(&path).expect("create");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Identity::load_or_create(&path).expect_err("too open");
        assert!(matches!(err, IdentityError::TooOpen { .. }), "{err}");
    }

    #[test]
    fn refuses_garbage_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write_private(&path, b"not a key").expect("write");
        let err = Identity::load_or_create(&path).expect_err("garbage");
        assert!(matches!(err, IdentityError::BadKey { .. }), "{err}");
    }

    /// Runs the test named `name` (in this module) in a child process with
    /// `CHILD_ENV` set, so that a stack overflow there (it aborts the whole
    /// process) shows as this test failing instead of killing the run.
    #[cfg(unix)]
    fn in_child_process(name: &str, dir: &Path) -> std::process::Output {
        let exe = std::env::current_exe().expect("test binary");
        let child = std::process::Command::new(exe)
            .args([
                "--exact",
                &format!("identity::tests::{name}"),
                "--nocapture",
            ])
            .env(CHILD_ENV, dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the test binary");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(out) => out.expect("child output"),
            Err(_) => {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                panic!("the child test did not finish within 60 s");
            }
        }
    }

    const CHILD_ENV: &str = "IDENTITY_TEST_CHILD_DIR";

    #[cfg(unix)]
    #[test]
    fn a_dangling_symlink_is_a_clear_error() {
        if let Some(dir) = std::env::var_os(CHILD_ENV) {
            // The child: this is where the old code recursed until the
            // stack overflowed.
            let path = Path::new(&dir).join("key.pem");
            let err = Identity::load_or_create(&path).expect_err("dangling symlink");
            assert!(
                matches!(err, IdentityError::DanglingSymlink { .. }),
                "{err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("symlink") && msg.contains("missing.pem"),
                "{msg}"
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        std::os::unix::fs::symlink(dir.path().join("missing.pem"), &path).expect("symlink");
        let out = in_child_process("a_dangling_symlink_is_a_clear_error", dir.path());
        assert!(
            out.status.success(),
            "child failed ({:?}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.path().join("missing.pem").exists(), "nothing created");
        // A symlink to a real key still works.
        let real = dir.path().join("real.pem");
        let id = Identity::load_or_create(&real).expect("create");
        let linked = dir.path().join("linked.pem");
        std::os::unix::fs::symlink(&real, &linked).expect("symlink");
        let again = Identity::load_or_create(&linked).expect("load through link");
        assert_eq!(id.fingerprint(), again.fingerprint());
    }

    #[test]
    fn a_key_created_by_another_process_meanwhile_is_loaded_not_a_dangling_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        let theirs = Identity::generate().expect("their key");
        let pem = {
            let key = rcgen::KeyPair::try_from(theirs.key_pkcs8.as_slice()).expect("key");
            key.serialize_pem()
        };
        // Another process writes its key between our read and our second look.
        let id = Identity::load_or_create_with(&path, || {
            write_private(&path, pem.as_bytes()).expect("their write")
        })
        .expect("their key, not an error");
        assert_eq!(id.fingerprint(), theirs.fingerprint());
        // A regular file, or a link to one, is never a dangling symlink.
        assert_eq!(missing(&path).expect("look"), Missing::Appeared);
        #[cfg(unix)]
        {
            let link = dir.path().join("link.pem");
            std::os::unix::fs::symlink(&path, &link).expect("symlink");
            assert_eq!(missing(&link).expect("look"), Missing::Appeared);
            let dangling = dir.path().join("dangling.pem");
            std::os::unix::fs::symlink(dir.path().join("none"), &dangling).expect("symlink");
            assert_eq!(
                missing(&dangling).expect("look"),
                Missing::Dangling(dir.path().join("none"))
            );
        }
        assert_eq!(
            missing(&dir.path().join("absent")).expect("look"),
            Missing::Absent
        );
    }

    #[test]
    fn a_stale_temp_file_does_not_block_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        // What a crashed earlier run with our pid (PID 1 in a container) left.
        let stale = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&stale, b"half a key").expect("stale temp");
        let id = Identity::load_or_create(&path).expect("create despite the stale temp");
        let again = Identity::load_or_create(&path).expect("load");
        assert_eq!(id.fingerprint(), again.fingerprint());
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let stale_name = format!("key.tmp{}", std::process::id());
        assert_eq!(
            names,
            ["key.pem".to_owned(), stale_name],
            "no new temp left"
        );
    }
}
