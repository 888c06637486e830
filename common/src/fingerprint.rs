//! Fingerprints: who a key is.
//!
//! A fingerprint is the SHA-256 of a key's DER-encoded SubjectPublicKeyInfo
//! (SPKI). It has exactly one text form everywhere — 64 lowercase hex
//! characters — so it can be copied from `peer id` or `rendezvous fingerprint`
//! into a flag or a known_peers file and compared byte for byte.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// SHA-256 of a public key's SPKI.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// The fingerprint of the key in an X.509 certificate.
    pub fn of_cert(cert_der: &[u8]) -> Result<Self, BadCertificate> {
        let (rest, cert) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|_| BadCertificate)?;
        if !rest.is_empty() {
            return Err(BadCertificate);
        }
        Ok(Self::of_spki(cert.public_key().raw))
    }

    /// A short form for logs (first 8 hex characters). Never use it to compare keys.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_owned()
    }
}

/// A certificate that is not well-formed X.509 DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("certificate is not well-formed X.509")]
pub struct BadCertificate;

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Text that is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{text:?} is not a fingerprint: expected 64 hex characters (as printed by `peer id` or `rendezvous fingerprint`)")]
pub struct ParseFingerprintError {
    /// The offending text (cut to a printable length).
    pub text: String,
}

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFingerprintError {
            text: s.chars().take(80).collect(),
        };
        let t = s.trim();
        if t.len() != 64 || !t.is_ascii() {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let fp = Fingerprint::of_spki(b"some key");
        let text = fp.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(text.to_uppercase().parse::<Fingerprint>(), Ok(fp));
    }

    #[test]
    fn refuses_bad_text() {
        for t in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"é".repeat(32)] {
            assert!(t.parse::<Fingerprint>().is_err(), "{t}");
        }
    }
}
