//! Direct calls through the real binaries on loopback: data through `call`
//! and `listen`, the `connected` event, refusals, contacts' keys, files, many
//! callers at once, and the server killed mid-call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use rand::RngCore;
use tests::proc::{LocalWorld as World, PeerHome, Proc, ServerProc};

const T: Duration = Duration::from_secs(30);

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// `peer call TARGET` with `input` on stdin; returns the process and what
/// it printed on stdout.
fn call_with(home: &PeerHome, me: &str, target: &str, input: Vec<u8>) -> (Proc, Vec<u8>) {
    let mut cmd = home.cmd(Some(me), &["call", target]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut p = Proc::spawn(&format!("{me} call {target}"), cmd);
    let mut stdin = p.take_stdin();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        // Dropping stdin is the half-close.
    });
    let out = p.read_stdout(T);
    writer.join().unwrap();
    (p, out)
}

#[test]
fn one_megabyte_through_listen_echo_and_the_connected_event() {
    let w = World::new();
    let (alice, _l) = w.listen("alice", &["--echo"]);
    let alice_fp = String::from_utf8(alice.run(None, &["id"], T).stdout)
        .unwrap()
        .trim()
        .to_owned();
    let bob = w.home("bob");
    let data = random(1 << 20);
    let (mut call, out) = call_with(&bob, "bob", "alice", data.clone());
    assert!(call.wait_exit(T).success(), "{}", call.log());
    assert!(
        out == data,
        "echo differs ({} of {} bytes)",
        out.len(),
        data.len()
    );

    let c = call.wait_for(T, "connected");
    assert_eq!(c["peer"], "alice");
    assert_eq!(c["fingerprint"], alice_fp.as_str());
    assert_eq!(c["path"], "direct");
    let remote: std::net::SocketAddr = c["remote_addr"].as_str().unwrap().parse().unwrap();
    assert!(
        !remote.ip().is_unspecified() && remote.port() != 0,
        "{remote}"
    );
    let setup = c["setup_ms"].as_f64().unwrap();
    assert!(setup > 0.0 && setup < 10_000.0, "{setup}");
    assert!(c["server_ms"].as_f64().unwrap() >= 0.0, "{c}");
    let end = call.wait_for(T, "call_ended");
    assert_eq!(end["bytes_sent"], data.len() as u64);
    assert_eq!(end["bytes_received"], data.len() as u64);
    // bob recorded alice's key after the first call.
    let known = std::fs::read_to_string(bob.dir.join("peer/known_peers")).unwrap();
    assert!(known.contains(&format!("alice {alice_fp}")), "{known}");
}

/// A caller exits as soon as its last byte is acknowledged (it does not
/// wait out the connection's draining period), and nothing is lost by it:
/// the callee has every byte of 1 MiB, 50 times over.
#[test]
fn a_fast_exiting_caller_loses_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut generous = vec![];
    for flag in [
        "--register-rate",
        "--call-rate",
        "--offer-rate-per-source",
        "--offer-rate-per-callee",
    ] {
        generous.extend([flag, "1000/1000"]);
    }
    let server = ServerProc::start(None, "127.0.0.1:0", &dir.path().join("server"), &generous);
    let got = dir.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    // Each call's bytes go to a file of its own. Its stdout is closed at
    // once, so the callee finishes its side first: only the caller's wait
    // for its own bytes' acknowledgement keeps them from being lost.
    let exec = format!("exec >&-; cat > \"$(mktemp -p '{}')\"", got.display());
    let alice = PeerHome::new(dir.path().join("alice"), &server);
    let mut listener = alice.spawn("alice", Some("alice"), &["listen", "--exec", &exec]);
    listener.wait_for(T, "registered");
    let bob = PeerHome::new(dir.path().join("bob"), &server);
    let data = random(1 << 20);
    const CALLS: usize = 50;
    for i in 0..CALLS {
        let (mut call, _) = call_with(&bob, "bob", "alice", data.clone());
        assert!(call.wait_exit(T).success(), "call {i}: {}", call.log());
        // The caller is gone; the callee still gets every byte it sent.
        let ended = listener.wait_for(T, "call_ended");
        assert_eq!(
            ended["bytes_received"],
            data.len() as u64,
            "call {i}: {ended}"
        );
    }
    let files: Vec<_> = std::fs::read_dir(&got).unwrap().collect();
    assert_eq!(files.len(), CALLS);
    for f in files {
        let path = f.unwrap().path();
        assert!(
            std::fs::read(&path).unwrap() == data,
            "{} differs",
            path.display()
        );
    }
}

