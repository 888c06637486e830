//! Paths under a live call (see `tests/LAB.md`): a call that starts on the
//! relay moves to direct when the direct path opens, falls back to the
//! relay when it dies, survives its NAT rebinding, keeps off the other
//! side's addresses with `--path relay`, and ends cleanly (or moves to
//! direct) when the server and its relay die. Real binaries in network
//! namespaces, `peer ping` (one `pong` per reply, with its path) followed
//! through the `--json` events. Needs root; skips with a reason elsewhere,
//! fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::lab::calls::{is_pong, seqs, Watch, T};
use tests::lab::{Lab, Nat, Site, SERVER};

/// `peer ping -c` for the calls here (one every 0.2 s: 8 s).
const PINGS: u32 = 40;
/// Slack on the bounds for the events' way through stderr and a
/// debug build sharing 2 cores.
const SLACK: Duration = Duration::from_millis(500);
/// A relayed call moves to a direct path that opened within 2 s.
const UPGRADE_WITHIN: Duration = Duration::from_secs(2);
/// A direct call whose path died is on the relay within ~3 s.
const FALLBACK_WITHIN: Duration = Duration::from_secs(3);

/// The server and two one-host sites of kind `nat`.
fn two_sites(lab: &mut Lab, nat: Nat) -> (Site, Site) {
    lab.start_server();
    let a = lab.site(nat, 1);
    let b = lab.site(nat, 1);
    (a, b)
}

/// Every seq of a `-c count` run was answered, once.
fn assert_every_ping_answered(watch: &Watch, count: u32) {
    let got = seqs(&watch.named("pong"));
    let all: Vec<u64> = (0..u64::from(count)).collect();
    assert_eq!(got, all, "every ping answered once:\n{}", watch.proc.log());
}

/// The pongs after `mark` were all on `path`.
fn assert_pongs_after(watch: &Watch, mark: &Value, path: &str) {
    let after = watch.after(mark, "pong");
    assert!(!after.is_empty(), "pongs after {mark}");
    let off: Vec<_> = after.iter().filter(|p| p["path"] != path).collect();
    assert!(off.is_empty(), "after {mark}, pongs not on {path}: {off:?}");
}

/// The direct path between two cone sites is blocked from the start: the
/// call starts on the relay. Unblocked, it moves to direct within 2 s, and
/// no ping is lost on the way.
#[test]
fn a_relayed_call_moves_to_direct_when_the_direct_path_opens() {
    let Some(mut lab) = Lab::new("upgrade") else {
        return;
    };
    let (a, b) = two_sites(&mut lab, Nat::Cone);
    let blocked = lab.block_direct(&a, &b);
    let (_l, reg) = lab.listen("alice", &a.hosts[0], &[]);
    let mut ping = lab.ping("bob", &b.hosts[0], "alice", PINGS, &[]);
    let mut watch = Watch::new(&mut ping);
    let p = watch.expect(T, |e| is_pong(e, 2));
    for early in watch.named("pong") {
        assert_eq!(early["path"], "relay", "blocked: on the relay: {early}");
        assert_eq!(early["remote_addr"], SERVER, "{early}");
    }
    let unblocked = Instant::now();
    blocked.unblock();
    let moved = watch.expect(UPGRADE_WITHIN + SLACK, |e| e["event"] == "path_changed");
    let took = unblocked.elapsed();
    assert_eq!(moved["path"], "direct", "{moved}");
    assert_eq!(moved["remote_addr"], reg["observed_addr"], "{moved}");
    assert!(watch.finish(T).success(), "{}", watch.proc.log());
    assert_every_ping_answered(&watch, PINGS);
    assert_pongs_after(&watch, &moved, "direct");
    println!(
        "upgrade: relay until pong {}, direct {took:?} after unblocking",
        p["seq"]
    );
}

