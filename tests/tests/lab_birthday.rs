//! Birthday attempts in the NAT lab (see `tests/LAB.md`): a symmetric NAT
//! (`masquerade fully-random`: a new public port per destination, from
//! 1024–65535) and a port-restricted cone. The call starts on the relay
//! and moves to a direct path within 3 s of `connected`, whichever side is
//! symmetric, without losing a ping. Two symmetric NATs make no attempt
//! (no extra sockets); with the direct path cut, the attempt stops within
//! its budget and the call stays on the relay. Real binaries, `peer ping`
//! followed through its `--json` events. Needs root; skips with a reason
//! elsewhere, fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tests::lab::calls::{seqs, Watch, T};
use tests::lab::{Lab, Nat, Site};

/// Tries per direction, and how many must move in time.
const TRIES: usize = 10;
const MUST_MOVE: usize = 9;
/// The bound from `connected` to direct, plus the events' way
/// through stderr on a shared debug build.
const MOVE_WITHIN: Duration = Duration::from_millis(3_500);
/// Pings per try (one every 0.2 s): the move happens in the middle.
const PINGS: u32 = 25;

/// One call from `caller` to `callee` (already listening as `alice`):
/// how long from `connected` to the `path_changed` of the birthday, if
/// there was one in time; every ping answered either way.
fn one_try(lab: &Lab, caller: &Site, try_no: usize) -> Option<Duration> {
    let who = format!("bob{try_no}");
    let mut ping = lab.ping(&who, &caller.hosts[0], "alice", PINGS, &[]);
    let mut watch = Watch::new(&mut ping);
    let connected = watch.expect(T, |e| e["event"] == "connected");
    let at = Instant::now();
    if connected["path"] == "direct" {
        // A direct path from the start would need the symmetric NAT to
        // pick the very port the cone side pings: counted, and said.
        println!("try {try_no}: direct from the start: {connected}");
        assert!(watch.finish(T).success(), "{}", watch.proc.log());
        return Some(Duration::ZERO);
    }
    assert_eq!(connected["path"], "relay", "{connected}");
    let moved = watch
        .wait(MOVE_WITHIN, |e| e["event"] == "path_changed")
        .ok();
    let took = at.elapsed();
    assert!(watch.finish(T).success(), "{}", watch.proc.log());
    let all: Vec<u64> = (0..u64::from(PINGS)).collect();
    assert_eq!(
        seqs(&watch.named("pong")),
        all,
        "every ping answered once:\n{}",
        watch.proc.log()
    );
    let moved = moved?;
    assert_eq!(moved["path"], "direct", "{moved}");
    assert_eq!(moved["reason"], "birthday", "{moved}");
    let report = watch.named("birthday");
    assert!(
        report.iter().all(|b| b["outcome"] == "direct"),
        "{report:?}"
    );
    // After the move every pong is direct.
    let after = watch.after(&moved, "pong");
    let last = after.last().map(|p| p["path"].clone());
    assert_eq!(
        last.as_ref().and_then(|p| p.as_str()),
        Some("direct"),
        "{after:?}"
    );
    Some(took)
}

/// Symmetric ↔ cone, each way: ≥ 9 of 10 calls move to direct in time.
#[test]
fn a_symmetric_and_a_cone_nat_move_from_the_relay_to_direct() {
    let Some(mut lab) = Lab::new("birthday") else {
        return;
    };
    lab.start_server();
    for (caller_nat, callee_nat) in [(Nat::Symmetric, Nat::Cone), (Nat::Cone, Nat::Symmetric)] {
        let callee = lab.site(callee_nat, 1);
        let caller = lab.site(caller_nat, 1);
        let mut times = vec![];
        for t in 0..TRIES {
            // A fresh listener (a fresh socket) per try: the pinholes an
            // attempt's guesses leave in the cone's NAT (for its UDP
            // timeout) could let the next try's mappings in without one.
            let (mut listener, _reg) = lab.listen("alice", &callee.hosts[0], &[]);
            times.push(one_try(&lab, &caller, t));
            listener.kill();
        }
        let moved: Vec<Duration> = times.iter().flatten().copied().collect();
        println!(
            "{} → {}: {}/{TRIES} moved, times {:?}",
            caller_nat.as_str(),
            callee_nat.as_str(),
            moved.len(),
            moved
        );
        assert!(
            moved.len() >= MUST_MOVE,
            "{} → {}: only {}/{TRIES} moved in time: {times:?}",
            caller_nat.as_str(),
            callee_nat.as_str(),
            moved.len(),
        );
    }
}

