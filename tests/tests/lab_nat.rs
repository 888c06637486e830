//! Calls across real NATs: the NAT lab (see `tests/LAB.md`), driving the
//! real binaries inside network namespaces through their `--json` events.
//! Needs root; skips with a reason elsewhere, fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::lab::{Host, Lab, Nat};
use tests::proc::Proc;

const T: Duration = Duration::from_secs(30);

/// alice listens (echo) on `a`; bob on `b` calls her and sends a line.
/// Returns alice's `registered` event and bob's `connected` event.
fn call_across(lab: &Lab, a: &Host, b: &Host) -> (Value, Value) {
    let alice = lab.home("alice", a);
    let mut l = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    let reg = l.wait_for(T, "registered");
    let bob = lab.home("bob", b);
    let mut cmd = bob.cmd(Some("bob"), &["call", "alice"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut call = Proc::spawn("bob call", cmd);
    call.take_stdin().write_all(b"across the NATs\n").unwrap();
    let out = call.read_stdout(T);
    assert!(call.wait_exit(T).success(), "{}", call.log());
    assert_eq!(out, b"across the NATs\n");
    let connected = call.wait_for(T, "connected");
    drop(l);
    (reg, connected)
}

#[test]
fn open_to_open_is_direct_to_the_public_address() {
    let Some(mut lab) = Lab::new("open_to_open") else {
        return;
    };
    lab.start_server();
    let a = lab.site(Nat::Open, 1);
    let b = lab.site(Nat::Open, 1);
    let (reg, c) = call_across(&lab, &a.hosts[0], &b.hosts[0]);
    assert_eq!(c["path"], "direct");
    assert_eq!(c["remote_addr"], reg["observed_addr"]);
    assert!(reg["observed_addr"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}:", a.public)));
}

#[test]
fn cone_to_cone_is_direct_through_both_nats() {
    let Some(mut lab) = Lab::new("cone_to_cone") else {
        return;
    };
    lab.start_server();
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    let (reg, c) = call_across(&lab, &a.hosts[0], &b.hosts[0]);
    // The server saw the NAT's public address, not the private one.
    let observed = reg["observed_addr"].as_str().unwrap();
    assert!(
        observed.starts_with(&format!("{}:", a.public)),
        "{observed}"
    );
    assert_eq!(c["path"], "direct");
    assert_eq!(c["remote_addr"], reg["observed_addr"]);
}

/// `name listen --echo` on `host`, waited until registered.
fn listen(lab: &Lab, name: &str, host: &Host) -> (Proc, Value) {
    let mut l = lab
        .home(name, host)
        .spawn(name, Some(name), &["listen", "--echo"]);
    let reg = l.wait_for(T, "registered");
    (l, reg)
}

/// `bob call alice --timeout 5` with empty input from `host`.
fn short_call(lab: &Lab, host: &Host) -> (tests::proc::Output, Duration) {
    let start = Instant::now();
    let out = lab
        .home("bob", host)
        .run(Some("bob"), &["call", "alice", "--timeout", "5"], T);
    (out, start.elapsed())
}

#[test]
fn same_lan_behind_one_nat_is_direct_over_the_lan() {
    let Some(mut lab) = Lab::new("same_lan") else {
        return;
    };
    lab.start_server();
    let site = lab.site(Nat::Cone, 2);
    let (_l, _reg) = listen(&lab, "alice", &site.hosts[0]);
    let (out, _) = short_call(&lab, &site.hosts[1]);
    assert!(out.status.success(), "{}", out.log);
    let c = out.event("connected");
    assert_eq!(c["path"], "direct");
    assert_eq!(
        c["remote_addr"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap(),
        site.hosts[0].addr.to_string(),
        "the LAN address wins: {c}"
    );
}

#[test]
fn double_nat_cgnat_to_cone_is_direct() {
    let Some(mut lab) = Lab::new("cgnat_to_cone") else {
        return;
    };
    lab.start_server();
    let a = lab.site(Nat::Cgnat, 1);
    let b = lab.site(Nat::Cone, 1);
    let (reg, c) = call_across(&lab, &a.hosts[0], &b.hosts[0]);
    let observed = reg["observed_addr"].as_str().unwrap();
    assert!(
        observed.starts_with(&format!("{}:", a.public)),
        "the carrier's address: {observed}"
    );
    assert_eq!(c["path"], "direct");
    assert_eq!(c["remote_addr"], reg["observed_addr"]);
    // And the other way round.
    let (reg, c) = call_across(&lab, &b.hosts[0], &a.hosts[0]);
    assert_eq!(c["path"], "direct");
    assert_eq!(c["remote_addr"], reg["observed_addr"]);
}

/// Without port prediction (and before the relay), a symmetric NAT on one
/// side and a cone NAT on the other have no direct path: the callee's
/// pinhole is keyed to the port the symmetric side used toward the server.
/// The call must say so within its deadline, whichever side is symmetric.
#[test]
fn symmetric_to_cone_fails_in_time_with_unreachable() {
    let Some(mut lab) = Lab::new("symmetric_to_cone") else {
        return;
    };
    lab.start_server();
    let sym = lab.site(Nat::Symmetric, 1);
    let cone = lab.site(Nat::Cone, 1);
    for (callee, caller) in [(&cone, &sym), (&sym, &cone)] {
        let (_l, _) = listen(&lab, "alice", &callee.hosts[0]);
        let (out, took) = short_call(&lab, &caller.hosts[0]);
        assert!(!out.status.success(), "{}", out.log);
        assert_eq!(out.error_kind(), Some("unreachable"), "{}", out.log);
        let msg = out.event("error")["message"].as_str().unwrap().to_owned();
        assert!(
            msg.contains(&callee.public.to_string()),
            "says what was tried: {msg}"
        );
        assert!(
            took < Duration::from_secs(12),
            "within the deadline: {took:?}"
        );
    }
}

#[test]
fn symmetric_to_symmetric_on_split_segments_is_unreachable_not_a_hang() {
    let Some(mut lab) = Lab::new("symmetric_split") else {
        return;
    };
    lab.start_server();
    let site = lab.split_symmetric_site();
    let (_l, _) = listen(&lab, "alice", &site.hosts[0]);
    let (out, took) = short_call(&lab, &site.hosts[1]);
    assert_eq!(out.error_kind(), Some("unreachable"), "{}", out.log);
    assert!(
        took < Duration::from_secs(12),
        "within the deadline: {took:?}"
    );
}

#[test]
fn udp_blocked_peer_says_server_unreachable_and_callers_get_offline() {
    let Some(mut lab) = Lab::new("udp_blocked") else {
        return;
    };
    lab.start_server();
    let blocked = lab.site(Nat::UdpBlocked, 1);
    let open = lab.site(Nat::Open, 1);
    // alice registered once from an open network (her laptop moved since).
    let (mut l, _) = listen(&lab, "alice", &open.hosts[0]);
    l.terminate(T);
    drop(l);
    // Behind the UDP-blocking router her listen keeps failing, clearly.
    let mut l =
        lab.home("alice", &blocked.hosts[0])
            .spawn("alice", Some("alice"), &["listen", "--echo"]);
    l.wait_error(T, "server_unreachable");
    let out = lab
        .home("alice", &blocked.hosts[0])
        .run(None, &["lookup", "bob"], T);
    assert_eq!(out.error_kind(), Some("server_unreachable"), "{}", out.log);
    assert!(!out.status.success());
    let (out, _) = short_call(&lab, &open.hosts[0]);
    assert_eq!(out.error_kind(), Some("offline"), "{}", out.log);
}

#[test]
fn server_killed_mid_call_through_nats_the_call_goes_on() {
    let Some(mut lab) = Lab::new("server_killed") else {
        return;
    };
    lab.start_server();
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    let (_l, _) = listen(&lab, "alice", &a.hosts[0]);
    let mut ping = lab.home("bob", &b.hosts[0]).spawn(
        "bob ping",
        Some("bob"),
        &["ping", "alice", "-c", "12", "-i", "0.5"],
    );
    ping.wait_event(T, |e| e["event"] == "pong" && e["seq"] == 2);
    lab.kill_server();
    assert!(ping.wait_exit(T).success(), "{}", ping.log());
    let pongs: Vec<_> = ping.drain("pong");
    assert_eq!(pongs.len(), 9, "seq 3..11 after the kill: {}", ping.log());
    assert!(pongs.iter().all(|p| p["path"] == "direct"));
}

#[test]
fn no_namespaces_are_left_behind_even_when_a_test_panics() {
    let Some(lab) = Lab::new("cleanup") else {
        return;
    };
    let id = lab.id.clone();
    // A test that panics half way, on a thread of its own.
    let result = std::thread::spawn(move || {
        let mut lab = lab;
        lab.site(Nat::Cone, 1);
        assert!(!tests::lab::leftover_namespaces(&lab.id).is_empty());
        panic!("a failing test");
    })
    .join();
    assert!(result.is_err());
    assert_eq!(tests::lab::leftover_namespaces(&id), Vec::<String>::new());
}

/// Lines a process prints on stdout, through a channel (bounded waits).
fn stdout_lines(p: &mut Proc) -> std::sync::mpsc::Receiver<String> {
    let out = p.take_stdout();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// NATs that forget a UDP mapping after 15 s of silence: a listener idle for
/// 60 s can still be called, and a call idle for 60 s still carries data —
/// the keep-alives (server link 8 s, peer link 5 s) hold the mappings open.
#[test]
fn keepalives_hold_nat_mappings_open_for_a_minute() {
    let Some(mut lab) = Lab::new("keepalive") else {
        return;
    };
    lab.start_server();
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    lab.udp_timeout(&a.edge, 15);
    lab.udp_timeout(&b.edge, 15);
    let (_l, _) = listen(&lab, "alice", &a.hosts[0]);

    let mut cmd = lab
        .home("bob", &b.hosts[0])
        .cmd(Some("bob"), &["call", "alice"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut call = Proc::spawn("bob call", cmd);
    let mut stdin = call.take_stdin();
    let lines = stdout_lines(&mut call);
    stdin.write_all(b"one\n").unwrap();
    assert_eq!(lines.recv_timeout(T).unwrap(), "one");

    // The point of the test is the idle minute itself.
    std::thread::sleep(Duration::from_secs(60));

    let (out, _) = short_call(&lab, &b.hosts[0]);
    assert!(
        out.status.success(),
        "listener idle 60 s is callable: {}",
        out.log
    );
    assert_eq!(out.event("connected")["path"], "direct");
    stdin.write_all(b"two\n").unwrap();
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap(),
        "two",
        "the idle call still carries data"
    );
    drop(stdin);
    assert!(call.wait_exit(T).success(), "{}", call.log());
}

/// 20 ms one-way delay on every uplink (40 ms between any two sites): the
/// call reports `setup_ms`, printed next to the RTT floor measured here,
/// RTT(A,S) + RTT(S,B) + RTT(A,B).
#[test]
fn setup_ms_against_the_rtt_floor_with_delayed_uplinks() {
    let Some(mut lab) = Lab::new("delay") else {
        return;
    };
    lab.with_delay(Duration::from_millis(20));
    lab.start_server();
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    let server = std::net::Ipv4Addr::new(198, 18, 0, 2);
    let rtt_as = lab.rtt_ms(&a.hosts[0].ns, server, 5);
    let rtt_bs = lab.rtt_ms(&b.hosts[0].ns, server, 5);
    let rtt_ab = lab.rtt_ms(&b.hosts[0].ns, a.public, 5);
    for rtt in [rtt_as, rtt_bs, rtt_ab] {
        assert!((38.0..80.0).contains(&rtt), "the delay is real: {rtt} ms");
    }
    let floor = rtt_as + rtt_bs + rtt_ab;
    let (_l, _) = listen(&lab, "alice", &a.hosts[0]);
    for _ in 0..3 {
        let (out, _) = short_call(&lab, &b.hosts[0]);
        assert!(out.status.success(), "{}", out.log);
        let c = out.event("connected");
        assert_eq!(c["path"], "direct");
        let setup = c["setup_ms"].as_f64().unwrap();
        println!(
            "cone↔cone, 20 ms per uplink: setup_ms {setup:.1}, RTT floor {floor:.1} \
             (A–S {rtt_as:.1} + S–B {rtt_bs:.1} + A–B {rtt_ab:.1}), ratio {:.2}",
            setup / floor
        );
        // Honest numbers: a setup faster than two round trips to the server
        // would mean the delay or the measurement is wrong.
        assert!(setup > rtt_as + rtt_bs, "{setup} ms vs floor {floor} ms");
    }
}
