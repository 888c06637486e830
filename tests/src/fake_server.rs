//! A rendezvous server that says whatever a test wants.
//!
//! [`FakeServer`] takes a listening peer's connection and answers its
//! `Register` like the real server, then hands the connection to the test,
//! which can send offers no honest server would (a forged caller name) or
//! grant no flow-control credit for the answers.

#![allow(clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::tls::{self, ClientKeyPolicy};
use common::{Identity, Message};
use peer::PeerConfig;
use quinn::crypto::rustls::QuicServerConfig;

use crate::inproc::within;

/// How long the fake server waits for the listener's connection and
/// registration.
const T: Duration = Duration::from_secs(15);

/// A fake rendezvous server on loopback with its own key.
pub struct FakeServer {
    endpoint: quinn::Endpoint,
    identity: Identity,
}

impl FakeServer {
    /// A server with quinn's default transport settings.
    pub fn start() -> Self {
        Self::with_transport(quinn::TransportConfig::default())
    }

    /// A server that grants `window` bytes of credit per stream: enough for
    /// a `Register` read a few bytes at a time, not for a reply it never reads.
    pub fn stingy(window: u32) -> Self {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(window.into());
        Self::with_transport(transport)
    }

    fn with_transport(transport: quinn::TransportConfig) -> Self {
        let identity = Identity::generate().expect("id");
        let tls =
            tls::server_config(&identity, ClientKeyPolicy::AnyKey, tls::SERVER_ALPN).expect("tls");
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).expect("q")));
        config.transport_config(Arc::new(transport));
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        Self { endpoint, identity }
    }

    /// A config for a peer named alice that uses this server, with its files in `dir`.
    pub fn peer_config(&self, dir: &Path) -> PeerConfig {
        let addr = self.endpoint.local_addr().expect("addr");
        let mut config = PeerConfig::new(addr.to_string(), self.identity.fingerprint());
        config.name = Some("alice".into());
        config.identity = dir.join("identity.pem");
        config.known_peers = dir.join("known_peers");
        config.bind = "127.0.0.1:0".parse().expect("addr");
        config
    }

    /// Takes the next peer connection and its first request, unanswered:
    /// the connection, the request's stream halves, and the request.
    pub async fn accept_request(
        &self,
    ) -> (
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        Message,
    ) {
        let incoming = within(T, "peer connects", self.endpoint.accept())
            .await
            .expect("incoming");
        let conn = incoming.await.expect("handshake");
        let (send, recv, msg) = Self::next_request(&conn).await;
        (conn, send, recv, msg)
    }

    /// The next request on `conn`, unanswered.
    pub async fn next_request(
        conn: &quinn::Connection,
    ) -> (quinn::SendStream, quinn::RecvStream, Message) {
        let (send, mut recv) = within(T, "request stream", conn.accept_bi())
            .await
            .expect("request stream");
        let msg: Message = within(T, "request", read_frame(&mut recv, MAX_FRAME))
            .await
            .expect("request");
        (send, recv, msg)
    }

    /// Takes the listener's connection and answers its `Register` with the
    /// key its handshake showed.
    pub async fn accept_listener(&self) -> quinn::Connection {
        let incoming = within(T, "listener connects", self.endpoint.accept())
            .await
            .expect("incoming");
        let conn = incoming.await.expect("handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("register stream");
        let reg: Message = within(T, "register", read_frame(&mut recv, MAX_FRAME))
            .await
            .expect("register");
        let Message::Register { name, .. } = reg else {
            panic!("expected Register, got {reg:?}");
        };
        let fingerprint = tls::peer_fingerprint(
            &conn
                .peer_identity()
                .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer>>().ok())
                .expect("certs"),
        )
        .expect("fingerprint");
        let reply = Message::Registered {
            name,
            fingerprint,
            observed_addr: conn.remote_address(),
        };
        write_frame(&mut send, &reply, MAX_FRAME)
            .await
            .expect("reply");
        let _ = send.finish();
        conn
    }
}