/// A direct call between two cone sites loses its direct path mid-call:
/// it is on the relay within ~3 s and every ping is still answered (the
/// few sent in the gap late, never lost).
#[test]
fn a_direct_call_falls_back_to_the_relay_when_the_direct_path_dies() {
    let Some(mut lab) = Lab::new("fallback") else {
        return;
    };
    let (a, b) = two_sites(&mut lab, Nat::Cone);
    let (_l, reg) = lab.listen("alice", &a.hosts[0], &[]);
    let mut ping = lab.ping("bob", &b.hosts[0], "alice", PINGS, &[]);
    let mut watch = Watch::new(&mut ping);
    let p = watch.expect(T, |e| is_pong(e, 2));
    assert_eq!(p["path"], "direct", "{p}");
    assert_eq!(p["remote_addr"], reg["observed_addr"], "{p}");
    let cut = Instant::now();
    let _blocked = lab.block_direct(&a, &b);
    let fell = watch.expect(FALLBACK_WITHIN + SLACK, |e| e["event"] == "path_changed");
    let took = cut.elapsed();
    assert_eq!(fell["path"], "relay", "{fell}");
    assert_eq!(fell["remote_addr"], SERVER, "{fell}");
    assert!(watch.finish(T).success(), "{}", watch.proc.log());
    assert_every_ping_answered(&watch, PINGS);
    assert_pongs_after(&watch, &fell, "relay");
    // The interruption: a ping sent just after the cut waited this long.
    let worst = watch
        .named("pong")
        .iter()
        .filter_map(|p| p["rtt_ms"].as_f64())
        .fold(0.0, f64::max);
    println!("fallback: on the relay {took:?} after the cut, worst rtt {worst:.0} ms");
    let bound = (FALLBACK_WITHIN + SLACK).as_secs_f64() * 1000.0;
    assert!(worst < bound, "interruption ≤ ~3 s: worst rtt {worst} ms");
}

/// A direct call between two cone sites; alice's NAT rebinds mid-call (a
/// new public port for every flow, the old mapping forgotten). The call
/// goes on: every ping answered, no `call_ended`, no error. Afterwards the
/// server knows her new address: carol's call reaches her there, direct.
#[test]
fn a_call_survives_its_nat_rebinding_and_the_server_follows() {
    let Some(mut lab) = Lab::new("roaming") else {
        return;
    };
    let (a, b) = two_sites(&mut lab, Nat::Cone);
    let c = lab.site(Nat::Cone, 1);
    let (_l, reg) = lab.listen("alice", &a.hosts[0], &[]);
    const NEW_PORT: u16 = 47001;
    // 10 s: past the listener's 3 s server keep-alive after the rebind.
    let count = 50;
    let mut ping = lab.ping("bob", &b.hosts[0], "alice", count, &[]);
    let mut watch = Watch::new(&mut ping);
    let p = watch.expect(T, |e| is_pong(e, 2));
    assert_eq!(p["path"], "direct", "{p}");
    assert_eq!(p["remote_addr"], reg["observed_addr"], "{p}");
    assert_ne!(reg["observed_addr"], format!("{}:{NEW_PORT}", a.public));
    lab.rebind(&a, NEW_PORT);
    assert!(watch.finish(T).success(), "{}", watch.proc.log());
    assert_every_ping_answered(&watch, count);
    for bad in ["call_ended", "error"] {
        assert!(watch.named(bad).is_empty(), "{bad}: {}", watch.proc.log());
    }
    let moves: Vec<_> = watch.named("path_changed");
    println!("roaming: every ping answered; path changes {moves:?}");

    let out =
        lab.home("carol", &c.hosts[0])
            .run(Some("carol"), &["call", "alice", "--timeout", "5"], T);
    assert!(out.status.success(), "{}", out.log);
    let connected = out.event("connected");
    assert_eq!(connected["path"], "direct", "{connected}");
    assert_eq!(
        connected["remote_addr"],
        format!("{}:{NEW_PORT}", a.public),
        "the server gave carol alice's new address: {connected}"
    );
}

