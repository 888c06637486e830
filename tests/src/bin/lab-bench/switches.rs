//! Path switches under a live call: a `peer ping -i 0.1` between two cone
//! sites whose direct path starts blocked (the call starts on the relay),
//! then is opened and cut again, `CYCLES` times. Measured: from the
//! unblock to `path_changed` (direct), and the interruption on fallback —
//! the longest a ping sent after the cut waited for its answer (its
//! `rtt_ms`: the pings in the gap are answered late, not lost).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use tests::lab::calls::{Watch, T};
use tests::lab::{Lab, Nat};

/// Open–cut cycles per run.
const CYCLES: usize = 3;
/// Longest wait for a switch (the goals are 2 s and 3 s).
const SWITCH_LIMIT: Duration = Duration::from_secs(10);
/// Pongs to wait for after a switch before the next change.
const SETTLE_PONGS: u64 = 10;

/// What one run measured, milliseconds.
pub struct Switches {
    /// Unblock → `path_changed` to direct, per cycle.
    pub upgrade_ms: Vec<f64>,
    /// Cut → `path_changed` to the relay, per cycle.
    pub fallback_ms: Vec<f64>,
    /// Per cut: the worst `rtt_ms` of the pings answered after it.
    pub interruption_ms: Vec<f64>,
    /// Pings sent and answered.
    pub pings: (u64, u64),
}

/// The highest `seq` of a pong seen so far.
fn last_seq(w: &Watch) -> u64 {
    w.named("pong")
        .iter()
        .filter_map(|p| p["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Waits for the pong `n` after the last one seen.
fn pongs_after(w: &mut Watch, n: u64) {
    let want = last_seq(w) + n;
    w.expect(T, |e| {
        e["event"] == "pong" && e["seq"].as_u64() >= Some(want)
    });
}

/// Waits for `path_changed` to `path`; how long after `since` it came.
fn switched(w: &mut Watch, path: &str, since: Instant) -> f64 {
    let at = RefCell::new(None);
    w.expect(SWITCH_LIMIT, |e| {
        let hit = e["event"] == "path_changed" && e["path"] == path;
        if hit {
            *at.borrow_mut() = Some(Instant::now());
        }
        hit
    });
    let at = at.into_inner().unwrap_or_else(Instant::now);
    at.duration_since(since).as_secs_f64() * 1e3
}

/// One run in `lab` (delay set, server started).
pub fn measure(lab: &mut Lab) -> Switches {
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    let mut blocked = Some(lab.block_direct(&a, &b));
    let (_l, _) = lab.listen("alice", &a.hosts[0], &[]);
    let count = "1000";
    let mut ping = lab.home("bob", &b.hosts[0]).spawn(
        "bob ping alice",
        Some("bob"),
        &["ping", "alice", "-c", count, "-i", "0.1"],
    );
    let mut w = Watch::new(&mut ping);
    pongs_after(&mut w, 3);
    let mut s = Switches {
        upgrade_ms: vec![],
        fallback_ms: vec![],
        interruption_ms: vec![],
        pings: (0, 0),
    };
    for _ in 0..CYCLES {
        let opened = Instant::now();
        if let Some(guard) = blocked.take() {
            guard.unblock();
        }
        s.upgrade_ms.push(switched(&mut w, "direct", opened));
        pongs_after(&mut w, SETTLE_PONGS);
        let before = w.seen.len();
        let cut = Instant::now();
        blocked = Some(lab.block_direct(&a, &b));
        s.fallback_ms.push(switched(&mut w, "relay", cut));
        pongs_after(&mut w, SETTLE_PONGS);
        let worst = w.seen[before..]
            .iter()
            .filter(|e| e["event"] == "pong")
            .filter_map(|e| e["rtt_ms"].as_f64())
            .fold(0.0, f64::max);
        s.interruption_ms.push(worst);
    }
    let sent = last_seq(&w) + 1;
    let answered = w.named("pong").len() as u64;
    drop(w);
    ping.kill();
    s.pings = (sent, answered);
    s
}

/// `values` as `a / b / c ms`.
pub fn list(values: &[f64]) -> String {
    let v: Vec<String> = values.iter().map(|x| format!("{x:.0}")).collect();
    format!("{} ms", v.join(" / "))
}

/// The largest of `values` (NaN when empty).
pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// Prints the switch table.
pub fn print(s: &Switches) {
    println!("\n| path switch (cone ↔ cone, 20 ms one-way per uplink, `peer ping -i 0.1`, {CYCLES} cycles) | each | worst | goal | met |");
    println!("|---|---|---|---|---|");
    let rows: [(&str, &[f64], f64); 3] = [
        (
            "blocked direct path opened → `path_changed` (direct)",
            &s.upgrade_ms,
            2000.0,
        ),
        (
            "direct path cut → `path_changed` (relay)",
            &s.fallback_ms,
            3000.0,
        ),
        (
            "interruption on fallback (worst ping rtt after the cut)",
            &s.interruption_ms,
            3000.0,
        ),
    ];
    for (what, values, goal) in rows {
        let worst = max(values);
        println!(
            "| {what} | {} | {worst:.0} ms | ≤ {goal:.0} ms | {} |",
            list(values),
            if worst <= goal { "met" } else { "missed" }
        );
    }
    let (sent, answered) = s.pings;
    println!("\npings answered: {answered} of the {sent} sent (the last maybe still in flight)");
}
