//! Calls across real NATs (see `tests/LAB.md`): the real binaries inside
//! network namespaces, followed through their `--json` events. The NAT-type
//! grid first, then the topologies that need a world of their own: one LAN
//! behind one NAT, split segments, UDP blocked, the server killed mid-call.
//! Needs root; skips with a reason elsewhere, fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::lab::{Host, Lab, Nat, Site};
use tests::proc::{Output, Proc};

const T: Duration = Duration::from_secs(30);
/// `peer call --timeout` for calls expected to fail.
const CALL_TIMEOUT_S: u64 = 5;
/// A failing call must have ended by then (the deadline, plus process
/// start, the server handshake and a clean shutdown).
const FAIL_BY: Duration = Duration::from_secs(CALL_TIMEOUT_S + 4);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Direct,
    Unreachable,
}
use Outcome::{Direct, Unreachable};

const KINDS: [Nat; 4] = [Nat::Open, Nat::Cone, Nat::Symmetric, Nat::Cgnat];

/// What a call from a peer behind the row's NAT to one behind the column's
/// NAT achieves today. A symmetric NAT gives the caller's QUIC packets a new
/// port toward the callee, which a cone callee's pinhole (keyed to the port
/// seen by the server) does not admit; a symmetric callee's punches leave
/// from a new port too, and the caller only dials the port the server saw.
/// Only an open callee lets a symmetric caller in. No port prediction, no
/// relay yet: those cells must fail with `unreachable` within the deadline.
const GRID: [[Outcome; 4]; 4] = [
    //   callee: open    cone    symmetric    cgnat        caller:
    [Direct, Direct, Unreachable, Direct],           // open
    [Direct, Direct, Unreachable, Direct],           // cone
    [Direct, Unreachable, Unreachable, Unreachable], // symmetric
    [Direct, Direct, Unreachable, Direct],           // cgnat
];

/// One cell's call, running.
struct Cell {
    caller: Nat,
    callee: Nat,
    proc: Proc,
    started: Instant,
}

/// Every NAT kind calls every NAT kind (two sites per kind, so no two peers
/// share a NAT), all calls at once in one world; then the whole grid is
/// printed and checked, so a failure shows every cell.
#[test]
fn nat_grid_every_kind_calls_every_kind() {
    let Some(mut lab) = Lab::new("nat_grid") else {
        return;
    };
    lab.start_server();
    let callees: Vec<Site> = KINDS.iter().map(|k| lab.site(*k, 1)).collect();
    let callers: Vec<Site> = KINDS.iter().map(|k| lab.site(*k, 1)).collect();
    let mut listeners = vec![];
    let mut observed = HashMap::new();
    for site in &callees {
        let (l, reg) = listen(&lab, site.nat.as_str(), &site.hosts[0]);
        let addr = reg["observed_addr"].as_str().unwrap().to_owned();
        assert_eq!(
            ip_of(&addr),
            site.public.to_string(),
            "{}: the server sees the NAT's public address, not {}",
            site.nat.as_str(),
            site.hosts[0].addr
        );
        observed.insert(site.nat, addr);
        listeners.push(l);
    }
    let mut cells = vec![];
    for from in &callers {
        for to in &callees {
            let (x, y) = (from.nat.as_str(), to.nat.as_str());
            let me = format!("{x}-to-{y}");
            let timeout = CALL_TIMEOUT_S.to_string();
            let mut cmd = lab
                .home(&me, &from.hosts[0])
                .cmd(Some(&me), &["call", y, "--timeout", &timeout]);
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut proc = Proc::spawn(&format!("{me} call"), cmd);
            proc.take_stdin().write_all(b"hello\n").unwrap();
            cells.push(Cell {
                caller: from.nat,
                callee: to.nat,
                proc,
                started: Instant::now(),
            });
        }
    }
    let mut table = String::from("caller \\ callee | open | cone | symmetric | cgnat\n");
    let mut wrong = vec![];
    for (i, mut cell) in cells.into_iter().enumerate() {
        let expected = GRID[i / 4][i % 4];
        let stdout = cell.proc.read_stdout(T);
        let ok = cell.proc.wait_exit(T).success();
        let took = cell.started.elapsed();
        let events = cell.proc.drain_events();
        let event = |name: &str| events.iter().find(|e| e["event"] == name);
        let (got, shown) = match (event("connected"), event("error")) {
            (Some(c), _) => {
                let remote = c["remote_addr"].as_str().unwrap_or("?");
                if remote != observed[&cell.callee] {
                    wrong.push(format!(
                        "{cell_name}: connected to {remote}, not the callee's public address {}",
                        observed[&cell.callee],
                        cell_name = name(&cell)
                    ));
                }
                if stdout != b"hello\n" || !ok {
                    wrong.push(format!("{}: echo {stdout:?}, exit ok {ok}", name(&cell)));
                }
                let path = c["path"].as_str().unwrap_or("?").to_owned();
                let shown = format!("{path} {:.0} ms", c["setup_ms"].as_f64().unwrap_or(-1.0));
                (if path == "direct" { Some(Direct) } else { None }, shown)
            }
            (None, Some(e)) if e["kind"] == "unreachable" => {
                let msg = e["message"].as_str().unwrap_or("");
                let public = observed[&cell.callee].clone();
                if !msg.contains(&ip_of(&public)) || ok || took > FAIL_BY {
                    wrong.push(format!(
                        "{}: after {took:?} (exit ok {ok}): {msg}",
                        name(&cell)
                    ));
                }
                (
                    Some(Unreachable),
                    format!("unreachable in {:.1} s", took.as_secs_f64()),
                )
            }
            _ => (None, format!("?? {}", cell.proc.log())),
        };
        if got != Some(expected) {
            wrong.push(format!(
                "{}: expected {expected:?}, got {shown}",
                name(&cell)
            ));
        }
        if i % 4 == 0 {
            table.push_str(cell.caller.as_str());
        }
        table.push_str(&format!(" | {shown}"));
        if i % 4 == 3 {
            table.push('\n');
        }
    }
    println!("NAT grid (call --timeout {CALL_TIMEOUT_S}):\n{table}");
    assert!(wrong.is_empty(), "{table}\n{}", wrong.join("\n"));
}

