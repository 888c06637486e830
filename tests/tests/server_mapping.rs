//! The mapping check (issue 15): the server's main UDP port answers a
//! flagged UDP check with the address it saw and its mapping check port; the
//! mapping check port answers the same requests, so a peer asking both from
//! one socket compares what each saw. Old (unflagged) requests get the old
//! answer on both; junk gets nothing; the port can be moved, turned off,
//! and a taken default does not stop the server. Servers listen on their
//! own 127.0.88.0/24 addresses where a test needs fixed ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use common::tunnel::check;
use rendezvous::MappingPort;
use tests::inproc::TestServer;
use tests::proc::{bin, command, Proc};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(5);

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// The next datagram `sock` receives, within [`T`].
async fn next(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(T, sock.recv_from(&mut buf))
        .await
        .expect("an answer within the timeout")
        .unwrap();
    (buf[..n].to_vec(), from)
}

/// Sends `req` to `to` and returns the answer (asserting it is smaller).
async fn ask(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> Vec<u8> {
    sock.send_to(req, to).await.unwrap();
    let (answer, from) = next(sock).await;
    assert_eq!(from, to, "answered from another address");
    assert!(answer.len() < req.len(), "an answer outgrew its request");
    answer
}

/// A mapping check at `to`: the address seen and the other port named.
async fn mapping(sock: &UdpSocket, to: SocketAddr, nonce: u8) -> (SocketAddr, Option<u16>) {
    let answer = ask(sock, to, &check::mapping_request([nonce; 16])).await;
    let (got, seen, other) = check::parse_mapping_answer(&answer)
        .unwrap_or_else(|| panic!("not a mapping answer: {answer:02x?}"));
    assert_eq!(got, [nonce; 16]);
    (seen, other)
}

#[tokio::test]
async fn the_main_port_names_the_mapping_port_and_both_see_one_address() {
    let server = TestServer::start().await;
    let at = server
        .mapping_addr
        .expect("a mapping check port by default");
    assert_ne!(at.port(), server.addr.port());
    assert_eq!(at.ip(), server.addr.ip());
    let sock = client().await;
    let me = sock.local_addr().unwrap();
    let (seen, other) = mapping(&sock, server.addr, 1).await;
    assert_eq!((seen, other), (me, Some(at.port())));
    let second = SocketAddr::new(server.addr.ip(), other.unwrap());
    let (seen_there, other_there) = mapping(&sock, second, 2).await;
    assert_eq!((seen_there, other_there), (me, None));
    let text = server.metrics().render();
    for line in [
        "rendezvous_mapping_checks_total{port=\"main\"} 1",
        "rendezvous_mapping_checks_total{port=\"other\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
}

#[tokio::test]
async fn an_unflagged_check_gets_the_plain_answer_on_both_ports() {
    let server = TestServer::start().await;
    let sock = client().await;
    let me = sock.local_addr().unwrap();
    for (to, nonce) in [(server.addr, 3), (server.mapping_addr.unwrap(), 4)] {
        let answer = ask(&sock, to, &check::request([nonce; 16])).await;
        assert_eq!(
            check::parse_answer(&answer),
            Some(([nonce; 16], me)),
            "{to}"
        );
    }
    assert!(server
        .metrics()
        .render()
        .contains("rendezvous_mapping_checks_total{port=\"other\"} 0"));
}

#[tokio::test]
async fn junk_and_short_requests_get_nothing() {
    let server = TestServer::start().await;
    let other = server.mapping_addr.unwrap();
    let sock = client().await;
    let full = check::mapping_request([5; 16]);
    // Short requests on both ports; anything at all on the mapping port.
    let mut junk: Vec<(SocketAddr, Vec<u8>)> = (1..check::REQUEST_LEN)
        .flat_map(|len| {
            [
                (server.addr, full[..len].to_vec()),
                (other, full[..len].to_vec()),
            ]
        })
        .collect();
    let mut wrong_type = full;
    wrong_type[0] = check::MAPPING_ANSWER;
    junk.push((other, wrong_type.to_vec()));
    junk.push((other, vec![0xC0; 1200]));
    junk.push((other, Vec::new()));
    for (to, bytes) in &junk {
        sock.send_to(bytes, to).await.unwrap();
    }
    // The first answer to arrive is the one to the good request sent last
    // on each port: the junk before it got none.
    for (to, nonce) in [(other, 6), (server.addr, 7)] {
        let (seen, _) = mapping(&sock, to, nonce).await;
        assert_eq!(seen, sock.local_addr().unwrap());
    }
}

#[tokio::test]
async fn one_source_is_answered_ten_times_a_second_on_the_mapping_port() {
    let server = TestServer::start().await;
    let other = server.mapping_addr.unwrap();
    let flood = client().await;
    for i in 0..40u8 {
        flood
            .send_to(&check::mapping_request([i; 16]), other)
            .await
            .unwrap();
    }
    // Another source's answer comes after every answer the flood got.
    let marker = UdpSocket::bind("127.0.6.40:0").await.unwrap();
    mapping(&marker, other, 99).await;
    let mut answered = 0;
    let mut buf = [0u8; 64];
    while flood.try_recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    // Ten a second (twenty if the burst straddles the start of a second).
    assert!((10..=20).contains(&answered), "{answered} answered");
}

#[tokio::test]
async fn by_default_the_mapping_port_is_the_next_port() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "127.0.88.1:7700".parse().unwrap();
    let server = TestServer::start_at(dir.path().into(), listen).await;
    assert_eq!(
        server.mapping_addr,
        Some("127.0.88.1:7701".parse().unwrap())
    );
    let sock = UdpSocket::bind("127.0.88.1:0").await.unwrap();
    assert_eq!(mapping(&sock, listen, 8).await.1, Some(7701));
}

#[tokio::test]
async fn off_means_no_second_port_and_answers_naming_none() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "127.0.88.2:7700".parse().unwrap();
    let server = TestServer::start_configured(dir.path().into(), listen, |c| {
        c.mapping_port = MappingPort::Off;
    })
    .await;
    assert_eq!(server.mapping_addr, None);
    let sock = UdpSocket::bind("127.0.88.2:0").await.unwrap();
    assert_eq!(mapping(&sock, listen, 9).await.1, None);
    // Nothing holds the default port.
    std::net::UdpSocket::bind("127.0.88.2:7701").expect("the default port is free");
}

