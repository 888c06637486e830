//! The path table on a fake clock, against a simulated network whose
//! paths answer pings (or not) with a given RTT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::probe::{Ping, Pong};
use rand::SeedableRng;

use super::*;

const STEP: Duration = Duration::from_millis(5);

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn d(s: &str) -> Route {
    Route::Direct(a(s))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A fake network: per route, the RTT a pong takes, or absent (blocked).
struct Sim {
    table: PathTable,
    now: Instant,
    t0: Instant,
    rtt: HashMap<Route, Duration>,
    /// Per route, the most extra delay per pong (jitter, pseudo-random).
    jitter: HashMap<Route, u64>,
    lcg: u64,
    in_flight: Vec<(Instant, Route, Pong)>,
    log: Vec<(Duration, Action)>,
}

impl Sim {
    fn new(mode: PathMode, relay: bool, candidates: &[&str]) -> Self {
        let t0 = Instant::now();
        let params = PathParams {
            call_id: 42,
            mode,
            relay,
            candidates: candidates.iter().map(|s| a(s)).collect(),
            loopback_ok: false,
        };
        let rng = rand::rngs::StdRng::seed_from_u64(7);
        Self {
            table: PathTable::new(params, PathConfig::default(), t0, rng),
            now: t0,
            t0,
            rtt: HashMap::new(),
            jitter: HashMap::new(),
            lcg: 1,
            in_flight: Vec::new(),
            log: Vec::new(),
        }
    }

    fn open(&mut self, route: Route, rtt: Duration) {
        self.rtt.insert(route, rtt);
    }

    fn block(&mut self, route: Route) {
        self.rtt.remove(&route);
    }

    /// Runs the table for `dur`, answering its pings per the network.
    fn run(&mut self, dur: Duration) {
        let end = self.now + dur;
        while self.now < end {
            let due: Vec<_> = self
                .in_flight
                .iter()
                .filter(|p| p.0 <= self.now)
                .copied()
                .collect();
            self.in_flight.retain(|p| p.0 > self.now);
            for (_, from, pong) in due {
                self.table.pong_received(self.now, from, &pong);
            }
            while let Some(action) = self.table.poll(self.now) {
                self.on(action);
            }
            if let Some(next) = self.table.next_deadline() {
                assert!(next > self.now, "poll left work due now");
            }
            self.now += STEP;
        }
    }

    fn on(&mut self, action: Action) {
        self.log.push((self.now - self.t0, action));
        let Action::SendPing { to, ping } = action else {
            return;
        };
        let Some(rtt) = self.rtt.get(&to).copied() else {
            return;
        };
        self.lcg = self
            .lcg
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let extra = self
            .jitter
            .get(&to)
            .map_or(0, |max| (self.lcg >> 33) % (max + 1));
        let extra = ms(extra);
        let pong = Pong {
            call_id: 42,
            tx: ping.tx,
            observed: Some(a("198.51.100.1:1000")),
            nonce: [9; 8],
        };
        self.in_flight.push((self.now + rtt + extra, to, pong));
    }

    fn switches(&self) -> Vec<(Duration, Route, SwitchReason)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Switch { to, reason } => Some((*t, *to, *reason)),
                _ => None,
            })
            .collect()
    }

    fn sent_to(&self) -> Vec<Route> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::SendPing { to, .. } | Action::SendPong { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn starts_on_the_first_path_that_validates() {
    let mut s = Sim::new(
        PathMode::Auto,
        true,
        &["198.51.100.7:4000", "192.168.1.7:4000"],
    );
    assert_eq!(
        s.table.unconfirmed_routes().count(),
        3,
        "handshake may go everywhere vetted"
    );
    s.open(Route::Relay, ms(30));
    s.open(d("192.168.1.7:4000"), ms(2));
    s.run(ms(100));
    let sw = s.switches();
    assert_eq!(sw[0].1, d("192.168.1.7:4000"));
    assert_eq!(sw[0].2, SwitchReason::First);
    assert!(sw[0].0 <= ms(10), "one RTT, not a timeout: {sw:?}");
    assert_eq!(sw.len(), 1, "the relay validating later changes nothing");
    assert_eq!(
        s.log.iter().position(|(_, a)| *a == Action::Nudge),
        Some(
            s.log
                .iter()
                .position(|(_, a)| matches!(a, Action::Switch { .. }))
                .expect("switch")
                + 1
        )
    );
    assert_eq!(s.table.unconfirmed_routes().count(), 0);
    assert_eq!(s.table.observed(), Some(a("198.51.100.1:1000")));
}

#[test]
fn a_direct_path_validating_later_moves_the_call_off_the_relay_within_one_round() {
    let mut s = Sim::new(PathMode::Auto, true, &["198.51.100.7:4000"]);
    s.open(Route::Relay, ms(40));
    s.run(Duration::from_secs(10));
    assert_eq!(s.table.chosen(), Some(Route::Relay));
    assert_eq!(
        s.table.state(d("198.51.100.7:4000")),
        Some(PathState::Failed)
    );
    s.open(d("198.51.100.7:4000"), ms(20)); // the firewall rule is removed
    let opened = s.now - s.t0;
    s.run(Duration::from_secs(3));
    let sw = s.switches();
    assert_eq!(sw.len(), 2, "{sw:?}");
    assert_eq!(
        (sw[1].1, sw[1].2),
        (d("198.51.100.7:4000"), SwitchReason::Upgrade)
    );
    let took = sw[1].0 - opened;
    assert!(
        took <= PathConfig::default().retry_interval + ms(30),
        "{took:?}"
    );
}

#[test]
fn hysteresis_stops_flapping_between_jittery_direct_paths() {
    let (x, y) = (d("192.168.1.7:4000"), d("198.51.100.7:4000"));
    let mut s = Sim::new(
        PathMode::Auto,
        false,
        &["198.51.100.7:4000", "192.168.1.7:4000"],
    );
    s.open(x, ms(20));
    s.open(y, ms(20));
    s.jitter.insert(x, 15);
    s.jitter.insert(y, 15);
    s.run(Duration::from_secs(120));
    assert!(s.switches().len() <= 2, "flapped: {:?}", s.switches());
    // A clearly faster path still wins.
    let chosen = s.table.chosen().expect("chosen");
    let other = if chosen == x { y } else { x };
    s.jitter.clear();
    s.open(other, ms(3));
    s.run(Duration::from_secs(5));
    assert_eq!(s.table.chosen(), Some(other));
    assert_eq!(
        s.switches().last().map(|w| w.2),
        Some(SwitchReason::LowerRtt)
    );
}

#[test]
fn direct_silent_for_two_seconds_falls_back_to_the_relay_with_one_switch_and_nudge() {
    let direct = d("198.51.100.7:4000");
    let mut s = Sim::new(PathMode::Auto, true, &["198.51.100.7:4000"]);
    s.open(Route::Relay, ms(40));
    s.open(direct, ms(10));
    s.run(Duration::from_secs(5));
    assert_eq!(s.table.chosen(), Some(direct));
    let before = s.log.len();
    s.block(direct); // a firewall change mid-call
    let cut = s.now - s.t0;
    s.run(Duration::from_secs(5));
    let after: Vec<_> = s.log[before..]
        .iter()
        .filter(|(_, a)| !matches!(a, Action::SendPing { .. } | Action::SendPong { .. }))
        .collect();
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        after[0].1,
        Action::Switch {
            to: Route::Relay,
            reason: SwitchReason::Failed
        }
    );
    assert_eq!(after[1].1, Action::Nudge);
    let took = after[0].0 - cut;
    assert!(
        took <= Duration::from_millis(2500),
        "fell back after {took:?}"
    );
    let pings: Vec<_> = s
        .log
        .iter()
        .filter(|(t, a)| {
            *t > ms(4000) && *t < cut && matches!(a, Action::SendPing { to, .. } if *to == direct)
        })
        .collect();
    assert!(
        pings.len() >= 2,
        "liveness at least every second: {}",
        pings.len()
    );
}

