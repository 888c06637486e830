//! The one UDP socket: a quinn endpoint for the server link and every peer
//! connection, through the path wrapper ([`crate::udp`]) that also carries
//! probes and relay frames.
//!
//! Using one socket for everything means the public address the server
//! observes is the one this peer's NAT uses toward other peers too, which is
//! what makes hole punching work. Incoming peer connections are accepted only
//! from keys of calls this peer accepted ([`Expected`]); anything else is
//! refused before the handshake, or fails it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::tls::{self, ClientKeyPolicy};
use common::{Fingerprint, Identity};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::config::{Limits, Timing};
use crate::error::{Error, Result};
use crate::router::Router;
use crate::udp::PathSocket;

/// A call this peer accepted and now expects a connection for.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    /// Tells this entry apart from other calls of the same key.
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) fingerprint: Fingerprint,
    /// The caller's known_peers entry when the offer was checked.
    pub(crate) seen: Option<Fingerprint>,
    /// Where its connection comes from: the call's virtual address once
    /// the server sent `Dial`.
    pub(crate) candidates: Vec<SocketAddr>,
    /// The call's path task, once the server sent `Dial`.
    pub(crate) path: Option<crate::path_task::PathHandle>,
    pub(crate) offered_at: Instant,
    pub(crate) expires: Instant,
}

impl Expected {
    /// Whether this entry still waits for a connection of `fp` at `now`.
    fn is_live_for(&self, fp: &Fingerprint, now: Instant) -> bool {
        self.expires > now && self.fingerprint == *fp
    }
}

/// The calls being expected, shared with the TLS verifier.
///
/// One accepted offer is one call: the first connection of its key that
/// opens a stream [`ExpectedCalls::claim`]s the entry, and later ones find
/// nothing. (A caller dials all candidates at once; the connections that
/// lose the race close without opening a stream and claim nothing.)
#[derive(Debug, Default)]
pub(crate) struct ExpectedCalls {
    list: Mutex<Vec<Expected>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Authenticated connections per key still waiting for their first
    /// stream ([`ExpectedCalls::hold_unclaimed`]).
    unclaimed: Mutex<HashMap<Fingerprint, usize>>,
}

/// One authenticated connection of a key waiting for its first stream;
/// counted until dropped.
pub(crate) struct Unclaimed<'a> {
    calls: &'a ExpectedCalls,
    fingerprint: Fingerprint,
}

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        let mut counts = self.calls.unclaimed_counts();
        if let Some(n) = counts.get_mut(&self.fingerprint) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.fingerprint);
            }
        }
    }
}

impl ExpectedCalls {
    fn lock(&self) -> MutexGuard<'_, Vec<Expected>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unclaimed_counts(&self) -> MutexGuard<'_, HashMap<Fingerprint, usize>> {
        self.unclaimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more connection of `fp` waiting for its first stream, if
    /// fewer than `per_call` per live call expected from `fp` wait already;
    /// `None` (refuse it) otherwise.
    pub(crate) fn hold_unclaimed(
        &self,
        fp: &Fingerprint,
        per_call: usize,
    ) -> Option<Unclaimed<'_>> {
        let now = Instant::now();
        let calls = self
            .lock()
            .iter()
            .filter(|x| x.is_live_for(fp, now))
            .count();
        let mut counts = self.unclaimed_counts();
        let n = counts.entry(*fp).or_insert(0);
        if *n >= per_call.saturating_mul(calls) {
            if *n == 0 {
                counts.remove(fp);
            }
            return None;
        }
        *n += 1;
        Some(Unclaimed {
            calls: self,
            fingerprint: *fp,
        })
    }

    /// A fresh id for a new [`Expected`].
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds `e` (with a fresh [`ExpectedCalls::next_id`]), forgetting
    /// expired entries.
    pub(crate) fn add(&self, e: Expected) {
        let now = Instant::now();
        let mut list = self.lock();
        list.retain(|x| x.expires > now);
        list.push(e);
    }

