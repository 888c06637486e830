//! Dialing a listening peer directly, as a caller with a given key would.
//!
//! Tests that check whom a listener lets in (an accepted caller's second
//! connection, a stranger, a caller behind a stalling proxy) dial it with
//! raw quinn and ask for one ping: [`ping_as`], or [`client_config`] and
//! [`ping`] when the test holds the connection itself.

#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{tls, Fingerprint, Identity, PeerMessage};
use quinn::crypto::rustls::QuicClientConfig;

/// A client config presenting `id` and accepting only the key `callee`.
pub fn client_config(id: &Identity, callee: Fingerprint) -> quinn::ClientConfig {
    let tls = tls::client_config(id, callee, tls::PEER_ALPN).expect("tls");
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("quic")))
}

/// One ping on a new stream of `conn`: `Ok` when a call answered it.
pub async fn ping(conn: &quinn::Connection) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, &PeerMessage::Ping { seq: 1 }, MAX_FRAME)
        .await
        .map_err(|e| e.to_string())?;
    match read_frame::<PeerMessage, _>(&mut recv, MAX_FRAME).await {
        Ok(PeerMessage::Pong { seq: 1 }) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Connects to `addr` (a listener with key `callee`) with `id`'s key from a
/// fresh endpoint and asks for one ping. No timeout of its own: callers
/// bound it.
pub async fn ping_as(id: &Identity, callee: Fingerprint, addr: SocketAddr) -> Result<(), String> {
    let endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
    ping_from(&endpoint, id, callee, addr).await
}

/// Like [`ping_as`], from `endpoint` (a raw caller's own socket: the
/// address the server saw, which a listener takes as the call's).
pub async fn ping_from(
    endpoint: &quinn::Endpoint,
    id: &Identity,
    callee: Fingerprint,
    addr: SocketAddr,
) -> Result<(), String> {
    let conn = endpoint
        .connect_with(client_config(id, callee), addr, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    ping(&conn).await
}