fn name(cell: &Cell) -> String {
    format!("{} → {}", cell.caller.as_str(), cell.callee.as_str())
}

/// The IP part of `IP:PORT`.
fn ip_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(ip, _)| ip)
        .unwrap_or(addr)
        .to_owned()
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
fn short_call(lab: &Lab, host: &Host) -> (Output, Duration) {
    let start = Instant::now();
    let timeout = CALL_TIMEOUT_S.to_string();
    let out = lab
        .home("bob", host)
        .run(Some("bob"), &["call", "alice", "--timeout", &timeout], T);
    (out, start.elapsed())
}

#[test]
fn same_lan_behind_one_nat_is_direct_over_the_lan() {
    let Some(mut lab) = Lab::new("same_lan") else {
        return;
    };
    lab.start_server();
    let site = lab.site(Nat::Cone, 2);
    let (_l, reg) = listen(&lab, "alice", &site.hosts[0]);
    assert_eq!(
        ip_of(reg["observed_addr"].as_str().unwrap()),
        site.public.to_string()
    );
    let (out, _) = short_call(&lab, &site.hosts[1]);
    assert!(out.status.success(), "{}", out.log);
    let c = out.event("connected");
    assert_eq!(c["path"], "direct");
    assert_eq!(
        ip_of(c["remote_addr"].as_str().unwrap()),
        site.hosts[0].addr.to_string(),
        "the LAN address wins (the NAT does not hairpin): {c}"
    );
}

/// Two LAN segments behind one symmetric NAT that neither routes between
/// them nor hairpins: no path at all. The call says so in time, never hangs.
#[test]
fn symmetric_to_symmetric_on_split_segments_is_unreachable_not_a_hang() {
    let Some(mut lab) = Lab::new("symmetric_split") else {
        return;
    };
    lab.start_server();
    let site = lab.split_symmetric_site();
    let (_l, _) = listen(&lab, "alice", &site.hosts[0]);
    let (out, took) = short_call(&lab, &site.hosts[1]);
    assert!(!out.status.success(), "{}", out.log);
    assert_eq!(out.error_kind(), Some("unreachable"), "{}", out.log);
    let msg = out.event("error")["message"].as_str().unwrap();
    for tried in [site.public, site.hosts[0].addr] {
        assert!(
            msg.contains(&tried.to_string()),
            "says what was tried: {msg}"
        );
    }
    assert!(took < FAIL_BY, "within the deadline: {took:?}");
}

#[test]
fn udp_blocked_peer_says_server_unreachable_and_callers_get_offline() {
    let Some(mut lab) = Lab::new("udp_blocked") else {
        return;
    };
    lab.start_server();
    let blocked = lab.site(Nat::UdpBlocked, 1);
    let open = lab.site(Nat::Open, 1);
    // alice registered once from an open network (her laptop moved since),
    // so the server knows her name.
    let (mut l, _) = listen(&lab, "alice", &open.hosts[0]);
    l.terminate(T);
    drop(l);
    // Behind the UDP-blocking router her listen keeps failing, clearly.
    let alice = lab.home("alice", &blocked.hosts[0]);
    let started = Instant::now();
    let mut l = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    let e = l.wait_error(Duration::from_secs(15), "server_unreachable");
    assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{e}");
    let first = started.elapsed();
    l.wait_error(Duration::from_secs(15), "server_unreachable");
    assert!(l.drain("registered").is_empty(), "{}", l.log());
    // A one-shot command gives up with the same error instead of hanging.
    let started = Instant::now();
    let out = alice.run(None, &["lookup", "bob"], T);
    assert_eq!(out.error_kind(), Some("server_unreachable"), "{}", out.log);
    assert!(!out.status.success());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "lookup gave up after {took:?}"
    );
    // Her callers see her offline.
    let (out, _) = short_call(&lab, &open.hosts[0]);
    assert_eq!(out.error_kind(), Some("offline"), "{}", out.log);
    println!(
        "udp-blocked: first server_unreachable after {first:?}, lookup gave up after {took:?}"
    );
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
    let first = ping.wait_event(T, |e| e["event"] == "pong" && e["seq"] == 2);
    assert_eq!(first["path"], "direct");
    lab.kill_server();
    assert!(ping.wait_exit(T).success(), "{}", ping.log());
    let pongs = ping.drain("pong");
    assert_eq!(pongs.len(), 9, "seq 3..11 after the kill: {}", ping.log());
    assert!(pongs.iter().all(|p| p["path"] == "direct"));
}
