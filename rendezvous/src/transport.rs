//! The server's QUIC endpoint: TLS, transport limits, stateless resets and
//! the UDP socket, built from [`Config`].
//!
//! What is tuned here, and why (each measured with `rendezvous-load`, see
//! `OPERATIONS.md`):
//!
//! - **Memory per connection.** A rendezvous connection carries a few small
//!   messages a minute, so everything sized for bulk data is cut: small
//!   flow-control windows, no datagrams, no path-MTU probing (messages are
//!   < 1 KiB; the probes only cost packets and sent-packet records), and no
//!   segmentation offload (its batch buffer, up to a few datagrams, is kept
//!   per connection: 2.8 KiB before, 1.2 KiB after). The rest of a
//!   connection's ~30 KiB is quinn's and rustls's own state; see
//!   `OPERATIONS.md` for the heap profile. (Preferring ChaCha20 for its
//!   smaller keys was tried and saved nothing: *ring* sizes every AEAD key
//!   for AES-GCM.)
//! - **Restarts.** The stateless-reset key, the connection-ID key and the
//!   Retry-token key come from the server's identity, so a restarted server
//!   resets its predecessor's connections at once (peers notice within a
//!   round trip of their next keep-alive instead of an idle timeout), and
//!   honours the Retry tokens its predecessor handed out.
//! - **Bursts.** Large UDP socket buffers, so a burst of reconnecting peers
//!   is queued rather than dropped.
//! - **Relay and TCP.** quinn gets its socket through
//!   [`crate::socket::ServerSocket`], which takes the relay's frames and
//!   UDP checks out of every receive before quinn sees it (same port,
//!   DESIGN §6), and carries the TCP peers' tunnels at virtual addresses.

use std::sync::Arc;

use common::tls::{self, ClientKeyPolicy};
use common::Identity;
use prometheus::IntCounter;
use quinn::crypto::rustls::QuicServerConfig;
use tracing::{info, warn};

use crate::checks::Checker;
use crate::cids::KeyedCids;
use crate::config::{Config, Limits};
use crate::error::ServerError;
use crate::relay::driver::Relay;
use crate::socket::ServerSocket;
use crate::tcp::TcpPeers;

fn cfg_err(e: &dyn std::fmt::Display) -> ServerError {
    ServerError::Config(e.to_string())
}

/// Per-connection transport limits for rendezvous connections.
fn transport_config(limits: &Limits) -> Result<quinn::TransportConfig, ServerError> {
    let frame = u32::try_from(limits.max_frame).unwrap_or(u32::MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        // What one connection may make the server buffer: a frame or two.
        .stream_receive_window(frame.saturating_mul(2).into())
        .receive_window(frame.saturating_mul(4).into())
        .send_window(4 * limits.max_frame as u64)
        .mtu_discovery_config(None)
        .enable_segmentation_offload(false)
        .max_idle_timeout(Some(
            limits.idle_timeout.try_into().map_err(|e| cfg_err(&e))?,
        ));
    Ok(transport)
}

/// Stateless resets and connection IDs keyed from the identity, so they
/// survive a restart; the fixed bit never greased.
fn endpoint_config(identity: &Identity, limits: &Limits) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &identity.derive_secret("rendezvous stateless reset"),
    );
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config.min_reset_interval(limits.min_reset_interval);
    // No QUIC bit greasing (RFC 9287): relay frames are told apart from QUIC
    // by a clear fixed bit (0x40), so no QUIC packet may clear it.
    endpoint_config.grease_quic_bit(false);
    // Connection IDs are validated with a keyed tag before a reset is sent;
    // the key must survive a restart too, or the new server would drop its
    // predecessor's packets as junk instead of resetting them.
    let cid_secret = identity.derive_secret("rendezvous connection ids");
    endpoint_config.cid_generator(move || Box::new(KeyedCids::new(&cid_secret)));
    endpoint_config
}

/// Binds the UDP socket and, with TCP on, the TCP listener: by default on
/// the same port number (with port 0, on one the system picked for UDP
/// that is free for TCP too).
pub(crate) fn bind_sockets(
    config: &Config,
) -> Result<(std::net::UdpSocket, Option<std::net::TcpListener>), ServerError> {
    let Some(tcp) = &config.tcp else {
        return Ok((bind_udp(config, config.listen)?, None));
    };
    let mut tries = if config.listen.port() == 0 { 16 } else { 1 };
    loop {
        tries -= 1;
        let udp = bind_udp(config, config.listen)?;
        let udp_addr = udp.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let tcp_addr = tcp.listen.unwrap_or(std::net::SocketAddr::new(
            config.listen.ip(),
            udp_addr.port(),
        ));
        match std::net::TcpListener::bind(tcp_addr) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|source| ServerError::Bind {
                        addr: tcp_addr,
                        source,
                    })?;
                return Ok((udp, Some(listener)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 0 => continue,
            Err(source) => {
                return Err(ServerError::Bind {
                    addr: tcp_addr,
                    source,
                })
            }
        }
    }
}

/// Binds the UDP socket with the buffers `limits` asks for (the kernel may
/// grant less: it says how much in the log).
fn bind_udp(
    config: &Config,
    addr: std::net::SocketAddr,
) -> Result<std::net::UdpSocket, ServerError> {
    let bind_err = |source| ServerError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    let want = config.limits.udp_buffer;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a smaller buffer still works, it only drops bursts sooner.
    let _ = sock.set_recv_buffer_size(want);
    let _ = sock.set_send_buffer_size(want);
    // Linux reports double the usable size it granted.
    let got = sock.recv_buffer_size().unwrap_or(0) / 2;
    if got < want / 2 {
        warn!(
            "UDP receive buffer is {} KiB, not the {} KiB asked for: raise net.core.rmem_max so bursts of reconnecting peers are not dropped",
            got / 1024,
            want / 1024
        );
    } else {
        info!("UDP receive buffer {} KiB", got / 1024);
    }
    Ok(socket)
}

/// The server's endpoint, listening on `socket`; with `relay`, its
/// socket hands relay frames to it first; with `tcp`, it carries tunnels;
/// UDP checks get what `checks` says (mapping answers counted in the
/// second).
pub(crate) fn make_endpoint(
    identity: &Identity,
    config: &Config,
    socket: std::net::UdpSocket,
    relay: Option<Arc<Relay>>,
    tcp: Option<Arc<TcpPeers>>,
    checks: (Checker, IntCounter),
) -> Result<quinn::Endpoint, ServerError> {
    let tls = tls::server_config(identity, ClientKeyPolicy::AnyKey, tls::SERVER_ALPN)
        .map_err(|e| cfg_err(&e))?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| cfg_err(&e))?;
    // Retry tokens, like resets, are keyed from the identity: a peer that
    // got a Retry from the old process is still welcome at the new one.
    let token_key = ring::hkdf::Prk::new_less_safe(
        ring::hkdf::HKDF_SHA256,
        &identity.derive_secret("rendezvous retry tokens"),
    );
    let mut server_config = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(token_key));
    server_config.transport_config(Arc::new(transport_config(&config.limits)?));
    let bind_err = |source| ServerError::Bind {
        addr: config.listen,
        source,
    };
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = quinn::Runtime::wrap_udp_socket(&*runtime, socket).map_err(bind_err)?;
    let udp = Arc::new(ServerSocket::new(inner, relay, tcp, checks.0, checks.1));
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(identity, &config.limits),
        Some(server_config),
        udp,
        runtime,
    )
    .map_err(bind_err)
}