/// A contact's calls through the real binaries take the pre-approved fast
/// path (alice accepts bob without being asked). The caller learns alice's
/// address as alice is told of the call, so its first Initial may arrive
/// before alice has read the news: it must wait for the call, not be
/// refused as a stranger's. Every call of 20 connects.
#[test]
fn a_contacts_fresh_calls_all_connect_through_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let generous = ["--register-rate", "1000/1000", "--call-rate", "1000/1000"];
    let server = ServerProc::start(None, "127.0.0.1:0", &dir.path().join("server"), &generous);
    let bob = PeerHome::new(dir.path().join("bob"), &server);
    let bob_fp = String::from_utf8(bob.run(None, &["id"], T).stdout).unwrap();
    let alice = PeerHome::new(dir.path().join("alice"), &server);
    std::fs::create_dir_all(alice.dir.join("peer")).unwrap();
    std::fs::write(
        alice.dir.join("peer/known_peers"),
        format!("bob {}\n", bob_fp.trim()),
    )
    .unwrap();
    let mut listener = alice.spawn(
        "alice",
        Some("alice"),
        &["listen", "--echo", "--accept-from", "bob"],
    );
    listener.wait_for(T, "registered");
    for i in 0..20 {
        let (mut call, out) = call_with(&bob, "bob", "alice", b"hi".to_vec());
        assert!(call.wait_exit(T).success(), "call {i}: {}", call.log());
        assert_eq!(out, b"hi", "call {i}");
    }
}

#[test]
fn exec_runs_a_command_per_call() {
    let w = World::new();
    let (_alice, _l) = w.listen("alice", &["--exec", "tr a-z A-Z"]);
    let bob = w.home("bob");
    let (mut call, out) = call_with(&bob, "bob", "alice", b"shout this\n".to_vec());
    assert!(call.wait_exit(T).success(), "{}", call.log());
    assert_eq!(out, b"SHOUT THIS\n");
}

#[test]
fn refusals_not_found_offline_rejected() {
    let w = World::new();
    let bob = w.home("bob");
    let out = bob.run(Some("bob"), &["call", "nobody"], T);
    assert_eq!(out.error_kind(), Some("not_found"), "{}", out.log);
    assert!(!out.status.success());

    // Registered once, then gone: offline.
    let (_h, mut l) = w.listen("carol", &[]);
    l.terminate(T);
    let out = bob.run(Some("bob"), &["call", "carol"], T);
    assert_eq!(out.error_kind(), Some("offline"), "{}", out.log);

    // An allow-list that does not name bob: rejected, and alice's address is
    // never sent to bob (the call fails without any connected event).
    let (_a, mut alice) = w.listen("alice", &["--echo", "--accept-from", "dave"]);
    let out = bob.run(Some("bob"), &["call", "alice"], T);
    assert_eq!(out.error_kind(), Some("rejected"), "{}", out.log);
    assert!(out.events.iter().all(|e| e["event"] != "connected"));
    alice.wait_for(T, "call_refused");
}

