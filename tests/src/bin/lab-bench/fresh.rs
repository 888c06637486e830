//! A fresh `peer call` as a user runs it (issue 14), cone ↔ cone with 20 ms
//! one-way per uplink: `printf 'hi\n' | peer call alice` against
//! `listen --echo`, from the process's spawn to the echo on its stdout
//! (against the consent-first floor 2·RTT(A,S) + RTT(S,B) + 2·RTT(A,B):
//! the server handshake with the request riding on it, the consent, the
//! peer handshake, the echo) and from the echo to the process's exit (goal
//! ≤ RTT(A,B) + 20 ms); then the same with alice accepting bob without
//! being asked (`--accept-from bob`, bob's key pinned: the pre-approved
//! fast path), whose `setup_ms` has the floor RTT(A,S) + RTT(A,B). The
//! startup of a `peer` process (`peer id`: spawn, identity load, exit)
//! is reported beside.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tests::lab::{Lab, Nat};
use tests::proc::{PeerHome, Proc};

/// Longest one fresh call may take, start to exit.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// What one run measured, milliseconds, each list sorted.
pub struct Fresh {
    /// RTT(A,S), RTT(S,B), RTT(A,B).
    pub rtts: [f64; 3],
    /// Spawn → echo, consent-first.
    pub first_echo: Vec<f64>,
    /// Echo → exit, consent-first.
    pub exit_after: Vec<f64>,
    /// Spawn → echo, pre-approved.
    pub first_echo_fast: Vec<f64>,
    /// `setup_ms` of the pre-approved calls.
    pub setup_fast: Vec<f64>,
    /// `peer id`, spawn to exit.
    pub startup: Vec<f64>,
    /// Calls that did not echo (of each kind).
    pub failed: usize,
}

