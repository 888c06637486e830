//! Keep-alives across NATs that forget fast (see `tests/LAB.md`): both NATs
//! drop a UDP mapping after 15 s without traffic, and the peers' keep-alives
//! (server link every 3 s, peer connections every 5 s, `peer/src/config.rs`)
//! must hold their mappings open through an idle minute. One world, one
//! minute: the listener's idle minute and the call's idle minute are the same.
//! Needs root; skips with a reason elsewhere, fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use tests::lab::udp::Probe;
use tests::lab::{Lab, Nat};
use tests::proc::Proc;

const T: Duration = Duration::from_secs(30);
const NAT_UDP_TIMEOUT_S: u32 = 15;
const IDLE: Duration = Duration::from_secs(60);

/// Lines a process prints on stdout, through a channel (bounded waits).
fn stdout_lines(p: &mut Proc) -> Receiver<String> {
    let out = p.take_stdout();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// NATs that forget a UDP mapping after 15 s of silence: a listener idle for
/// 60 s can still be called, and a call idle for 60 s still carries data.
/// In the same minute, a control shows the NATs really forget: a plain UDP
/// flow's mapping still lets an answer in after 10 s, but not after 20 s.
#[test]
fn keepalives_hold_nat_mappings_open_for_an_idle_minute() {
    let Some(mut lab) = Lab::new("keepalive") else {
        return;
    };
    lab.start_server();
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    for router in a.routers.iter().chain(&b.routers) {
        lab.udp_timeout(router, NAT_UDP_TIMEOUT_S);
    }
    let echo = SocketAddr::from(([198, 18, 0, 2], 3478));
    lab.udp_server(&lab.server_ns(), echo, None);

    let alice = lab.home("alice", &a.hosts[0]);
    let mut l = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    let reg = l.wait_for(T, "registered");

    let bob = lab.home("bob", &b.hosts[0]);
    let mut cmd = bob.cmd(Some("bob"), &["call", "alice"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut call = Proc::spawn("bob call", cmd);
    let mut stdin = call.take_stdin();
    let lines = stdout_lines(&mut call);
    stdin.write_all(b"one\n").unwrap();
    assert_eq!(lines.recv_timeout(T).unwrap(), "one");
    assert_eq!(call.wait_for(T, "connected")["path"], "direct");

    // The control flows, from alice's machine, during the idle minute.
    let late = |secs: u64| {
        lab.udp_probe(
            &a.hosts[0].ns,
            &Probe {
                late: Some(Duration::from_secs(secs)),
                wait: Duration::from_secs(secs + 2),
                ..Probe::to(&[echo])
            },
        )
    };
    let (before, after) = (late(10), late(20));

    // The point of the test is the idle minute itself: nothing to wait for.
    std::thread::sleep(IDLE);

    let (before, after) = (before.answers(), after.answers());
    assert!(before.seen_by(echo).is_some() && after.seen_by(echo).is_some());
    assert!(
        before.got("late 10000"),
        "control: a mapping lives 10 s: {before:?}"
    );
    assert!(
        !after.got("late 20000"),
        "control: the NAT forgets a mapping idle for 20 s: {after:?}"
    );

    // alice's server link held: no loss, no second registration.
    let events = l.drain_events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "rendezvous_lost" || e["event"] == "registered"),
        "the listener's server link stayed up: {events:?}"
    );
    // She is still callable at the same public address.
    let out =
        lab.home("carol", &b.hosts[0])
            .run(Some("carol"), &["call", "alice", "--timeout", "5"], T);
    assert!(
        out.status.success(),
        "a listener idle 60 s is callable: {}",
        out.log
    );
    let c = out.event("connected");
    assert_eq!(c["path"], "direct");
    assert_eq!(c["remote_addr"], reg["observed_addr"]);
    // And the idle call still carries data both ways.
    stdin.write_all(b"two\n").unwrap();
    let echoed = lines.recv_timeout(Duration::from_secs(10));
    assert_eq!(
        echoed.as_deref(),
        Ok("two"),
        "the call idle 60 s still carries data: {}",
        call.log()
    );
    drop(stdin);
    assert!(call.wait_exit(T).success(), "{}", call.log());
}