#[test]
fn changed_key_is_refused_unless_accepted() {
    let w = World::new();
    let (_a, _l) = w.listen("alice", &["--echo"]);
    let bob = w.home("bob");
    // bob's contacts say alice had another key.
    std::fs::create_dir_all(bob.dir.join("peer")).unwrap();
    let stale = "cd".repeat(32);
    std::fs::write(bob.dir.join("peer/known_peers"), format!("alice {stale}\n")).unwrap();
    let out = bob.run(Some("bob"), &["call", "alice"], T);
    assert!(!out.status.success());
    assert_eq!(out.error_kind(), Some("key_changed"), "{}", out.log);

    let (mut call, echoed) = {
        let mut cmd = bob.cmd(Some("bob"), &["call", "alice", "--accept-new-key"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut p = Proc::spawn("bob call --accept-new-key", cmd);
        p.take_stdin().write_all(b"hi").unwrap();
        let out = p.read_stdout(T);
        (p, out)
    };
    assert!(call.wait_exit(T).success(), "{}", call.log());
    assert_eq!(echoed, b"hi");
    let known = std::fs::read_to_string(bob.dir.join("peer/known_peers")).unwrap();
    assert!(
        !known.contains(&stale),
        "the new key replaced the old: {known}"
    );
}

#[test]
fn twenty_callers_at_once() {
    let w = World::new();
    let (_a, _l) = w.listen("alice", &["--echo"]);
    let bob = w.home("bob");
    let callers: Vec<_> = (0..20)
        .map(|i| {
            let data = random(64 * 1024 + i);
            let mut cmd = bob.cmd(Some("bob"), &["call", "alice"]);
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut p = Proc::spawn(&format!("caller {i}"), cmd);
            let mut stdin = p.take_stdin();
            let input = data.clone();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
            (p, data)
        })
        .collect();
    for (mut p, data) in callers {
        let out = p.read_stdout(Duration::from_secs(90));
        assert!(p.wait_exit(T).success(), "{}", p.log());
        assert!(
            out == data,
            "{}: got {} of {} bytes",
            p.name,
            out.len(),
            data.len()
        );
    }
}

#[test]
fn send_a_file_through_the_cli() {
    let w = World::new();
    let inbox = w.dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let (_a, mut l) = w.listen("alice", &["--receive-dir", inbox.to_str().unwrap()]);
    let file = w.dir.path().join("report.bin");
    let data = random(300_000);
    std::fs::write(&file, &data).unwrap();
    let bob = w.home("bob");
    let out = bob.run(Some("bob"), &["send", "alice", file.to_str().unwrap()], T);
    assert!(out.status.success(), "{}", out.log);
    l.wait_for(T, "file_received");
    assert_eq!(std::fs::read(inbox.join("report.bin")).unwrap(), data);
    // Nothing else (no temp files) left in the inbox.
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 1);

    // A file over the receiver's limit is refused and leaves nothing.
    let (_c, _l2) = w.listen(
        "carol",
        &[
            "--receive-dir",
            inbox.to_str().unwrap(),
            "--max-file-size",
            "1000",
        ],
    );
    let out = bob.run(Some("bob"), &["send", "carol", file.to_str().unwrap()], T);
    assert!(!out.status.success(), "{}", out.log);
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 1);
}

/// The server is SIGKILLed mid-call and stays dead for longer than any idle
/// timeout (server link 20 s, peer link 30 s): pings go on over the direct
/// path, and when it comes back both listeners register again.
#[test]
fn server_killed_mid_call_the_call_goes_on() {
    let mut w = World::new();
    let (_a, mut alice) = w.listen("alice", &["--echo"]);
    let (bob, mut bob_listen) = w.listen("bob", &[]);
    let mut ping = bob.spawn(
        "bob ping",
        Some("bob"),
        &["ping", "alice", "-c", "45", "-i", "1"],
    );
    let first = ping.wait_event(T, |e| e["event"] == "pong" && e["seq"] == 3);
    assert_eq!(first["path"], "direct");

    w.server.proc.kill();
    alice.wait_for(T, "rendezvous_lost");
    bob_listen.wait_for(T, "rendezvous_lost");
    // 32 s without a server.
    ping.wait_event(Duration::from_secs(60), |e| {
        e["event"] == "pong" && e["seq"] == 35
    });
    w.start_again();
    alice.wait_for(T, "rendezvous_restored");
    bob_listen.wait_for(T, "rendezvous_restored");

    let status = ping.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "every ping answered:\n{}", ping.log());
    let pongs: Vec<_> = ping.drain("pong");
    // seq 36..44 are still queued (the waits above consumed the earlier ones).
    assert_eq!(pongs.len(), 9, "{}", ping.log());
    assert!(
        pongs.iter().all(|p| p["path"] == "direct"),
        "{}",
        ping.log()
    );
    let out = w.home("carol").run(None, &["lookup", "alice"], T);
    assert_eq!(out.event("lookup")["online"], true);
}
