//! The TCP transport: a peer's UDP datagrams carried over one TLS 1.3
//! connection to the server's TCP port, for networks that drop UDP
//! (DESIGN §6 "No UDP at all").
//!
//! **Layers.** TCP → TLS 1.3 (the server's own key; the peer pins the same
//! fingerprint as over QUIC; no client certificate: the peer authenticates
//! inside QUIC, as over UDP) → an HTTP/1.1 WebSocket upgrade at [`PATH`]
//! with subprotocol [`PROTOCOL`] (so it passes HTTPS proxies and
//! middleboxes that know HTTP) → one binary WebSocket message per datagram:
//! exactly the bytes the peer would have sent over UDP (QUIC packets, relay
//! frames, probes). Nothing else changes above: the server's QUIC endpoint
//! sees such a peer at a virtual address, and the relay works as over UDP.
//!
//! **Like UDP, not like TCP.** The [`queue::SendQueue`] drops datagrams that
//! waited more than ~50 ms, or QUIC's congestion window would grow without
//! limit over a transport that never loses; `TCP_NOTSENT_LOWAT` keeps the
//! kernel's buffer from hiding a queue of its own ([`tune_tcp`]).
//!
//! **Size.** A datagram is at most [`MAX_DATAGRAM`] = 1220 bytes: QUIC's
//! 1200-byte minimum plus a relay header. Path-MTU probes larger than that
//! are dropped like any datagram too large for a path, so an MTU learned
//! over TCP is the minimum and nothing learned there is too large when the
//! connection moves back to UDP. The limit is enforced by the WebSocket
//! reader from the frame header, before the payload is buffered.
//!
//! This is the one part of `common` with tasks and sockets: both ends run
//! the same pumps ([`pump::spawn`]).
//!
//! # Layout
//!
//! - [`queue`]: the send queue (sans-IO).
//! - [`pump`]: the reader and writer tasks, and the [`Tunnel`] handle.
//! - [`check`]: the UDP check datagrams (is UDP back?).

pub mod check;
pub mod pump;
pub mod queue;

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub use pump::{CloseReason, PumpLimits, Tunnel, TunnelStats};
pub use queue::{Budget, Pushed, QueueLimits, SendQueue};

/// The HTTP path of the WebSocket upgrade.
pub const PATH: &str = "/rdv/2/tunnel";
/// The WebSocket subprotocol; the version is part of it.
pub const PROTOCOL: &str = "rdv-tunnel.2";
/// The TLS ALPN of the outer connection (HTTP/1.1, for the upgrade).
pub const ALPN: &[u8] = b"http/1.1";
/// Largest datagram carried: QUIC's minimum MTU (1200) plus a relay header.
pub const MAX_DATAGRAM: usize = 1200 + crate::relay_frame::HEADER_LEN;
/// The kernel's unsent-bytes mark (`TCP_NOTSENT_LOWAT`): how much may wait
/// in the socket beyond what is in flight.
pub const NOTSENT_LOWAT: u32 = 16 * 1024;

/// The WebSocket over a client's TLS stream.
pub type ClientStream<S> = WebSocketStream<tokio_rustls::client::TlsStream<S>>;
/// The WebSocket over a server's TLS stream.
pub type ServerStream<S> = WebSocketStream<tokio_rustls::server::TlsStream<S>>;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The TCP connection failed or broke.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server's key is not the pinned one.
    #[error("the server's key does not match the pinned fingerprint")]
    BadFingerprint,
    /// TLS failed for another reason.
    #[error("TLS: {0}")]
    Tls(String),
    /// The WebSocket upgrade failed or was refused.
    #[error("WebSocket upgrade: {0}")]
    Upgrade(String),
}

/// The WebSocket limits both ends use: one datagram per message, the size
/// checked from the header; small buffers (a tunnel is one peer's socket,
/// and a server holds thousands).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_DATAGRAM))
        .max_frame_size(Some(MAX_DATAGRAM))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(64 * 1024)
}

/// Sets what a tunnel's TCP socket needs: no Nagle delay (every datagram
/// is a packet), and a small unsent-bytes mark so a queue builds in the
/// [`SendQueue`], where it is bounded in time, and not in the kernel.
pub fn tune_tcp(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

/// Opens a tunnel over `io` (a connected TCP stream, maybe through a
/// proxy): TLS 1.3 pinned by `tls` (from [`crate::tls::tunnel_client_config`]),
/// then the WebSocket upgrade. `host` goes in the request's `Host`.
pub async fn connect<S>(
    io: S,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<ClientStream<S>, TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let name = rustls::pki_types::ServerName::try_from(crate::tls::SERVER_NAME)
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, io)
        .await
        .map_err(tls_error)?;
    let mut request = format!("wss://{host}{PATH}")
        .into_client_request()
        .map_err(|e| TunnelError::Upgrade(e.to_string()))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
            .await
            .map_err(|e| TunnelError::Upgrade(e.to_string()))?;
    let agreed = response
        .headers()
        .get("sec-websocket-protocol")
        .is_some_and(|p| p.as_bytes() == PROTOCOL.as_bytes());
    if !agreed {
        return Err(TunnelError::Upgrade(format!(
            "the server did not agree to {PROTOCOL}"
        )));
    }
    Ok(ws)
}

/// Accepts a tunnel on `io`: TLS with `acceptor` (from
/// [`crate::tls::tunnel_server_config`]), then the WebSocket upgrade, which
/// must ask for [`PATH`] and [`PROTOCOL`] (anything else gets 404 or 400).
/// The caller bounds it in time; the upgrade request is bounded in size by
/// the WebSocket library (64 KiB).
pub async fn accept<S>(
    io: S,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> Result<ServerStream<S>, TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = acceptor.accept(io).await.map_err(tls_error)?;
    // The callback's signature is the WebSocket library's.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != PATH {
            return Err(refusal(StatusCode::NOT_FOUND));
        }
        let asks = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == PROTOCOL);
        if !asks {
            return Err(refusal(StatusCode::BAD_REQUEST));
        }
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
        Ok(response)
    };
    tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config()))
        .await
        .map_err(|e| TunnelError::Upgrade(e.to_string()))
}

fn refusal(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    response
}

fn tls_error(e: io::Error) -> TunnelError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(_)) => TunnelError::BadFingerprint,
        Some(other) => TunnelError::Tls(other.to_string()),
        None => TunnelError::Io(e),
    }
}

#[cfg(test)]
mod tests;
