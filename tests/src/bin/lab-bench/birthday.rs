//! Birthday attempts (issue 15): `peer ping` calls between a symmetric
//! NAT (`masquerade fully-random`) and a port-restricted cone, each way,
//! with the lab's delay. Measured per call: from `connected` (on the
//! relay) to the `path_changed` of the birthday, as the caller's events
//! arrive here; and from the two sides' `birthday` events the guessed
//! pings sent (the cone side) and the sockets opened (the symmetric side).
//! Every call has a fresh listener, so the calls are independent.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use tests::lab::calls::{Watch, T};
use tests::lab::{Host, Lab, Nat};

use super::percentile;

/// Longest wait for the move (the attempt's budget is 3 s).
const MOVE_LIMIT: Duration = Duration::from_secs(6);

/// One direction's calls.
pub struct Direction {
    pub name: &'static str,
    pub calls: usize,
    /// `connected` → `path_changed` (birthday), ms, of the calls that
    /// moved (0 for one direct from the start).
    pub moved_ms: Vec<f64>,
    /// Calls direct from the start (a pinhole an earlier attempt's guesses
    /// left in the cone's NAT, for the NAT's UDP timeout, happened to be
    /// the symmetric side's new port).
    pub started_direct: usize,
    /// The cone side's guessed pings, per call that reported them.
    pub probes: Vec<f64>,
    /// The symmetric side's sockets, per call that reported them.
    pub sockets: Vec<f64>,
}

/// Both directions, `calls` calls each.
pub fn measure(lab: &mut Lab, calls: usize) -> Vec<Direction> {
    let ways = [
        ("symmetric caller → cone callee", Nat::Symmetric, Nat::Cone),
        ("cone caller → symmetric callee", Nat::Cone, Nat::Symmetric),
    ];
    ways.iter()
        .map(|&(name, caller_nat, callee_nat)| {
            let callee = lab.site(callee_nat, 1);
            let caller = lab.site(caller_nat, 1);
            let mut d = Direction {
                name,
                calls,
                moved_ms: vec![],
                probes: vec![],
                sockets: vec![],
                started_direct: 0,
            };
            for i in 0..calls {
                one_call(lab, &callee.hosts[0], &caller.hosts[0], i, &mut d);
            }
            d
        })
        .collect()
}

/// One call from `caller` to a fresh listener on `callee` (a fresh
/// socket: the pinholes the last attempt's guesses left in a cone's NAT,
/// for its UDP timeout, would let the next call's mappings in, so the
/// calls would not be independent).
fn one_call(lab: &Lab, callee: &Host, caller: &Host, i: usize, d: &mut Direction) {
    let mut l = lab
        .home("alice", callee)
        .spawn("alice", Some("alice"), &["listen", "--echo"]);
    l.wait_for(Duration::from_secs(30), "registered");
    let who = format!("bob{i}");
    let mut p = lab.ping(&who, caller, "alice", 10, &[]);
    let mut w = Watch::new(&mut p);
    let c = w.expect(T, |e| e["event"] == "connected");
    let connected = Instant::now();
    let took = if c["path"] == "direct" {
        d.started_direct += 1;
        Some(0.0)
    } else {
        let at = RefCell::new(None);
        let moved = w.wait(MOVE_LIMIT, |e| {
            let hit = e["event"] == "path_changed" && e["reason"] == "birthday";
            if hit {
                *at.borrow_mut() = Some(Instant::now());
            }
            hit
        });
        moved.is_ok().then(|| {
            let at = at.into_inner().unwrap_or_else(Instant::now);
            (at - connected).as_secs_f64() * 1000.0
        })
    };
    d.moved_ms.extend(took);
    eprintln!(
        "lab-bench: {} #{i}: {}",
        d.name,
        took.map_or("did not move".into(), |m| format!("{m:.0} ms"))
    );
    let _ = w.finish(T);
    let mut reports: Vec<_> = w.named("birthday").into_iter().cloned().collect();
    l.kill();
    reports.extend(
        l.drain_events()
            .into_iter()
            .filter(|e| e["event"] == "birthday"),
    );
    for r in reports {
        match r["role"].as_str() {
            Some("spray") => d.probes.push(r["probes"].as_f64().unwrap_or(0.0)),
            Some("open") => d.sockets.push(r["sockets"].as_f64().unwrap_or(0.0)),
            _ => {}
        }
    }
}

fn stat(v: &[f64], p: f64) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    format!("{:.0}", percentile(&v, p))
}

pub fn print(rows: &[Direction]) {
    println!(
        "\n| birthday (20 ms one-way per uplink) | direct (from the start) | connected → direct median ms | p90 ms | goal (median ≤ 500, p90 ≤ 1500) | guessed pings median (p90) | sockets |"
    );
    println!("|---|---|---|---|---|---|---|");
    for d in rows {
        let mut sorted = d.moved_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let met = !sorted.is_empty()
            && percentile(&sorted, 0.5) <= 500.0
            && percentile(&sorted, 0.9) <= 1500.0
            && sorted.len() == d.calls;
        println!(
            "| {} | {}/{} ({}) | {} | {} | {} | {} ({}) | {} |",
            d.name,
            d.moved_ms.len(),
            d.calls,
            d.started_direct,
            stat(&d.moved_ms, 0.5),
            stat(&d.moved_ms, 0.9),
            if met { "met" } else { "missed" },
            stat(&d.probes, 0.5),
            stat(&d.probes, 0.9),
            stat(&d.sockets, 0.5),
        );
    }
}
