//! The TCP side: peers on networks that drop UDP reach the server over
//! TLS/WebSocket on TCP ([`common::tunnel`]), on the same port number as
//! UDP by default (`--tcp-listen` moves it).
//!
//! Each accepted tunnel gets a **virtual address** in 240.0.0.0/4 (reserved,
//! never a real source, and refused as a candidate by every peer); the
//! server's socket wrapper ([`crate::socket`]) hands quinn and the relay
//! the tunnel's datagrams as if they had come from that address over UDP,
//! and sends whatever quinn or the relay sends to it into the tunnel. So
//! registration, lookup, calls and the relay work unchanged for such a
//! peer; every per-IP limit maps the virtual address back to the TCP
//! peer's real one ([`TcpPeers::real_ip`]). UDP datagrams claiming a
//! source in the virtual range are dropped.
//!
//! Bounded like UDP: connections in all and per source IP
//! ([`TcpConfig`]), a deadline for TLS and the upgrade together, the pumps'
//! idle and write-stall timeouts and send queue ([`common::tunnel::pump`]);
//! one tunnel's reader waits when the shared inbox is full, which slows
//! that one sender through TCP's flow control and nobody else.

mod listener;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::candidates::canonical;
use common::tunnel::{CloseReason, PumpLimits, Pushed, Tunnel};
use tokio::sync::mpsc;

pub(crate) use listener::serve;

/// The TCP listener's settings (`--tcp-listen`).
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Where to listen; `None`: the UDP listen address (same port number).
    pub listen: Option<SocketAddr>,
    /// Most tunnels at once (default 10,000).
    pub max_connections: usize,
    /// Most tunnels from one source IP (default 32: a NATed office shares
    /// one address; each tunnel is one peer).
    pub max_per_ip: usize,
    /// Time TLS and the WebSocket upgrade may take together (default 10 s;
    /// a slowloris holds its slot this long at most).
    pub handshake_timeout: Duration,
    /// Idle and write-stall timeouts and the send queue of each tunnel.
    pub pump: PumpLimits,
    /// Most bytes queued toward TCP peers, all tunnels together (default
    /// 256 MiB): each queue holds ~50 ms (at most 256 KiB), but 10,000
    /// readers slow on purpose could otherwise hold 2.5 GiB.
    pub max_queued: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_connections: 10_000,
            max_per_ip: 32,
            handshake_timeout: Duration::from_secs(10),
            pump: PumpLimits::default(),
            max_queued: 256 << 20,
        }
    }
}

/// Tunnel datagrams waiting for the endpoint, all tunnels together.
const INBOX: usize = 1024;

/// Counters of the TCP side (the metrics mirror them).
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Tunnels that completed TLS and the upgrade.
    pub accepted: AtomicU64,
    /// TCP connections refused at a connection limit.
    pub refused: AtomicU64,
    /// TLS or upgrades that failed or timed out.
    pub handshakes_failed: AtomicU64,
    /// Payload bytes received from tunnels.
    pub bytes_in: AtomicU64,
    /// Payload bytes queued into tunnels.
    pub bytes_out: AtomicU64,
    /// Datagrams for a tunnel dropped (queue full, too large, gone).
    pub dropped: AtomicU64,
    /// Tunnels ended, by [`CloseReason::as_str`] in [`CLOSE_REASONS`] order.
    pub closed: [AtomicU64; 6],
}

/// The close reasons counted in [`TcpStats::closed`].
pub const CLOSE_REASONS: [&str; 6] = [
    "local",
    "remote",
    "idle",
    "write_stall",
    "protocol",
    "error",
];

struct Entry {
    real: SocketAddr,
    tunnel: Option<Tunnel>,
}

#[derive(Default)]
struct Table {
    by_virtual: HashMap<SocketAddr, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    open: usize,
    next: u32,
}

/// The tunnels now open, by virtual address.
pub(crate) struct TcpPeers {
    config: TcpConfig,
    /// The queues' shared budget ([`TcpConfig::max_queued`]).
    budget: Arc<common::tunnel::Budget>,
    table: Mutex<Table>,
    pub(crate) stats: TcpStats,
    inbox_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    /// Read by the socket wrapper.
    pub(crate) inbox: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
}

impl std::fmt::Debug for TcpPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpPeers").finish_non_exhaustive()
    }
}

/// Whether `addr` is in the virtual range (240.0.0.0/4, also v4-mapped).
pub(crate) use common::candidates::is_virtual;

/// One admitted TCP connection's place in the counts; given back on drop.
pub(crate) struct Slot {
    peers: Arc<TcpPeers>,
    ip: IpAddr,
    virtual_addr: Option<SocketAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.peers.lock();
        t.open -= 1;
        if let Some(n) = t.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&self.ip);
            }
        }
        if let Some(v) = self.virtual_addr {
            t.by_virtual.remove(&v);
        }
    }
}