#[tokio::test]
async fn a_taken_default_port_is_no_reason_not_to_start() {
    let _taken = std::net::UdpSocket::bind("127.0.88.3:7701").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "127.0.88.3:7700".parse().unwrap();
    let server = TestServer::start_at(dir.path().into(), listen).await;
    assert_eq!(server.mapping_addr, None);
    let sock = UdpSocket::bind("127.0.88.3:0").await.unwrap();
    assert_eq!(mapping(&sock, listen, 10).await.1, None);
}

#[tokio::test]
async fn a_taken_explicit_port_stops_the_start_with_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.88.4:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = rendezvous::Config::new("127.0.88.4:0".parse().unwrap(), dir.path().into());
    config.mapping_port = MappingPort::Port(port);
    let err = rendezvous::Server::bind(config).err().expect("refused");
    assert!(
        matches!(err, rendezvous::ServerError::MappingBind { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--mapping-port"), "{err}");
}

/// `rendezvous --json --listen LISTEN EXTRA..` in a temp data dir.
fn server_proc(listen: &str, dir: &std::path::Path, extra: &[&str]) -> Proc {
    let mut cmd = command(None, &bin("rendezvous"));
    cmd.args(["--json", "--listen", listen, "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    Proc::spawn("rendezvous", cmd)
}

#[test]
fn the_flag_moves_or_turns_off_the_port_and_a_taken_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut moved = server_proc("127.0.88.5:0", dir.path(), &["--mapping-port", "0"]);
    let ev = moved.wait_for(Duration::from_secs(20), "listening");
    let at = ev["mapping_addr"]
        .as_str()
        .expect("mapping_addr in the event");
    let at: SocketAddr = at.parse().unwrap();
    assert_eq!(at.ip().to_string(), "127.0.88.5");
    // That port is held: asking for it again fails the start.
    let dir2 = tempfile::tempdir().unwrap();
    let port = at.port().to_string();
    let mut refused = server_proc("127.0.88.5:0", dir2.path(), &["--mapping-port", &port]);
    let status = refused.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        refused.log().contains("--mapping-port"),
        "{}",
        refused.log()
    );
    let dir3 = tempfile::tempdir().unwrap();
    let mut off = server_proc("127.0.88.5:0", dir3.path(), &["--mapping-port", "off"]);
    let ev = off.wait_for(Duration::from_secs(20), "listening");
    assert!(ev.get("mapping_addr").is_none(), "{ev}");
}

#[tokio::test]
async fn a_stopped_server_has_let_go_of_the_mapping_port() {
    let mut server = TestServer::start().await;
    let at = server.mapping_addr.unwrap();
    assert!(
        std::net::UdpSocket::bind(at).is_err(),
        "not held while running"
    );
    server.stop().await;
    std::net::UdpSocket::bind(at).expect("free once stopped");
}
