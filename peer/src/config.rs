//! Everything a [`crate::Peer`] needs to know, with defaults for the timings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::Fingerprint;

use crate::path::{PathConfig, PathMode};
use crate::proxy::ProxyConfig;

/// How the peer reaches its server (`--transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransportMode {
    /// UDP first; the TCP tunnel when UDP gets no answer in time
    /// ([`Timing::tcp_fallback_after`]), and back to UDP when it works
    /// again ([`Timing::udp_retry_interval`]).
    #[default]
    Auto,
    /// UDP only.
    Udp,
    /// The TCP tunnel only.
    Tcp,
}

/// The transport a server link runs over now (`registered`'s `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC over UDP.
    Udp,
    /// QUIC inside the TLS/WebSocket tunnel over TCP.
    Tcp,
}

impl Transport {
    /// `"udp"` or `"tcp"`, as in the events.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// How a peer reaches its server, who it is, and its timings.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The rendezvous server, `HOST:PORT`, or several nodes of one
    /// cluster as `HOST:PORT,HOST:PORT,…` (see [`crate::ServerList`]: the
    /// peer stays on a node that works and moves to the next when it is
    /// lost). Resolved on each connect; a name with several addresses is
    /// several nodes.
    pub server: String,
    /// The server's pinned fingerprint.
    pub server_fingerprint: Fingerprint,
    /// This peer's name, needed to listen and to call.
    pub name: Option<String>,
    /// The identity key file (created on first use).
    pub identity: PathBuf,
    /// The known_peers file (name → fingerprint of past contacts).
    pub known_peers: PathBuf,
    /// The one UDP socket's address (default `0.0.0.0:0`).
    pub bind: SocketAddr,
    /// Timings.
    pub timing: Timing,
    /// Limits on what callers may hold open at this peer.
    pub limits: Limits,
    /// `listen --path`: which paths accepted calls may take. In
    /// [`PathMode::Relay`] callers never learn this machine's addresses.
    pub listen_path: PathMode,
    /// `listen --invisible`: callable, but lookups and watchers are told
    /// this name is offline (needs a server that knows `RegisterInvisible`).
    pub invisible: bool,
    /// Timings of the path table of every call (probes, fallback).
    pub paths: PathConfig,
    /// `--transport`: UDP, the TCP tunnel, or UDP with the tunnel as
    /// fallback (default).
    pub transport: TransportMode,
    /// An HTTP proxy for the TCP tunnel (`HTTPS_PROXY`; the library reads
    /// no environment: the binary fills this in).
    pub proxy: Option<ProxyConfig>,
    /// Protocol identifier offered to the server. Leave the default; tests
    /// change it to check version-mismatch reporting.
    pub server_alpn: Vec<u8>,
}