impl TcpPeers {
    pub(crate) fn new(config: TcpConfig) -> Arc<Self> {
        let (inbox_tx, inbox) = mpsc::channel(INBOX);
        Arc::new(Self {
            budget: common::tunnel::Budget::new(config.max_queued),
            config,
            table: Mutex::new(Table::default()),
            stats: TcpStats::default(),
            inbox_tx,
            inbox: Mutex::new(inbox),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings.
    pub(crate) fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// A slot for a new TCP connection from `ip`, if under both caps (an
    /// IPv6 /64 is one source, as everywhere else).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = crate::ratelimit::source_key(ip);
        let mut t = self.lock();
        let held = t.per_ip.get(&ip).copied().unwrap_or(0);
        if t.open >= self.config.max_connections || held >= self.config.max_per_ip {
            drop(t);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        t.open += 1;
        *t.per_ip.entry(ip).or_insert(0) += 1;
        Some(Slot {
            peers: self.clone(),
            ip,
            virtual_addr: None,
        })
    }

    /// Gives the tunnel of `slot` (from `real`) a fresh virtual address and
    /// starts its pumps; the address lives as long as the slot.
    pub(crate) fn open<S>(
        &self,
        slot: &mut Slot,
        real: SocketAddr,
        ws: tokio_tungstenite::WebSocketStream<S>,
    ) -> (SocketAddr, Tunnel)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let v = {
            let mut t = self.lock();
            let v = loop {
                t.next = t.next.wrapping_add(1);
                let ip = Ipv4Addr::from(0xF000_0000 | (t.next & 0x0FFF_FFFF));
                let v = SocketAddr::new(ip.into(), 443);
                if !t.by_virtual.contains_key(&v) && !ip.is_broadcast() {
                    break v;
                }
            };
            t.by_virtual.insert(v, Entry { real, tunnel: None });
            v
        };
        slot.virtual_addr = Some(v);
        let limits = PumpLimits {
            budget: Some(self.budget.clone()),
            ..self.config.pump.clone()
        };
        let tunnel =
            common::tunnel::pump::spawn(ws, limits, self.inbox_tx.clone(), move |b| (v, b));
        if let Some(e) = self.lock().by_virtual.get_mut(&v) {
            e.tunnel = Some(tunnel.clone());
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        (v, tunnel)
    }

    /// Counts a tunnel's end.
    pub(crate) fn count_close(&self, reason: &CloseReason) {
        if let Some(i) = CLOSE_REASONS.iter().position(|r| *r == reason.as_str()) {
            self.stats.closed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues `datagram` into the tunnel at `to`; dropped (and counted) if
    /// there is none or it is full, as UDP would.
    pub(crate) fn send(&self, to: SocketAddr, datagram: &[u8]) {
        let tunnel = self
            .lock()
            .by_virtual
            .get(&canonical(to))
            .and_then(|e| e.tunnel.clone());
        let pushed = tunnel.map(|t| t.send(datagram));
        if pushed == Some(Pushed::Queued) {
            self.stats
                .bytes_out
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each segment of a transmit to `to` (`segment` bytes each, the last
    /// maybe shorter) as its own tunnel datagram.
    pub(crate) fn send_segments(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let seg = segment.unwrap_or(contents.len()).max(1);
        for chunk in contents.chunks(seg) {
            self.send(to, chunk);
        }
    }

    /// The real address behind `addr` when it is a tunnel's virtual address.
    pub(crate) fn real(&self, addr: SocketAddr) -> Option<SocketAddr> {
        if !is_virtual(addr) {
            return None;
        }
        self.lock().by_virtual.get(&canonical(addr)).map(|e| e.real)
    }

    /// The IP per-source limits count `addr` under: the TCP peer's real IP
    /// for a virtual address, the address's own otherwise.
    pub(crate) fn real_ip(&self, addr: SocketAddr) -> IpAddr {
        self.real(addr).unwrap_or(canonical(addr)).ip()
    }

    /// Ends every tunnel (the server is stopping; their peers' QUIC close
    /// went through them already).
    pub(crate) fn close_all(&self) {
        let tunnels: Vec<Tunnel> = self
            .lock()
            .by_virtual
            .values()
            .filter_map(|e| e.tunnel.clone())
            .collect();
        for t in tunnels {
            t.close();
        }
    }

    /// Tunnels open now.
    pub(crate) fn open_count(&self) -> usize {
        self.lock().by_virtual.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_in_all_are_given_back() {
        let peers = TcpPeers::new(TcpConfig {
            max_connections: 3,
            max_per_ip: 2,
            ..TcpConfig::default()
        });
        let a: IpAddr = "198.51.100.1".parse().expect("ip");
        let b: IpAddr = "198.51.100.2".parse().expect("ip");
        let a1 = peers.admit(a).expect("first");
        let _a2 = peers.admit(a).expect("second");
        assert!(peers.admit(a).is_none(), "third from one IP");
        let _b1 = peers.admit(b).expect("other IP");
        assert!(peers.admit(b).is_none(), "all slots taken");
        drop(a1);
        assert!(peers.admit(a).is_some(), "a freed slot is usable");
        assert_eq!(peers.stats.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_ipv6_slash64_is_one_source() {
        let peers = TcpPeers::new(TcpConfig {
            max_per_ip: 1,
            ..TcpConfig::default()
        });
        let _one = peers
            .admit("2001:db8:1:2::1".parse().expect("ip"))
            .expect("first");
        assert!(peers
            .admit("2001:db8:1:2::ffff".parse().expect("ip"))
            .is_none());
        assert!(peers
            .admit("2001:db8:1:3::1".parse().expect("ip"))
            .is_some());
    }

    #[test]
    fn the_virtual_range_is_class_e_only() {
        assert!(is_virtual("240.0.0.1:443".parse().expect("addr")));
        assert!(is_virtual("[::ffff:240.0.0.1]:443".parse().expect("addr")));
        assert!(!is_virtual("239.255.255.255:443".parse().expect("addr")));
        assert!(!is_virtual("203.0.113.1:443".parse().expect("addr")));
        assert!(!is_virtual("[2001:db8::1]:443".parse().expect("addr")));
    }

    #[test]
    fn a_real_address_maps_to_itself() {
        let peers = TcpPeers::new(TcpConfig::default());
        let udp: SocketAddr = "203.0.113.5:4000".parse().expect("addr");
        assert_eq!(peers.real_ip(udp), udp.ip());
        assert_eq!(peers.real("240.0.0.9:443".parse().expect("addr")), None);
    }
}
