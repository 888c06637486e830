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
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::read_to_string(path) {
            Ok(pem) => {
                check_private(path)?;
                let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| IdentityError::BadKey {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
                if !key.is_compatible(&rcgen::PKCS_ED25519) {
                    return Err(IdentityError::BadKey {
                        path: path.to_owned(),
                        reason: "not an Ed25519 key".into(),
                    });
                }
                Self::from_key(&key)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| IdentityError::Certificate(e.to_string()))?;
                write_private(path, key.serialize_pem().as_bytes()).map_err(io_err)?;
                // Read back: if another process won the race to create the
                // key, its key is the one on disk and the one to use.
                Self::load_or_create(path)
            }
            Err(e) => Err(io_err(e)),
        }
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

/// Writes a new file only its owner can read, atomically (temp file + rename),
/// creating the folder (0700) if needed. Never overwrites an existing key.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    // hard_link fails if the target exists, so two processes creating the key
    // at once cannot overwrite each other: the loser reads the winner's key.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
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
}