fn ping(tx: u8, nonce: [u8; 8]) -> Ping {
    Ping {
        call_id: 42,
        tx: [tx; 8],
        nonce,
    }
}

#[test]
fn a_peer_reflexive_address_gets_only_pongs_until_it_echoes_the_nonce_and_at_most_four() {
    let mut s = Sim::new(PathMode::Auto, true, &["198.51.100.7:4000"]);
    let r = d("203.0.113.9:5555");
    s.table.ping_received(s.now, r, &ping(1, [0; 8]));
    s.run(Duration::from_secs(3));
    let to_r: Vec<_> = s.log.iter().filter(|(_, a)| matches!(a, Action::SendPing { to, .. } | Action::SendPong { to, .. } if *to == r)).collect();
    assert_eq!(to_r.len(), 1, "one pong, no pings: {to_r:?}");
    let Action::SendPong { pong, .. } = to_r[0].1 else {
        panic!("not a pong: {to_r:?}")
    };
    assert_eq!(pong.observed, Some(a("203.0.113.9:5555")));
    assert!(
        !s.table.proven_routes().any(|x| x == r),
        "no data to an unproven address"
    );
    assert!(s.table.unconfirmed_routes().all(|x| x != r));
    s.table.ping_received(s.now, r, &ping(2, [7; 8])); // a wrong echo
    s.run(ms(500));
    assert_eq!(
        s.log
            .iter()
            .filter(|(_, a)| matches!(a, Action::SendPing { to, .. } if *to == r))
            .count(),
        0
    );
    s.table.ping_received(s.now, r, &ping(3, pong.nonce)); // the echo
    s.open(r, ms(15));
    s.run(Duration::from_secs(1));
    assert!(s
        .log
        .iter()
        .any(|(_, a)| matches!(a, Action::SendPing { to, .. } if *to == r)));
    assert_eq!(
        s.table.chosen(),
        Some(r),
        "proven and validated: it carries the call"
    );
    for i in 0..20u8 {
        s.table.ping_received(
            s.now,
            d(&format!("203.0.113.{}:1", 20 + i)),
            &ping(i, [0; 8]),
        );
    }
    s.run(ms(100));
    let reflexive: std::collections::HashSet<_> = s
        .sent_to()
        .into_iter()
        .filter(|r| matches!(r, Route::Direct(x) if x.ip().to_string().starts_with("203.0.113.")))
        .collect();
    assert_eq!(
        reflexive.len(),
        PathConfig::default().max_reflexive,
        "{reflexive:?}"
    );
}