    /// Like [`ExpectedCalls::add`], but only replaces: does nothing once
    /// the call was claimed or expired.
    pub(crate) fn update(&self, e: Expected) {
        if let Some(slot) = self.lock().iter_mut().find(|x| x.id == e.id) {
            *slot = e;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        let now = Instant::now();
        self.lock().iter().all(|x| x.expires <= now)
    }

    pub(crate) fn allows(&self, fp: &Fingerprint) -> bool {
        let now = Instant::now();
        self.lock().iter().any(|x| x.is_live_for(fp, now))
    }

    fn best(list: &[Expected], fp: &Fingerprint, from: SocketAddr) -> Option<usize> {
        let now = Instant::now();
        let live = |x: &Expected| x.is_live_for(fp, now);
        list.iter()
            .position(|x| live(x) && x.candidates.contains(&from))
            .or_else(|| list.iter().position(live))
    }

    /// The expected call a connection from `fp` at `from` belongs to
    /// (preferring one whose candidates include `from`), left in place.
    pub(crate) fn find(&self, fp: &Fingerprint, from: SocketAddr) -> Option<Expected> {
        let list = self.lock();
        Self::best(&list, fp, from).map(|i| list[i].clone())
    }

    /// Like [`ExpectedCalls::find`], but takes the entry out: this
    /// connection is the call, no other may be.
    pub(crate) fn claim(&self, fp: &Fingerprint, from: SocketAddr) -> Option<Expected> {
        let mut list = self.lock();
        Self::best(&list, fp, from).map(|i| list.remove(i))
    }
}

/// The socket, its quinn endpoint and what it expects.
pub(crate) struct Socket {
    pub(crate) endpoint: quinn::Endpoint,
    /// The wrapper quinn sends through (probes go out through it too).
    pub(crate) udp: Arc<PathSocket>,
    /// Which call is at which virtual address, and its paths.
    pub(crate) router: Arc<Router>,
    pub(crate) expected: Arc<ExpectedCalls>,
    /// Incoming peer handshakes in flight ([`Limits::max_peer_handshakes`]).
    pub(crate) handshakes: Arc<tokio::sync::Semaphore>,
    /// The remote address of the last server link made (its loopback-ness
    /// decides whether loopback candidates may be used).
    server: Mutex<Option<SocketAddr>>,
    /// Our address as the server observed it at the last registration
    /// (whether the other side of a call is on our network).
    observed: Mutex<Option<SocketAddr>>,
    identity: Arc<Identity>,
    timing: Timing,
}

impl Socket {
    /// Binds the socket and makes the endpoint (client and server roles).
    pub(crate) fn bind(
        addr: SocketAddr,
        identity: Arc<Identity>,
        timing: Timing,
        limits: &Limits,
    ) -> Result<Self> {
        let std_socket = std::net::UdpSocket::bind(addr)
            .map_err(|e| Error::io(format!("binding UDP {addr}"), e))?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let v6 = std_socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let inner = runtime
            .wrap_udp_socket(std_socket)
            .map_err(|e| Error::io("wrapping the UDP socket", e))?;
        let router = Arc::new(Router::new(v6));
        let udp = Arc::new(PathSocket::new(inner, router.clone(), v6));
        let expected = Arc::new(ExpectedCalls::default());
        let allow = expected.clone();
        let policy = ClientKeyPolicy::Allow(Arc::new(move |fp: &Fingerprint| allow.allows(fp)));
        let tls = tls::server_config(&identity, policy, tls::PEER_ALPN)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(peer_transport(&timing, None, limits.max_streams_per_call));
        // quinn must not move a call's connection off its virtual address on
        // a packet from elsewhere: the path layer decides where it goes.
        server_config.migration(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            Some(server_config),
            udp.clone(),
            runtime,
        )
        .map_err(|e| Error::io("starting the QUIC endpoint", e))?;
        Ok(Self {
            endpoint,
            udp,
            router,
            expected,
            handshakes: Arc::new(tokio::sync::Semaphore::new(limits.max_peer_handshakes)),
            server: Mutex::new(None),
            observed: Mutex::new(None),
            identity,
            timing,
        })
    }

