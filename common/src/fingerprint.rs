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

/// Parses the one text form: exactly 64 hex digits, as [`fmt::Display`]
/// writes them. Uppercase digits are accepted too (the bytes they name are
/// the same, and comparison is always on bytes); nothing else is: no sign, no
/// `0x`, no separators, no surrounding whitespace.
impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFingerprintError {
            text: s.chars().take(80).collect(),
        };
        let digits = s.as_bytes();
        if digits.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
                return Err(err());
            };
            *byte = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

/// The value of one hex digit; `None` for anything else (`u8::from_str_radix`
/// would also take a leading `+`).
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
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

    #[test]
    fn only_the_canonical_form_parses() {
        let text = Fingerprint([0x0a; 32]).to_string();
        // `u8::from_str_radix("+a", 16)` is Ok(10): a sign in any byte slot
        // must not make a second spelling of the same key.
        let plus = format!("+a{}", &text[2..]);
        let plus_later = format!("{}+a{}", &text[..10], &text[12..]);
        let spaced = format!(" {}", &text[1..]);
        let padded = format!("{text}\n");
        let prefixed = format!("0x{}", &text[2..]);
        for t in [&plus, &plus_later, &spaced, &padded, &prefixed] {
            assert!(t.parse::<Fingerprint>().is_err(), "{t:?} parsed");
        }
        assert_eq!(text.parse::<Fingerprint>(), Ok(Fingerprint([0x0a; 32])));
    }
}
