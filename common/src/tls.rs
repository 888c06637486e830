//! TLS 1.3 configuration and the certificate verifiers that pin fingerprints.
//!
//! Trust never comes from a CA or from the certificate's contents, only from
//! the SHA-256 fingerprint of the key it carries. The verifiers still make the
//! real TLS 1.3 signature check with the provider's helpers
//! ([`rustls::crypto::verify_tls13_signature`]), so a peer must hold the key
//! whose fingerprint it shows. Only the chain is replaced by a pin:
//!
//! - [`PinnedServerVerifier`]: a client (peer → server, caller → callee)
//!   accepts exactly one fingerprint.
//! - [`ClientKeyVerifier`]: a server side asks every client for a certificate
//!   and accepts those its [`ClientKeyPolicy`] allows: the rendezvous server
//!   accepts any well-formed key (it learns the peer's identity from the
//!   handshake), a callee only the keys of calls it accepted.
//!
//! There is no accept-anything verifier, no TLS 1.2, no session resumption and
//! no 0-RTT (replay). This module does not own QUIC settings.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{Fingerprint, Identity};

/// ALPN of the peer ↔ rendezvous protocol. The version is part of it: a peer
/// speaking another version fails the handshake with `no_application_protocol`,
/// which both sides report as a version mismatch.
pub const SERVER_ALPN: &[u8] = b"rdv/2";
/// ALPN of the peer ↔ peer protocol.
pub const PEER_ALPN: &[u8] = b"rdv-peer/2";
/// The TLS alert `no_application_protocol`, as QUIC reports it (0x100 + 120).
pub const NO_APPLICATION_PROTOCOL: u64 = 0x178;
/// Server name put in ClientHello. It is not checked: the pin is.
pub const SERVER_NAME: &str = "rendezvous-peer";

/// The one crypto provider used everywhere (*ring*).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Which client keys a TLS server side accepts.
#[derive(Clone)]
pub enum ClientKeyPolicy {
    /// Any well-formed key that proves possession (the rendezvous server).
    AnyKey,
    /// Keys for which the function says yes (a callee: keys of accepted calls).
    Allow(Arc<dyn Fn(&Fingerprint) -> bool + Send + Sync>),
}

impl fmt::Debug for ClientKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyKey => f.write_str("AnyKey"),
            Self::Allow(_) => f.write_str("Allow(..)"),
        }
    }
}

/// Accepts a server certificate only if its key has the expected fingerprint.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    /// A verifier pinned to `expected`.
    pub fn new(expected: Fingerprint) -> Arc<Self> {
        Arc::new(Self {
            expected,
            algorithms: algorithms(),
        })
    }
}

fn check_fingerprint(
    cert: &CertificateDer<'_>,
    expected: &Fingerprint,
) -> Result<(), rustls::Error> {
    let actual = Fingerprint::of_cert(cert).map_err(|_| CertificateError::BadEncoding)?;
    if &actual == expected {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_fingerprint(end_entity, &self.expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Requires a client certificate and accepts the keys its policy allows.
#[derive(Debug)]
pub struct ClientKeyVerifier {
    policy: ClientKeyPolicy,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientKeyVerifier {
    /// A verifier with `policy`.
    pub fn new(policy: ClientKeyPolicy) -> Arc<Self> {
        Arc::new(Self {
            policy,
            algorithms: algorithms(),
        })
    }
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = Fingerprint::of_cert(end_entity).map_err(|_| CertificateError::BadEncoding)?;
        match &self.policy {
            ClientKeyPolicy::AnyKey => Ok(ClientCertVerified::assertion()),
            ClientKeyPolicy::Allow(allow) if allow(&fp) => Ok(ClientCertVerified::assertion()),
            ClientKeyPolicy::Allow(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS client config that presents `identity` and accepts only `expected`.
pub fn client_config(
    identity: &Identity,
    expected: Fingerprint,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PinnedServerVerifier::new(expected))
        .with_client_auth_cert(vec![identity.cert()], identity.private_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_early_data = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A TLS server config that presents `identity` and requires client keys allowed by `policy`.
pub fn server_config(
    identity: &Identity,
    policy: ClientKeyPolicy,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(ClientKeyVerifier::new(policy))
        .with_single_cert(vec![identity.cert()], identity.private_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The TLS client config of the TCP transport ([`crate::tunnel`]):
/// accepts only `expected`, presents no certificate (the peer
/// authenticates inside QUIC, as over UDP).
pub fn tunnel_client_config(expected: Fingerprint) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PinnedServerVerifier::new(expected))
        .with_no_client_auth();
    config.alpn_protocols = vec![crate::tunnel::ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The TLS server config of the TCP transport: presents `identity` (the
/// same key as over QUIC, so peers pin one fingerprint), asks no client
/// certificate.
pub fn tunnel_server_config(identity: &Identity) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert()], identity.private_key())?;
    config.alpn_protocols = vec![crate::tunnel::ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The fingerprint of the key a finished handshake authenticated, from
/// rustls's peer certificates (as quinn hands them out).
pub fn peer_fingerprint(certs: &[CertificateDer<'_>]) -> Option<Fingerprint> {
    certs.first().and_then(|c| Fingerprint::of_cert(c).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    /// Runs a TLS 1.3 handshake in memory; the first error either side hits.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(SERVER_NAME).expect("server name");
        let mut c = ClientConnection::new(Arc::new(client), name)?;
        let mut s = ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("write");
            }
            s.read_tls(&mut buf.as_slice()).expect("read");
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("write");
            }
            c.read_tls(&mut buf.as_slice()).expect("read");
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn ids() -> (Identity, Identity, Identity) {
        let id = || Identity::generate().expect("identity");
        (id(), id(), id())
    }

    #[test]
    fn only_the_pinned_server_key_and_allowed_client_keys_pass() {
        let (server, client, stranger) = ids();
        let any = || server_config(&server, ClientKeyPolicy::AnyKey, PEER_ALPN).expect("cfg");
        let pin = |fp| client_config(&client, fp, PEER_ALPN).expect("cfg");
        handshake(pin(server.fingerprint()), any()).expect("the pinned key passes");
        let err = handshake(pin(stranger.fingerprint()), any()).expect_err("another key");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
        let only_stranger = stranger.fingerprint();
        let allow = ClientKeyPolicy::Allow(Arc::new(move |fp: &Fingerprint| *fp == only_stranger));
        let picky = server_config(&server, allow, PEER_ALPN).expect("cfg");
        let err = handshake(pin(server.fingerprint()), picky).expect_err("a key not allowed");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn no_early_data_no_tickets_no_resumption() {
        let (server, client, _) = ids();
        let c = client_config(&client, server.fingerprint(), SERVER_ALPN).expect("cfg");
        let s = server_config(&server, ClientKeyPolicy::AnyKey, SERVER_ALPN).expect("cfg");
        assert!(!c.enable_early_data, "0-RTT data is replayable");
        assert_eq!(s.max_early_data_size, 0);
        assert_eq!(
            s.send_tls13_tickets, 0,
            "no tickets: nothing to resume with"
        );
    }
}