/// Timeouts and intervals (see each field for the default and why).
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long one attempt to reach the server may take (default 5 s),
    /// per node of the server list: a dead first node costs this much
    /// before the next is tried.
    pub server_connect_timeout: Duration,
    /// How long a request to the server may take to be answered (default 20 s:
    /// a call waits for the callee's consent).
    pub request_timeout: Duration,
    /// Keep-alive on the server link (default 3 s): NATs forget idle UDP
    /// mappings after 15–30 s, and the server's idle timeout is 30 s; three
    /// keep-alives fit in [`Timing::server_idle_timeout`], so one or two
    /// lost ones do not end the link. Costs a listening peer one PING and
    /// its ACK every 3 s (0.67 packets/s, 44 bytes/s with IPv4/UDP headers,
    /// both ways; see the README's "Several servers").
    pub server_keep_alive: Duration,
    /// Idle timeout on the server link (default 9 s): a vanished server
    /// (killed, no close) is noticed this long after the last keep-alive
    /// sent (QUIC restarts the timer on the first packet sent after one
    /// received), so 9–12 s after it died, and a `listen` is registered on
    /// the next node within 20 s; a restarted one at the next keep-alive
    /// (stateless reset).
    pub server_idle_timeout: Duration,
    /// Keep-alive on peer connections (default 5 s).
    pub peer_keep_alive: Duration,
    /// Idle timeout on peer connections (default 30 s).
    pub peer_idle_timeout: Duration,
    /// Most time between two reconnection attempts of a `listen` (default 3 s, jittered).
    pub reconnect_max: Duration,
    /// How long a callee keeps accepting connections for a call it accepted (default 20 s).
    pub accept_window: Duration,
    /// Time the server has to send each frame of a call offer (default 10 s).
    pub offer_timeout: Duration,
    /// Time a caller's QUIC handshake with this listener may take (default
    /// 5 s: a few round trips with losses; each one in flight holds one of
    /// [`Limits::max_peer_handshakes`]).
    pub peer_handshake_timeout: Duration,
    /// Time a caller has to open its first stream once connected (default 10 s).
    pub first_stream_timeout: Duration,
    /// Most time one frame write of the call exchange (Accept, Reject) may
    /// take (default 5 s). A server that grants no flow-control credit
    /// would otherwise park the task for good.
    pub write_timeout: Duration,
    /// With [`TransportMode::Auto`], how long QUIC over UDP may go
    /// unanswered before the TCP tunnel is opened beside it (default 1 s:
    /// well inside [`Timing::server_connect_timeout`]).
    pub tcp_fallback_after: Duration,
    /// While on the tunnel with [`TransportMode::Auto`], how often UDP is
    /// checked again (default 60 s; each check is one 40-byte datagram).
    pub udp_retry_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            server_connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            server_keep_alive: Duration::from_secs(3),
            server_idle_timeout: Duration::from_secs(9),
            peer_keep_alive: Duration::from_secs(5),
            peer_idle_timeout: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(3),
            accept_window: Duration::from_secs(20),
            offer_timeout: Duration::from_secs(10),
            peer_handshake_timeout: Duration::from_secs(5),
            first_stream_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            tcp_fallback_after: Duration::from_secs(1),
            udp_retry_interval: Duration::from_secs(60),
        }
    }
}

/// What callers may hold open at a listening peer (see each field for the
/// default and why).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most incoming peer handshakes at once (default 16). Only keys of
    /// accepted calls pass the handshake, but each costs a TLS handshake
    /// first; a caller dials at most 9 candidates, so 16 leaves room for
    /// two calls arriving together. Past half of it, a source that has not
    /// proved its address is asked for a Retry first; past all of it, new
    /// attempts are dropped (the caller's QUIC stack sends them again). A
    /// slot is held for the handshake only.
    pub max_peer_handshakes: usize,
    /// Most streams one call may have open at once (default 16): in
    /// `--exec` mode each is an `sh -c`, in `--receive-dir` mode an upload.
    /// A caller's further streams wait until one ends.
    pub max_streams_per_call: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_peer_handshakes: 16,
            max_streams_per_call: 16,
        }
    }
}

impl PeerConfig {
    /// A config with default paths ([`default_config_dir`]) and timings.
    pub fn new(server: impl Into<String>, server_fingerprint: Fingerprint) -> Self {
        let dir = default_config_dir();
        Self {
            server: server.into(),
            server_fingerprint,
            name: None,
            identity: dir.join("identity.pem"),
            known_peers: dir.join("known_peers"),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            timing: Timing::default(),
            limits: Limits::default(),
            listen_path: PathMode::Auto,
            invisible: false,
            paths: PathConfig::default(),
            transport: TransportMode::Auto,
            proxy: None,
            server_alpn: common::tls::SERVER_ALPN.to_vec(),
        }
    }
}

/// `$XDG_CONFIG_HOME/peer`, else `$HOME/.config/peer`, else `./.peer`.
pub fn default_config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|base| base.join("peer"))
        .unwrap_or_else(|| PathBuf::from(".peer"))
}
