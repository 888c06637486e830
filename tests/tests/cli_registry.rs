//! Registration and lookup through the real binaries, as an operator and a
//! user run them: JSON events, exit codes, durable names across restarts and
//! crashes, a wrong server key, and `listen` surviving a server restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tests::proc::{LocalWorld as World, PeerHome, ServerProc};

const T: Duration = Duration::from_secs(20);

fn has_ip(text: &str) -> bool {
    // Any dotted quad or bracketed v6 address.
    let bytes = text.as_bytes();
    text.contains("127.0.0.1")
        || text.contains('[')
        || bytes
            .windows(4)
            .any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2].is_ascii_digit() && w[3] == b'.')
}

#[test]
fn register_and_lookup_through_the_binaries() {
    let w = World::new();
    let alice = w.home("alice");
    let id = alice.run(None, &["id"], T);
    assert!(id.status.success());
    let alice_fp = String::from_utf8(id.stdout).unwrap().trim().to_owned();
    assert_eq!(alice_fp.len(), 64, "one stable form: 64 hex chars");

    let mut listener = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    let reg = listener.wait_for(T, "registered");
    assert_eq!(reg["name"], "alice");
    assert_eq!(reg["fingerprint"], alice_fp.as_str());
    let observed = reg["observed_addr"].as_str().unwrap();
    assert!(observed.starts_with("127.0.0.1:"), "{observed}");

    let bob = w.home("bob");
    let out = bob.run(None, &["lookup", "alice"], T);
    assert!(out.status.success(), "{}", out.log);
    let ev = out.event("lookup");
    assert_eq!(ev["name"], "alice");
    assert_eq!(ev["online"], true);
    assert_eq!(ev["fingerprint"], alice_fp.as_str());
    assert!(
        !has_ip(&ev.to_string()),
        "lookup event has an address: {ev}"
    );
    // Without --json the answer is one line on stdout.
    let plain = PeerHome {
        json: false,
        ..bob.clone()
    };
    let out = plain.run(None, &["lookup", "alice"], T);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout, format!("alice online {alice_fp}\n"));
    assert!(!has_ip(&stdout), "lookup printed an address: {stdout}");

    // Offline once the listener is gone (it was stopped, not crashed).
    listener.terminate(T);
    let out = bob.run(None, &["lookup", "alice"], T);
    assert_eq!(out.event("lookup")["online"], false, "{}", out.log);

    let out = bob.run(None, &["lookup", "nobody"], T);
    assert!(!out.status.success());
    assert_eq!(out.error_kind(), Some("not_found"), "{}", out.log);
}

#[test]
fn names_stay_bound_across_restart_and_crash() {
    let mut w = World::new();
    let alice = w.home("alice");
    let mallory = w.home("mallory");

    let mut l = alice.spawn("alice", Some("alice"), &["listen"]);
    l.wait_for(T, "registered");
    // The server is killed right after it acknowledged the registration: the
    // binding was committed before the acknowledgement.
    w.restart(true);
    drop(l);

    let out = mallory.run(Some("alice"), &["listen"], T);
    assert!(!out.status.success(), "listen must exit on name_taken");
    assert_eq!(out.error_kind(), Some("name_taken"), "{}", out.log);

    w.restart(false);
    let out = mallory.run(Some("alice"), &["listen"], T);
    assert_eq!(out.error_kind(), Some("name_taken"), "{}", out.log);

    // The owner still gets in.
    let mut l = alice.spawn("alice", Some("alice"), &["listen"]);
    l.wait_for(T, "registered");
}

#[test]
fn wrong_or_missing_server_fingerprint() {
    let w = World::new();
    let mut bob = w.home("bob");
    bob.fingerprint = "ab".repeat(32);
    let out = bob.run(None, &["lookup", "alice"], T);
    assert!(!out.status.success());
    assert_eq!(out.error_kind(), Some("bad_fingerprint"), "{}", out.log);

    // Missing: a usage error that says where to get it.
    let mut cmd2 = std::process::Command::new(tests::proc::bin("peer"));
    cmd2.env_clear().env("XDG_CONFIG_HOME", &bob.dir).args([
        "--json",
        "--server",
        &w.server.addr,
        "lookup",
        "alice",
    ]);
    let out = cmd2.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rendezvous fingerprint"), "{err}");
}

