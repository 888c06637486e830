//! A UDP relay that stalls QUIC handshakes and counts, on the wire, how
//! many of them the other side answers.
//!
//! [`StallProxy`] sits between QUIC clients and a QUIC server (a listening
//! peer, or the rendezvous server). It passes the clients' lone Initial
//! packets (their first flight, and its retransmissions) and drops
//! everything else they send, so every handshake the server takes up waits
//! until the server's handshake timeout. Handshakes are told apart by the
//! client's source connection ID: [`Counts::offered`] is how many distinct
//! ones reached the server, [`Counts::answered`] how many of those the
//! server took up: sent a long-header packet other than a Retry to (a
//! server that drops an attempt unanswered sends nothing; a Retry costs it
//! no state and is counted in [`Counts::retried`]).

use std::collections::HashSet;
use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Whether `d` is one QUIC v1 Initial packet and nothing else (a client's
/// first flight, or its answer to a Retry); a datagram that also carries a
/// Handshake packet is not.
pub fn is_initial_only(d: &[u8]) -> bool {
    fn varint(d: &[u8], pos: &mut usize) -> Option<usize> {
        let first = *d.get(*pos)?;
        let len = 1usize << (first >> 6);
        let bytes = d.get(*pos..*pos + len)?;
        *pos += len;
        let mut v = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            v = (v << 8) | u64::from(*b);
        }
        usize::try_from(v).ok()
    }
    let parse = || -> Option<bool> {
        let first = *d.first()?;
        if first & 0x80 == 0 || first & 0x30 != 0 {
            return Some(false);
        }
        let mut pos = 5; // first byte + version
        for _ in 0..2 {
            let cid = usize::from(*d.get(pos)?);
            pos += 1 + cid;
        }
        let token = varint(d, &mut pos)?;
        pos += token;
        let len = varint(d, &mut pos)?;
        Some(pos + len == d.len())
    };
    parse().unwrap_or(false)
}

/// The destination and source connection IDs of a long-header packet at
/// the start of `d`; `None` for a short header or a runt.
pub fn long_header_cids(d: &[u8]) -> Option<(&[u8], &[u8])> {
    if d.first()? & 0x80 == 0 {
        return None;
    }
    let dlen = usize::from(*d.get(5)?);
    let dcid = d.get(6..6 + dlen)?;
    let slen = usize::from(*d.get(6 + dlen)?);
    let scid = d.get(7 + dlen..7 + dlen + slen)?;
    Some((dcid, scid))
}

/// What a [`StallProxy`] has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Distinct client handshakes whose Initial was passed on.
    pub offered: usize,
    /// Distinct client handshakes the server took up (sent a packet other
    /// than a Retry to).
    pub answered: usize,
    /// Distinct client handshakes the server asked to Retry.
    pub retried: usize,
}

/// Whether `d` starts with a QUIC v1 Retry packet (long header, type 3).
pub fn is_retry(d: &[u8]) -> bool {
    d.first().is_some_and(|b| b & 0x80 != 0 && b & 0x30 == 0x30)
}

/// A relay between QUIC clients (all on one socket) and `server` that
/// passes only the clients' lone Initials; see the module docs.
pub struct StallProxy {
    /// Where the clients connect to.
    pub addr: SocketAddr,
    /// Where the server sees the clients come from.
    pub back: SocketAddr,
    counts: watch::Receiver<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    /// A proxy on loopback that reaches `server` from `source` (an IP).
    pub async fn start(server: SocketAddr, source: &str) -> std::io::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0").await?;
        let back = UdpSocket::bind(format!("{source}:0")).await?;
        let addr = front.local_addr()?;
        let back_addr = back.local_addr()?;
        let (tx, counts) = watch::channel(Counts::default());
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 2048], vec![0u8; 2048]);
            let (mut offered, mut answered) = (HashSet::new(), HashSet::new());
            let mut retried = HashSet::new();
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        let d = &up[..n];
                        if is_initial_only(d) {
                            if let Some((_, scid)) = long_header_cids(d) {
                                offered.insert(scid.to_vec());
                            }
                            let _ = back.send_to(d, server).await;
                        }
                    }
                    Ok((n, _)) = back.recv_from(&mut down) => {
                        let d = &down[..n];
                        if let Some((dcid, _)) = long_header_cids(d) {
                            if is_retry(d) {
                                retried.insert(dcid.to_vec());
                            } else {
                                answered.insert(dcid.to_vec());
                            }
                        }
                        if let Some(client) = client {
                            let _ = front.send_to(d, client).await;
                        }
                    }
                }
                tx.send_if_modified(|c| {
                    let now = Counts {
                        offered: offered.len(),
                        answered: answered.len(),
                        retried: retried.len(),
                    };
                    let changed = *c != now;
                    *c = now;
                    changed
                });
            }
        });
        Ok(Self {
            addr,
            back: back_addr,
            counts,
            task,
        })
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// Waits until the counts satisfy `pred`; `None` if the proxy stopped.
    pub async fn wait_for(&self, pred: impl FnMut(&Counts) -> bool) -> Option<Counts> {
        let mut rx = self.counts.clone();
        rx.wait_for(pred).await.ok().map(|c| *c)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