#[test]
fn mode_relay_never_sends_to_a_direct_address() {
    let mut s = Sim::new(
        PathMode::Relay,
        true,
        &["198.51.100.7:4000", "192.168.1.7:4000"],
    );
    s.open(Route::Relay, ms(40));
    s.open(d("198.51.100.7:4000"), ms(5));
    s.table.candidates_added(s.now, &[a("198.51.100.8:1")]);
    s.table
        .ping_received(s.now, d("203.0.113.9:5555"), &ping(1, [0; 8]));
    s.run(Duration::from_secs(30));
    assert!(s.sent_to().iter().all(|r| *r == Route::Relay));
    assert_eq!(s.table.chosen(), Some(Route::Relay));
    assert!(s.table.unconfirmed_routes().all(|r| r == Route::Relay));
}

#[test]
fn mode_direct_never_switches_to_the_relay_and_gives_up_unreachable() {
    let mut s = Sim::new(PathMode::Direct, true, &["198.51.100.7:4000"]);
    s.open(Route::Relay, ms(5));
    s.run(Duration::from_secs(30));
    assert!(s.switches().is_empty());
    assert!(s.sent_to().iter().all(|r| *r != Route::Relay));
    let gave: Vec<_> = s
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::GiveUp { .. }))
        .collect();
    assert_eq!(gave.len(), 1);
    assert_eq!(
        gave[0].1,
        Action::GiveUp {
            reason: GiveUpReason::DirectUnreachable
        }
    );
    assert!(gave[0].0 <= PathConfig::default().direct_deadline + STEP);
    assert_eq!(s.table.next_deadline(), None);
    // A working direct path that dies stays direct: no relay to fall to.
    let mut s = Sim::new(PathMode::Direct, true, &["198.51.100.7:4000"]);
    s.open(Route::Relay, ms(5));
    s.open(d("198.51.100.7:4000"), ms(10));
    s.run(Duration::from_secs(3));
    s.block(d("198.51.100.7:4000"));
    s.run(Duration::from_secs(30));
    assert!(s.switches().iter().all(|w| w.1 != Route::Relay));
    assert!(s.log.iter().any(|(_, a)| *a
        == Action::GiveUp {
            reason: GiveUpReason::NoPath
        }));
}

#[test]
fn unvetted_addresses_never_become_targets() {
    let bad = [
        "127.0.0.1:5",
        "[::1]:5",
        "224.0.0.1:5",
        "[ff02::1]:5",
        "255.255.255.255:5",
        "0.0.0.0:5",
        "[::]:5",
        "198.51.100.7:0",
        "[::ffff:127.0.0.1]:5",
    ];
    let mut s = Sim::new(PathMode::Auto, false, &bad);
    let addrs: Vec<_> = bad.iter().map(|x| a(x)).collect();
    assert_eq!(s.table.candidates_added(s.now, &addrs), 0);
    for (i, x) in bad.iter().enumerate() {
        s.table.ping_received(s.now, d(x), &ping(i as u8, [0; 8]));
    }
    s.run(Duration::from_secs(10));
    assert!(s.sent_to().is_empty(), "{:?}", s.sent_to());
    assert_eq!(s.table.unconfirmed_routes().count(), 0);
    // Past the cap, announced candidates are ignored too.
    let many: Vec<_> = (1..=40u8)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 9)))
        .collect();
    assert_eq!(
        s.table.candidates_added(s.now, &many),
        PathConfig::default().max_candidates
    );
}