#[test]
fn invalid_names_and_unreachable_server() {
    let w = World::new();
    let bob = w.home("bob");
    for bad in ["Alice", "x-", "a_b", &"a".repeat(33)] {
        let out = bob.run(Some(bad), &["listen"], T);
        assert!(!out.status.success());
        assert_eq!(out.error_kind(), Some("invalid_name"), "{bad}: {}", out.log);
        let msg = out.event("error")["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("a-z"), "the rule is in the message: {msg}");
    }

    // Nothing listens there (a fresh UDP port we hold and do not answer).
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut nowhere = bob.clone();
    nowhere.server = hole.local_addr().unwrap().to_string();
    let start = std::time::Instant::now();
    let out = nowhere.run(None, &["lookup", "alice"], Duration::from_secs(40));
    assert!(!out.status.success());
    assert_eq!(out.error_kind(), Some("server_unreachable"), "{}", out.log);
    assert!(start.elapsed() < Duration::from_secs(30), "gave up in time");
}

#[test]
fn listen_comes_back_after_the_server_is_killed_and_restarted() {
    let mut w = World::new();
    let alice = w.home("alice");
    let bob = w.home("bob");
    let mut l = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    l.wait_for(T, "registered");

    w.restart(true);
    // The restarted server (same key) answers the next keep-alive (≤ 3 s)
    // with a stateless reset: noticed before the 9 s idle timeout (which
    // counts from the kill, before the restart).
    l.wait_for(Duration::from_secs(7), "rendezvous_lost");
    l.wait_for(T, "rendezvous_restored");
    let out = bob.run(None, &["lookup", "alice"], T);
    assert_eq!(out.event("lookup")["online"], true, "{}", out.log);
}

/// `GET /metrics` over plain HTTP/1.0 (bounded by a timeout).
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn metrics_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let server = ServerProc::start(
        None,
        "127.0.0.1:0",
        &dir.path().join("server"),
        &["--metrics", &metrics],
    );
    let alice = PeerHome::new(dir.path().join("alice"), &server);
    let mut l = alice.spawn("alice", Some("alice"), &["listen"]);
    l.wait_for(T, "registered");
    let bob = PeerHome::new(dir.path().join("bob"), &server);
    assert!(bob.run(None, &["lookup", "alice"], T).status.success());
    let out = bob.run(None, &["lookup", "nobody"], T);
    assert_eq!(out.error_kind(), Some("not_found"));

    let text = scrape(&metrics);
    assert!(text.starts_with("HTTP/1."), "{text}");
    assert!(text.contains("# TYPE rendezvous_registrations_total counter"));
    assert_eq!(metric(&text, "rendezvous_registrations_total"), 1);
    assert_eq!(metric(&text, "rendezvous_lookups_total"), 1);
    assert_eq!(metric(&text, "rendezvous_online_names"), 1);
    assert!(metric(&text, "rendezvous_connections_total") >= 3);
    assert!(
        text.contains("rendezvous_errors_total{kind=\"not_found\"} 1"),
        "{text}"
    );
}

/// `--threads 1` (one worker thread, the fastest lookups per core) is a
/// whole server too: register, look up, broker a call.
#[test]
fn a_single_threaded_server_serves_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(
        None,
        "127.0.0.1:0",
        &dir.path().join("server"),
        &["--threads", "1"],
    );
    let alice = PeerHome::new(dir.path().join("alice"), &server);
    let mut listener = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    listener.wait_for(T, "registered");
    let bob = PeerHome::new(dir.path().join("bob"), &server);
    let out = bob.run(None, &["lookup", "alice"], T);
    assert_eq!(out.event("lookup")["online"], true, "{}", out.log);
    let out = bob.run(Some("bob"), &["call", "alice"], T);
    assert!(out.status.success(), "{}", out.log);
    assert_eq!(out.event("connected")["path"], "direct");
}