/// One `printf 'hi\n' | peer call alice`: (spawn → echo, echo → exit,
/// its `setup_ms`), or `None` if it echoed nothing.
fn one_call(bob: &PeerHome) -> Option<(f64, f64, f64)> {
    let mut cmd = bob.cmd(Some("bob"), &["call", "alice", "--timeout", "5"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let spawned = Instant::now();
    let mut p = Proc::spawn("bob call alice", cmd);
    let mut stdin = p.take_stdin();
    let _ = stdin.write_all(b"hi\n");
    drop(stdin);
    let mut out = p.take_stdout();
    let (tx, rx) = mpsc::channel();
    // Stdout ends when the process does (nothing else holds it).
    std::thread::spawn(move || {
        let (mut got, mut buf, mut echoed) = (Vec::new(), [0u8; 64], None);
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if echoed.is_none() && got.ends_with(b"hi\n") {
                echoed = Some(Instant::now());
            }
        }
        let _ = tx.send((echoed, Instant::now()));
    });
    let (echoed, ended) = rx.recv_timeout(RUN_LIMIT).ok()?;
    let status = p.wait_exit(Duration::from_secs(5));
    let echoed = echoed.filter(|_| status.success())?;
    let setup = p
        .drain_events()
        .iter()
        .find(|e| e["event"] == "connected")
        .and_then(|c| c["setup_ms"].as_f64())
        .unwrap_or(f64::NAN);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Some((
        ms(echoed - spawned),
        ms(ended.saturating_duration_since(echoed)),
        setup,
    ))
}

/// `peer id`'s spawn-to-exit time.
fn startup(bob: &PeerHome) -> f64 {
    let t = Instant::now();
    let out = bob.run(Some("bob"), &["id"], RUN_LIMIT);
    assert!(out.status.success(), "peer id failed: {}", out.log);
    t.elapsed().as_secs_f64() * 1e3
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// One run in `lab` (delay set, server started), `calls` of each kind.
pub fn measure(lab: &mut Lab, calls: usize) -> Fresh {
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    let server = Ipv4Addr::new(198, 18, 0, 2);
    let rtts = [
        lab.rtt_ms(&b.hosts[0].ns, server, 10),
        lab.rtt_ms(&a.hosts[0].ns, server, 10),
        lab.rtt_ms(&b.hosts[0].ns, a.public, 10),
    ];
    let bob = lab.home("bob", &b.hosts[0]);
    let mut f = Fresh {
        rtts,
        first_echo: vec![],
        exit_after: vec![],
        first_echo_fast: vec![],
        setup_fast: vec![],
        startup: (0..calls).map(|_| startup(&bob)).collect(),
        failed: 0,
    };
    {
        let (_l, _) = lab.listen("alice", &a.hosts[0], &[]);
        for _ in 0..calls {
            match one_call(&bob) {
                Some((echo, exit, _)) => {
                    f.first_echo.push(echo);
                    f.exit_after.push(exit);
                }
                None => f.failed += 1,
            }
        }
    }
    // alice pins bob's key and accepts him without being asked.
    let fp = String::from_utf8_lossy(&bob.run(Some("bob"), &["id"], RUN_LIMIT).stdout)
        .trim()
        .to_owned();
    let alice = lab.home("alice", &a.hosts[0]);
    let known = alice.dir.join("peer/known_peers");
    std::fs::create_dir_all(alice.dir.join("peer")).expect("alice's config dir");
    std::fs::write(&known, format!("bob {fp}\n")).expect("alice's known_peers");
    let (_l, _) = lab.listen("alice", &a.hosts[0], &["--accept-from", "bob"]);
    for _ in 0..calls {
        match one_call(&bob) {
            Some((echo, _, setup)) => {
                f.first_echo_fast.push(echo);
                f.setup_fast.push(setup);
            }
            None => f.failed += 1,
        }
    }
    f.first_echo = sorted(f.first_echo);
    f.exit_after = sorted(f.exit_after);
    f.first_echo_fast = sorted(f.first_echo_fast);
    f.setup_fast = sorted(f.setup_fast);
    f.startup = sorted(f.startup);
    f
}

/// Prints the table.
pub fn print(f: &Fresh) {
    let [as_, sb, ab] = f.rtts;
    let med = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            crate::percentile(v, 0.5)
        }
    };
    let p95 = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            crate::percentile(v, 0.95)
        }
    };
    println!(
        "\n| fresh `peer call` (cone ↔ cone, RTT(A,S) {as_:.1}, RTT(S,B) {sb:.1}, RTT(A,B) {ab:.1} ms) | median | p95 | floor | median ÷ floor | goal | met |"
    );
    println!("|---|---|---|---|---|---|---|");
    let rows: [(&str, &[f64], f64, &str, f64); 3] = [
        (
            "spawn → first echo, consent-first",
            &f.first_echo,
            2.0 * as_ + sb + 2.0 * ab,
            "≤ 1.1× floor",
            1.1,
        ),
        (
            "spawn → first echo, pre-approved (`--accept-from`, key pinned)",
            &f.first_echo_fast,
            2.0 * as_ + 2.0 * ab,
            "≤ 1.1× floor",
            1.1,
        ),
        (
            "pre-approved `setup_ms`",
            &f.setup_fast,
            as_ + ab,
            "≤ 1.1× floor",
            1.1,
        ),
    ];
    for (what, v, floor, goal, ratio_goal) in rows {
        let ratio = med(v) / floor;
        println!(
            "| {what} | {:.1} | {:.1} | {floor:.1} | {ratio:.2} | {goal} | {} |",
            med(v),
            p95(v),
            if ratio <= ratio_goal { "met" } else { "missed" }
        );
    }
    let exit = med(&f.exit_after);
    println!(
        "| echo → process exit | {exit:.1} | {:.1} | | | ≤ RTT(A,B) + 20 = {:.1} ms | {} |",
        p95(&f.exit_after),
        ab + 20.0,
        if exit <= ab + 20.0 { "met" } else { "missed" }
    );
    println!(
        "| `peer id` startup (spawn via `ip netns exec`, identity load, exit) | {:.1} | {:.1} | | | | |",
        med(&f.startup),
        p95(&f.startup)
    );
    if f.failed > 0 {
        println!("\n{} fresh calls echoed nothing", f.failed);
    }
}