/// `listen --path relay`, and separately `call`/`ping --path relay`: the
/// calls connect on the relay, and neither side's NAT router ever sees a
/// packet from the other side's public address.
#[test]
fn path_relay_keeps_each_side_off_the_others_address() {
    let Some(mut lab) = Lab::new("path_relay") else {
        return;
    };
    let (a, b) = two_sites(&mut lab, Nat::Cone);
    let c = lab.site(Nat::Cone, 1);
    let counters = [
        ("a from b", lab.count_from(&a, b.public)),
        ("b from a", lab.count_from(&b, a.public)),
        ("c from b", lab.count_from(&c, b.public)),
        ("b from c", lab.count_from(&b, c.public)),
    ];
    let (_alice, _) = lab.listen("alice", &a.hosts[0], &["--path", "relay"]);
    let (_carol, _) = lab.listen("carol", &c.hosts[0], &[]);
    // bob calls the relay-only alice plainly, and carol with --path relay.
    for (callee, extra) in [("alice", &[][..]), ("carol", &["--path", "relay"][..])] {
        let mut args = vec!["call", callee, "--timeout", "5"];
        args.extend_from_slice(extra);
        let mut cmd = lab.home("bob", &b.hosts[0]).cmd(Some("bob"), &args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut call = tests::proc::Proc::spawn(&format!("bob call {callee}"), cmd);
        call.take_stdin().write_all(b"hello\n").unwrap();
        let stdout = call.read_stdout(T);
        assert!(call.wait_exit(T).success(), "{}", call.log());
        assert_eq!(stdout, b"hello\n", "{}", call.log());
        let connected = call.wait_for(Duration::from_secs(1), "connected");
        assert_eq!(connected["path"], "relay", "{callee}: {connected}");
        assert_eq!(connected["remote_addr"], SERVER, "{callee}: {connected}");

        let mut ping = lab.ping("bob", &b.hosts[0], callee, 10, extra);
        let mut watch = Watch::new(&mut ping);
        assert!(watch.finish(T).success(), "{}", watch.proc.log());
        assert_every_ping_answered(&watch, 10);
        for p in watch.named("pong") {
            assert_eq!(p["path"], "relay", "{callee}: {p}");
            assert_eq!(p["remote_addr"], SERVER, "{callee}: {p}");
        }
    }
    for (what, counter) in &counters {
        assert_eq!(counter.packets(), 0, "{what}: no packet between the two");
    }
}

/// A relayed call (symmetric ↔ symmetric: no direct path) when the server,
/// and with it the relay, is killed: the ping ends with a clear error
/// within ~15 s, never hangs. (A direct call goes on: `lab_nat`.)
#[test]
fn server_killed_a_relayed_call_without_a_direct_path_ends_with_an_error() {
    let Some(mut lab) = Lab::new("relay_killed") else {
        return;
    };
    let (a, b) = two_sites(&mut lab, Nat::Symmetric);
    let (_l, _) = lab.listen("alice", &a.hosts[0], &[]);
    let mut ping = lab.ping("bob", &b.hosts[0], "alice", 100, &[]);
    let mut watch = Watch::new(&mut ping);
    let p = watch.expect(T, |e| is_pong(e, 2));
    assert_eq!(p["path"], "relay", "{p}");
    let killed = Instant::now();
    lab.kill_server();
    let status = watch.finish(Duration::from_secs(20));
    let took = killed.elapsed();
    assert!(!status.success(), "{}", watch.proc.log());
    let errors = watch.named("error");
    assert!(!errors.is_empty(), "an error event: {}", watch.proc.log());
    assert!(
        !errors[0]["message"].as_str().unwrap_or("").is_empty(),
        "{}",
        errors[0]
    );
    println!("relay killed: ping ended after {took:?} with {}", errors[0]);
    assert!(took < Duration::from_secs(15), "ended in time: {took:?}");
}

/// A relayed call that could go direct (two cone sites, the direct path
/// blocked) when the server and its relay are killed and the direct path
/// opens: it moves to direct (probes keyed by the call itself need no
/// server) and every ping is answered.
#[test]
fn server_killed_a_relayed_call_that_can_go_direct_moves_there() {
    let Some(mut lab) = Lab::new("relay_killed_direct") else {
        return;
    };
    let (a, b) = two_sites(&mut lab, Nat::Cone);
    let blocked = lab.block_direct(&a, &b);
    let (_l, reg) = lab.listen("alice", &a.hosts[0], &[]);
    let mut ping = lab.ping("bob", &b.hosts[0], "alice", PINGS, &[]);
    let mut watch = Watch::new(&mut ping);
    let p = watch.expect(T, |e| is_pong(e, 2));
    assert_eq!(p["path"], "relay", "{p}");
    lab.kill_server();
    blocked.unblock();
    let moved = watch.expect(UPGRADE_WITHIN + SLACK, |e| e["event"] == "path_changed");
    assert_eq!(moved["path"], "direct", "{moved}");
    assert_eq!(moved["remote_addr"], reg["observed_addr"], "{moved}");
    assert!(watch.finish(T).success(), "{}", watch.proc.log());
    assert_every_ping_answered(&watch, PINGS);
    assert_pongs_after(&watch, &moved, "direct");
}