#[test]
fn pacing_bound_holds_over_a_simulated_minute() {
    let cands: Vec<String> = (1..=9u8).map(|i| format!("10.0.0.{i}:9")).collect();
    let refs: Vec<&str> = cands.iter().map(String::as_str).collect();
    let mut s = Sim::new(PathMode::Auto, true, &refs);
    s.open(Route::Relay, ms(40));
    s.open(d("10.0.0.3:9"), ms(5));
    let cfg = PathConfig::default();
    let end = s.now + Duration::from_secs(60);
    while s.now < end {
        // A flood of valid pings from every path, and four reflexive ones.
        for i in 0..14u8 {
            let from = if i < 10 {
                Route::Relay
            } else {
                d(&format!("203.0.113.{i}:1"))
            };
            s.table.ping_received(s.now, from, &ping(i, [0; 8]));
        }
        s.run(ms(20));
    }
    let times: Vec<Duration> = s
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::SendPing { .. } | Action::SendPong { .. }))
        .map(|(t, _)| *t)
        .collect();
    let cap = (cfg.probe_burst + cfg.probe_rate) as usize + 1;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= cap,
            "{in_window} probes in the second from {t:?}"
        );
    }
    assert!(times.len() <= (cfg.probe_burst + cfg.probe_rate * 60) as usize + 1);
    assert!(
        s.log
            .iter()
            .any(|(_, a)| matches!(a, Action::SendPing { to, .. } if *to == d("10.0.0.3:9"))),
        "pongs do not starve pings"
    );
}

#[test]
fn a_relay_answering_first_waits_out_its_grace_for_a_direct_path() {
    let direct = d("198.51.100.7:4000");
    let mut s = Sim::new(PathMode::Auto, true, &["198.51.100.7:4000"]);
    s.open(Route::Relay, ms(5));
    s.run(ms(40));
    assert_eq!(s.table.chosen(), None, "within the grace");
    s.open(direct, ms(30));
    s.run(ms(200));
    let sw = s.switches();
    assert_eq!((sw[0].1, sw[0].2), (direct, SwitchReason::First), "{sw:?}");
    assert_eq!(sw.len(), 1, "{sw:?}");

    let mut s = Sim::new(PathMode::Auto, true, &["198.51.100.7:4000"]);
    s.open(Route::Relay, ms(5));
    s.run(ms(300));
    let sw = s.switches();
    assert_eq!((sw[0].1, sw[0].2), (Route::Relay, SwitchReason::First));
    let grace = PathConfig::default().relay_grace;
    assert!(sw[0].0 >= grace && sw[0].0 <= grace + ms(20), "{sw:?}");

    let mut s = Sim::new(PathMode::Auto, true, &[]);
    s.open(Route::Relay, ms(5));
    s.run(ms(50));
    assert_eq!(
        s.switches().first().map(|w| (w.0, w.1)),
        Some((ms(5), Route::Relay)),
        "no direct candidate: no grace"
    );
}

#[test]
fn a_ping_from_the_other_side_triggers_a_ping_back_at_once() {
    let direct = d("198.51.100.7:4000");
    let mut s = Sim::new(PathMode::Auto, true, &["198.51.100.7:4000"]);
    // Our first pings hit the other side's closed NAT.
    s.run(ms(60));
    let before = s.sent_to().iter().filter(|r| **r == direct).count();
    // Its own ping opens it: ours must follow now, not at the next gap.
    s.open(direct, ms(2));
    s.table.ping_received(s.now, direct, &ping(3, [0; 8]));
    s.run(ms(10));
    let pings_after = s
        .log
        .iter()
        .filter(|(t, a)| *t >= ms(60) && matches!(a, Action::SendPing { to, .. } if *to == direct))
        .count();
    assert!(pings_after >= 1, "{:?}", s.log);
    assert_eq!(s.table.chosen(), Some(direct), "validated within a few ms");
    assert!(before >= 1);
}
