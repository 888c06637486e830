//! QUIC's fixed bit stays set on every packet a peer and the server send.
//!
//! Probes and relay frames (issue 10) are told apart from QUIC by a clear
//! fixed bit (0x40). quinn greases that bit by default (RFC 9287: once both
//! sides advertise it, about half of all packets clear it), so every
//! endpoint here turns greasing off ([`peer::endpoint_config`], the server's
//! transport). A UDP proxy between a peer and the server looks at every
//! datagram of a session with some traffic on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peer::Peer;
use tests::inproc::{within, TestServer};
use tokio::net::UdpSocket;

/// Datagrams seen by the proxy, and how many had the fixed bit clear.
#[derive(Default)]
struct Seen {
    datagrams: AtomicUsize,
    short_headers: AtomicUsize,
    fixed_bit_clear: AtomicUsize,
    /// UDP checks and their answers (the peer's mapping check at start):
    /// not QUIC, their fixed bit clear by design.
    checks: AtomicUsize,
}

/// Whether `d` is a UDP check or an answer to one, by type and length.
fn is_check(d: &[u8]) -> bool {
    use common::tunnel::check;
    matches!(
        (d[0], d.len()),
        (check::REQUEST, check::REQUEST_LEN)
            | (check::ANSWER, check::ANSWER_LEN)
            | (check::MAPPING_ANSWER, check::MAPPING_ANSWER_LEN)
    )
}

impl Seen {
    fn count(&self, d: &[u8]) {
        let Some(first) = d.first() else { return };
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        if is_check(d) {
            self.checks.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if first & 0x80 == 0 {
            self.short_headers.fetch_add(1, Ordering::Relaxed);
        }
        if first & 0x40 == 0 {
            self.fixed_bit_clear.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A UDP relay for one client in front of `server`, counting both ways.
async fn proxy(server: SocketAddr, seen: Arc<Seen>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = front.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    seen.count(&up[..n]);
                    let _ = back.send_to(&up[..n], server).await;
                }
                Ok((n, _)) = back.recv_from(&mut down) => {
                    seen.count(&down[..n]);
                    if let Some(client) = client {
                        let _ = front.send_to(&down[..n], client).await;
                    }
                }
            }
        }
    });
    (addr, task)
}

#[tokio::test]
async fn no_packet_between_a_peer_and_the_server_clears_the_fixed_bit() {
    let server = TestServer::start().await;
    let seen = Arc::new(Seen::default());
    let (front, task) = proxy(server.addr, seen.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = server.peer_config(dir.path(), None);
    config.server = front.to_string();
    let peer = Peer::new(config).await.expect("peer");
    // Enough 1-RTT packets that greasing (about one in two) cannot hide:
    // each lookup is a request and an answer, with their acknowledgements.
    within(
        Duration::from_secs(20),
        "60 lookups through the proxy",
        async {
            for i in 0..60 {
                // An unregistered name: `not_found`, a round trip all the same.
                let name = format!("nobody-{i}");
                let answer = peer.lookup(&name).await;
                assert!(
                    matches!(
                        answer,
                        Err(peer::Error::Server {
                            kind: peer::ErrorKind::NotFound,
                            ..
                        })
                    ),
                    "{answer:?}"
                );
            }
        },
    )
    .await;
    task.abort();
    let short = seen.short_headers.load(Ordering::Relaxed);
    let clear = seen.fixed_bit_clear.load(Ordering::Relaxed);
    // A request and its answer for the mapping check; not so many that
    // greased QUIC packets could hide among them.
    let checks = seen.checks.load(Ordering::Relaxed);
    assert!(checks <= 4, "{checks} UDP checks through the proxy");
    assert!(
        short >= 100,
        "too little traffic to tell: {short} short-header packets"
    );
    assert_eq!(
        clear,
        0,
        "{clear} of {} datagrams ({short} with short headers) had QUIC's fixed bit clear",
        seen.datagrams.load(Ordering::Relaxed)
    );
}