    /// The socket's local address.
    pub(crate) fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| Error::io("reading the local address", e))
    }

    /// Client config for the server link, pinned to the server's key.
    pub(crate) fn server_client_config(
        &self,
        server: Fingerprint,
        alpn: &[u8],
    ) -> Result<quinn::ClientConfig> {
        let tls = tls::client_config(&self.identity, server, alpn)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(self.timing.server_keep_alive))
            .max_idle_timeout(self.timing.server_idle_timeout.try_into().ok())
            .max_concurrent_uni_streams(0u32.into())
            // The server opens one stream per incoming call.
            .max_concurrent_bidi_streams(64u32.into());
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// Client config for a call, pinned to the callee's key, starting from
    /// `rtt_hint` (the server link's RTT) so a lost first Initial is resent
    /// after a few RTTs, not after a second.
    pub(crate) fn peer_client_config(
        &self,
        callee: Fingerprint,
        rtt_hint: Option<Duration>,
    ) -> Result<quinn::ClientConfig> {
        let tls = tls::client_config(&self.identity, callee, tls::PEER_ALPN)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(peer_transport(&self.timing, rtt_hint, CALLER_STREAMS));
        Ok(config)
    }

    /// Notes the remote address of a server link just made.
    pub(crate) fn set_server(&self, addr: SocketAddr) {
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// The remote address of the last server link (unspecified before any:
    /// then loopback candidates are not used).
    pub(crate) fn server(&self) -> SocketAddr {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Notes our address as the server observed it (`Registered`).
    pub(crate) fn set_observed(&self, addr: SocketAddr) {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// Our address as the server last observed it; `None` before any
    /// registration (then no local candidate of the other side is used).
    pub(crate) fn observed(&self) -> Option<SocketAddr> {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This peer's local candidates: its interface addresses that other
    /// peers on the same network could reach, with the socket's port.
    pub(crate) fn local_candidates(&self) -> Vec<SocketAddr> {
        let Ok(local) = self.local_addr() else {
            return vec![];
        };
        let ips: Vec<std::net::IpAddr> = if local.ip().is_unspecified() {
            if_addrs::get_if_addrs()
                .map(|ifs| {
                    ifs.into_iter()
                        .filter(|i| !i.is_loopback())
                        .map(|i| i.ip())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            vec![local.ip()]
        };
        let mut out: Vec<SocketAddr> = ips
            .into_iter()
            .filter(|ip| ip.is_ipv4() == local.is_ipv4())
            .map(|ip| SocketAddr::new(ip, local.port()))
            .filter(|a| common::candidates::is_local_candidate(*a))
            .collect();
        out.truncate(common::candidates::MAX_LOCAL_CANDIDATES);
        out
    }
}

/// Streams a callee may open toward a caller (the caller's side of a call).
const CALLER_STREAMS: u32 = 256;

/// A peer connection's transport; `streams` is how many streams the other
/// side may have open at once.
fn peer_transport(
    timing: &Timing,
    rtt_hint: Option<Duration>,
    streams: u32,
) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(timing.peer_keep_alive))
        .max_idle_timeout(timing.peer_idle_timeout.try_into().ok())
        .max_concurrent_uni_streams(0u32.into())
        .max_concurrent_bidi_streams(streams.into());
    if let Some(rtt) = rtt_hint {
        transport.initial_rtt(rtt.clamp(Duration::from_millis(5), Duration::from_millis(333)));
    }
    // A packet must still fit 1500 bytes with a relay header in front:
    // quinn's path-MTU discovery does not know the path can switch.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(common::relay_frame::MAX_PAYLOAD as u16);
    transport
        .mtu_discovery_config(Some(mtu))
        // Nudges after a path switch are 1-byte datagrams; nobody reads them.
        .datagram_receive_buffer_size(Some(4096));
    // Bulk transfers: larger windows than quinn's defaults (tuned for 100 ms × 100 Mbit/s).
    transport
        .stream_receive_window((8u32 << 20).into())
        .receive_window((16u32 << 20).into())
        .send_window(16 << 20);
    Arc::new(transport)
}

/// Whether a connection failed because *our* verifier refused the other
/// side's key (a wrong server fingerprint, or a stranger at a candidate).
pub(crate) fn is_key_rejected_locally(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            let code = u64::from(t.code);
            (0x100..0x200).contains(&code) && t.reason.contains("invalid peer certificate")
        }
        _ => false,
    }
}

/// Whether the other side refused our protocol version (ALPN).
pub(crate) fn is_version_mismatch(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            u64::from(c.error_code) == tls::NO_APPLICATION_PROTOCOL
        }
        quinn::ConnectionError::TransportError(t) => {
            u64::from(t.code) == tls::NO_APPLICATION_PROTOCOL
        }
        _ => false,
    }
}

/// The fingerprint the handshake authenticated.
pub(crate) fn remote_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::peer_fingerprint(&certs)
}

/// The QUIC endpoint settings every peer-side endpoint uses (the peer's own,
/// and the test and bench clients that stand in for one).
///
/// QUIC bit greasing (RFC 9287) is off: by default quinn advertises it and,
/// once the other side does too, clears the fixed bit (0x40) on about half
/// of all packets. Probes and relay frames are told apart from QUIC by that
/// bit being clear (`common::probe`, `common::relay_frame`), so every QUIC
/// packet here must keep it set.
///
/// Receive buffers hold a whole relay frame
/// ([`common::relay_frame::MAX_DATAGRAM`]: without GRO quinn sizes each
/// buffer by this number, and a longer datagram would be cut); what is
/// *sent* is capped lower, by the transport's MTU bound.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let _ = config.max_udp_payload_size(common::relay_frame::MAX_DATAGRAM as u16);
    config
}