/// How many sockets a process has open (its `/proc/PID/fd` links to
/// `socket:`).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Symmetric ↔ symmetric: no attempt, no extra sockets, relay throughout.
#[test]
fn two_symmetric_nats_make_no_attempt_and_stay_on_the_relay() {
    let Some(mut lab) = Lab::new("birthday_ss") else {
        return;
    };
    lab.start_server();
    let callee = lab.site(Nat::Symmetric, 1);
    let caller = lab.site(Nat::Symmetric, 1);
    // With the mapping checks' verdicts in the logs: both sides must know
    // they are symmetric (an unknown side makes no attempt either, which
    // would pass for the wrong reason).
    let traced = |who: &str, host, args: &[&str]| {
        let mut cmd = lab.home(who, host).cmd(Some(who), args);
        cmd.env("RUST_LOG", "peer::mapping=debug");
        tests::proc::Proc::spawn(who, cmd)
    };
    let mut listener = traced("alice", &callee.hosts[0], &["listen", "--echo"]);
    listener.wait_for(T, "registered");
    let mut ping = traced(
        "bob",
        &caller.hosts[0],
        &["ping", "alice", "-c", "15", "-i", "0.2"],
    );
    let mut watch = Watch::new(&mut ping);
    let connected = watch.expect(T, |e| e["event"] == "connected");
    assert_eq!(connected["path"], "relay");
    // Past the point where an attempt would have opened its sockets.
    watch.expect(T, |e| e["event"] == "pong" && e["seq"] == 8);
    let (caller_sockets, callee_sockets) =
        (sockets_of(watch.proc.pid()), sockets_of(listener.pid()));
    assert!(watch.finish(T).success(), "{}", watch.proc.log());
    assert!(watch.named("birthday").is_empty(), "no attempt");
    assert!(watch.named("path_changed").is_empty());
    assert!(watch.named("pong").iter().all(|p| p["path"] == "relay"));
    assert!(
        caller_sockets < 16 && callee_sockets < 16,
        "no extra sockets: caller {caller_sockets}, callee {callee_sockets}"
    );
    for (who, log) in [("caller", watch.proc.log()), ("callee", listener.log())] {
        assert!(
            log.contains("mapping=\"symmetric\""),
            "the {who} knew it was symmetric:\n{log}"
        );
    }
}

/// Symmetric caller ↔ cone callee with the direct path cut: the attempt
/// spends its budget (3,000 guesses in ≤ 3 s), reports it, and the call
/// stays on the relay without losing a ping.
#[test]
fn with_the_direct_path_cut_the_attempt_stops_within_its_budget() {
    let Some(mut lab) = Lab::new("birthday_budget") else {
        return;
    };
    lab.start_server();
    let callee = lab.site(Nat::Cone, 1);
    let caller = lab.site(Nat::Symmetric, 1);
    let _blocked = lab.block_direct(&caller, &callee);
    let (mut listener, _reg) = lab.listen("alice", &callee.hosts[0], &[]);
    let mut ping = lab.ping("bob", &caller.hosts[0], "alice", 30, &[]);
    let mut watch = Watch::new(&mut ping);
    watch.expect(T, |e| e["event"] == "connected");
    let ended = watch.expect(Duration::from_secs(6), |e| e["event"] == "birthday");
    assert_eq!(ended["outcome"], "relay", "{ended}");
    assert_eq!(ended["role"], "open", "{ended}");
    assert_eq!(ended["sockets"], 256, "{ended}");
    assert!(watch.finish(T).success(), "{}", watch.proc.log());
    let all: Vec<u64> = (0..30).collect();
    assert_eq!(seqs(&watch.named("pong")), all, "{}", watch.proc.log());
    assert!(watch.named("pong").iter().all(|p| p["path"] == "relay"));
    assert!(watch.named("path_changed").is_empty());
    // The cone side's report: the whole budget, within its time.
    let spray = listener.wait_for(T, "birthday");
    assert_eq!(spray["outcome"], "relay", "{spray}");
    assert_eq!(spray["probes"], 3000, "{spray}");
    let ms = spray["elapsed_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(ms <= 3_500.0, "{spray}");
}
