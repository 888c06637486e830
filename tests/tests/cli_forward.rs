//! TCP forwarding through the real binaries on loopback: `peer forward`
//! → `peer listen --forward-to` in front of an HTTP/1.0 file server and a
//! TCP echo server (`tests::tcp_services`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use tests::proc::{LocalWorld as World, PeerHome, Proc};
use tests::tcp_services::{self, HttpServer};

const T: Duration = Duration::from_secs(30);

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// `bob forward 127.0.0.1:0 alice`, waited until it listens and its first
/// call is up; returns the process and its TCP address.
fn forward(w: &World) -> (PeerHome, Proc, SocketAddr) {
    let bob = w.home("bob");
    let mut f = bob.spawn(
        "bob forward",
        Some("bob"),
        &["forward", "127.0.0.1:0", "alice"],
    );
    let ev = f.wait_for(T, "forwarding");
    assert_eq!(ev["peer"], "alice");
    let addr = ev["local_addr"].as_str().unwrap().parse().unwrap();
    f.wait_for(T, "connected");
    (bob, f, addr)
}

fn listen_forwarding(w: &World, target: SocketAddr) -> (PeerHome, Proc) {
    w.listen(
        "alice",
        &["--forward-to", &target.to_string(), "--accept-from", "bob"],
    )
}

#[test]
fn sixteen_concurrent_http_downloads_are_byte_identical() {
    let file = Arc::new(random(8 << 20));
    let http = HttpServer::start(file.clone(), 0);
    let w = World::new();
    let (_alice, _l) = listen_forwarding(&w, http.addr);
    let (_bob, mut f, addr) = forward(&w);
    let downloads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(addr).unwrap();
                conn.set_read_timeout(Some(T)).unwrap();
                tcp_services::get(&mut conn, "/file")
            })
        })
        .collect();
    for (i, d) in downloads.into_iter().enumerate() {
        let body = d
            .join()
            .unwrap_or_else(|_| panic!("download {i} failed:\n{}", f.log()));
        assert!(
            *body == **file,
            "download {i} differs ({} bytes)",
            body.len()
        );
    }
    assert!(f.drain("forward_failed").is_empty(), "{}", f.log());
    // SIGTERM: `forward` is long-running, a stop is its normal end.
    assert!(f.terminate(T).success(), "{}", f.log());
}

#[test]
fn echo_with_half_close_and_peer_call_as_netcat() {
    let echo = tcp_services::echo_server();
    let w = World::new();
    let (_alice, _l) = listen_forwarding(&w, echo);
    let (bob, _f, addr) = forward(&w);
    // The client shuts down its write side and still receives every byte.
    let data = random(1 << 20);
    let back = tcp_services::echo_through(addr, data.clone(), T).unwrap();
    assert!(
        back == data,
        "echo differs ({} of {} bytes)",
        back.len(),
        data.len()
    );
    // Small and interactive: a line comes back before the client's FIN.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    conn.write_all(b"hello\n").unwrap();
    let mut line = [0u8; 6];
    conn.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello\n");
    drop(conn);
    // A `--forward-to` listener serves `peer call` too, like nc to the target.
    let mut cmd = bob.cmd(Some("bob"), &["call", "alice"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut call = Proc::spawn("bob call alice", cmd);
    let mut stdin = call.take_stdin();
    stdin.write_all(b"through peer call\n").unwrap();
    drop(stdin);
    assert_eq!(call.read_stdout(T), b"through peer call\n");
    assert!(call.wait_exit(T).success(), "{}", call.log());
}

#[test]
fn a_stalled_client_does_not_slow_another_stream() {
    let file = Arc::new(random(8 << 20));
    let big: u64 = 64 << 20;
    let http = HttpServer::start(file.clone(), big);
    let w = World::new();
    let (_alice, _l) = listen_forwarding(&w, http.addr);
    let (_bob, f, addr) = forward(&w);
    // Asks for 64 MiB and reads none of it.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(b"GET /big HTTP/1.0\r\n\r\n").unwrap();
    // Wait until the server can write no more: every buffer on the way
    // (TCP both ends, the stream's QUIC window) is full.
    let mut written = 0;
    while let Ok(n) = http.progress.recv_timeout(Duration::from_secs(2)) {
        written = n;
        assert!(n < big, "the stalled stream was buffered whole");
    }
    assert!(written >= 4 << 20, "only {written} bytes reached the stall");
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let body = tcp_services::get(&mut conn, "/file");
    let took = started.elapsed();
    assert!(*body == **file, "download differs ({} bytes)", body.len());
    assert!(took < Duration::from_secs(10), "took {took:?}\n{}", f.log());
    assert!(http.progress.try_recv().is_err(), "the stall moved");
    // The stalled client reads at last and gets every byte, in order.
    stalled.set_read_timeout(Some(T)).unwrap();
    let mut all = Vec::new();
    stalled.read_to_end(&mut all).unwrap();
    let body = tcp_services::body(&all);
    assert_eq!(body.len() as u64, big);
    let bad = body
        .iter()
        .enumerate()
        .position(|(i, b)| *b != tcp_services::pattern(i as u64));
    assert_eq!(bad, None, "the stalled stream's bytes differ");
}

#[test]
fn a_restarted_listener_is_served_again_within_20_s() {
    let echo = tcp_services::echo_server();
    let w = World::new();
    let (_alice, mut l) = listen_forwarding(&w, echo);
    let (_bob, f, addr) = forward(&w);
    assert_eq!(
        tcp_services::echo_through(addr, b"before".to_vec(), T).unwrap(),
        b"before"
    );
    // Killed: `forward` learns it only from an unanswered stream.
    l.kill();
    let (_alice, _l2) = listen_forwarding(&w, echo);
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "not served again within 20 s\n{}", f.log());
        match tcp_services::echo_through(addr, b"after".to_vec(), left) {
            Ok(back) if back == b"after" => break,
            other => eprintln!("not yet: {other:?}"),
        }
    }
    eprintln!("served again {:?} after the restart", restarted.elapsed());
}

#[test]
fn forward_to_needs_accept_from_or_accept_any() {
    let w = World::new();
    let alice = w.home("alice");
    let out = alice.run(
        Some("alice"),
        &["listen", "--forward-to", "127.0.0.1:22"],
        T,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.log);
    assert_eq!(out.error_kind(), Some("usage"), "{}", out.log);
    assert!(out.log.contains("--accept-from"), "{}", out.log);
    let out = alice.run(
        Some("alice"),
        &["listen", "--forward-to", "nowhere", "--accept-any"],
        T,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.log);
}

#[test]
fn a_refusing_target_closes_the_connection_with_an_event() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = closed.local_addr().unwrap();
    drop(closed);
    let w = World::new();
    let (_alice, _l) = w.listen(
        "alice",
        &["--forward-to", &target.to_string(), "--accept-any"],
    );
    let (_bob, mut f, addr) = forward(&w);
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let mut buf = Vec::new();
    // Closed: EOF (or a reset), not a hang.
    let _ = conn.read_to_end(&mut buf);
    assert!(buf.is_empty());
    let ev = f.wait_event(T, |v| v["event"] == "forward_failed");
    assert_eq!(ev["reason"], "target_refused", "{ev}");
    assert_eq!(ev["peer"], "alice");
    // The call is unaffected: the next connection is refused the same way
    // on the same call, without calling again.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let _ = conn.read_to_end(&mut buf);
    let ev = f.wait_event(T, |v| v["event"] == "forward_failed");
    assert_eq!(ev["reason"], "target_refused", "{ev}");
    assert!(
        f.drain("connected").is_empty(),
        "called again:\n{}",
        f.log()
    );
}
