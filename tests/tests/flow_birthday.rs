//! Birthday attempts without a network, on a fake clock ([`tests::pair`]):
//! a symmetric NAT (a new random public port per destination) and a
//! port-restricted cone, whose candidates can never work, start on the
//! relay; their notes, the hard side's extra mappings and the easy side's
//! guessed pings move them to a direct path — or, where no attempt can
//! pay off or the mappings are unreachable, leave them on the relay within
//! the attempt's budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peer::path::{PathConfig, PathMode, Route, SwitchReason};
use tests::pair::{params, Net, Pair, Side};

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// The hard side as the server saw it (its mapping toward the server),
/// and the fresh port its NAT gives its pings toward the easy side.
const HARD_AT_SERVER: &str = "198.51.100.1:40000";
const HARD_FRESH: &str = "198.51.100.1:61001";
/// The easy side (a cone: one address for everyone).
const EASY: &str = "203.0.113.2:5000";

/// A hard ↔ easy pair; `hard_calls`: the hard side is the caller (side
/// 0). Returns the pair and the hard side's index.
fn pair(hard_calls: bool, cfg: PathConfig) -> (Pair, usize) {
    let t0 = Instant::now();
    let hard = Side::new(
        params(PathMode::Auto, vec![a(EASY)]),
        a(HARD_FRESH),
        a(HARD_FRESH),
        t0,
        1,
    )
    .with_config(params(PathMode::Auto, vec![a(EASY)]), cfg.clone(), 1)
    .symmetric();
    let easy = Side::new(
        params(PathMode::Auto, vec![a(HARD_AT_SERVER)]),
        a(EASY),
        a(EASY),
        t0,
        2,
    )
    .with_config(params(PathMode::Auto, vec![a(HARD_AT_SERVER)]), cfg, 2)
    .restricted_cone();
    let (sides, h) = if hard_calls {
        ([hard, easy], 0)
    } else {
        ([easy, hard], 1)
    };
    let [s0, s1] = sides;
    (Pair::new(s0, s1, Net::default(), t0), h)
}

fn on_relay(p: &Pair) -> bool {
    p.sides.iter().all(|s| s.chosen() == Some(Route::Relay))
}

fn both_direct(p: &Pair) -> bool {
    p.sides
        .iter()
        .all(|s| matches!(s.chosen(), Some(Route::Direct(_))))
}

#[test]
fn a_symmetric_and_a_restricted_cone_move_from_the_relay_to_direct() {
    for hard_calls in [true, false] {
        let (mut p, h) = pair(hard_calls, PathConfig::default());
        assert!(
            p.run_until(Duration::from_secs(2), on_relay),
            "starts on the relay"
        );
        let relayed = p.elapsed();
        assert!(
            p.run_until(Duration::from_secs(3), both_direct),
            "hard calls: {hard_calls}: {:?}",
            p.sides.iter().map(|s| &s.switches).collect::<Vec<_>>()
        );
        let moved = p.elapsed() - relayed;
        assert!(moved <= Duration::from_secs(3), "{moved:?}");
        for s in &p.sides {
            let last = s.switches.last().expect("switched");
            assert_eq!(last.2, SwitchReason::Birthday, "{:?}", s.switches);
        }
        let (hard, easy) = (&p.sides[h], &p.sides[1 - h]);
        assert_eq!(
            hard.opened,
            vec![256],
            "the hard side opened its sockets once"
        );
        assert!(easy.opened.is_empty(), "the easy side opens none");
        // The easy side pinged guessed ports of the hard side's IP only.
        let hard_ip = a(HARD_AT_SERVER).ip();
        let guessed: Vec<_> = easy
            .sent
            .iter()
            .filter_map(|(_, r)| match r {
                Route::Direct(x) if *x != a(HARD_AT_SERVER) => Some(*x),
                _ => None,
            })
            .collect();
        assert!(!guessed.is_empty());
        assert!(guessed.iter().all(|x| x.ip() == hard_ip));
        p.run(Duration::from_millis(100));
        let stats = p.sides[1 - h].birthdays.first().copied();
        let stats = stats.expect("the easy side reported its attempt");
        assert!(stats.direct);
        assert!(stats.probes >= 1 && stats.probes < 3000, "{stats:?}");
        assert_eq!(stats.sockets, 0);
        let hard_stats = p.sides[h].birthdays.first().copied().expect("reported");
        assert!(hard_stats.direct && hard_stats.sockets == 256 && hard_stats.probes == 0);
        // Once direct it stays there.
        p.run(Duration::from_secs(10));
        assert!(both_direct(&p));
    }
}

#[test]
fn symmetric_to_symmetric_makes_no_attempt_and_stays_on_the_relay() {
    let t0 = Instant::now();
    let hard = |seen: &str, cand: &str, seed| {
        Side::new(
            params(PathMode::Auto, vec![a(cand)]),
            a(seen),
            a(seen),
            t0,
            seed,
        )
        .symmetric()
    };
    let s0 = hard("198.51.100.1:61001", "203.0.113.2:40000", 1);
    let s1 = hard("203.0.113.2:62002", "198.51.100.1:40001", 2);
    let mut p = Pair::new(s0, s1, Net::default(), t0);
    p.run(Duration::from_secs(20));
    assert!(on_relay(&p));
    for s in &p.sides {
        assert!(s.opened.is_empty(), "no extra sockets");
        assert!(s.birthdays.is_empty());
        let guessed = s
            .sent
            .iter()
            .filter(
                |(_, r)| matches!(r, Route::Direct(x) if x.port() != 40000 && x.port() != 40001),
            )
            .count();
        assert_eq!(guessed, 0, "no guessed ports");
    }
}

#[test]
fn with_the_mappings_unreachable_the_attempt_stops_at_its_budget_and_retries_only_much_later() {
    let cfg = PathConfig {
        birthday_retry: Duration::from_secs(60),
        ..PathConfig::default()
    };
    let (mut p, h) = pair(false, cfg);
    p.sides[h].nat.as_mut().expect("nat").unreachable = true;
    assert!(p.run_until(Duration::from_secs(2), on_relay));
    // The attempt: at most 3 s of guesses (+ the hard side's second of
    // slack), then both report it over and stay on the relay.
    assert!(p.run_until(Duration::from_secs(6), |p| {
        p.sides.iter().all(|s| !s.birthdays.is_empty())
    }));
    let easy = &p.sides[1 - h];
    let stats = easy.birthdays[0];
    assert!(!stats.direct);
    assert_eq!(stats.probes, 3000, "the whole budget, no more");
    assert!(stats.elapsed <= Duration::from_millis(3400), "{stats:?}");
    let guessed = |s: &Side| {
        s.sent
            .iter()
            .filter(|(_, r)| matches!(r, Route::Direct(x) if *x != a(HARD_AT_SERVER)))
            .count()
    };
    assert_eq!(guessed(easy), 3000);
    assert!(on_relay(&p));
    // No second attempt before the retry interval…
    p.run(Duration::from_secs(50));
    assert_eq!(guessed(&p.sides[1 - h]), 3000, "not in a loop");
    assert_eq!(p.sides[h].opened.len(), 1);
    // …and one after it.
    p.run(Duration::from_secs(20));
    assert_eq!(p.sides[h].opened.len(), 2, "retried after the interval");
    assert!(on_relay(&p));
}

#[test]
fn a_call_that_went_direct_sleeps_past_the_retry_time() {
    let cfg = PathConfig {
        birthday_retry: Duration::from_secs(5),
        ..PathConfig::default()
    };
    let (mut p, _) = pair(true, cfg);
    assert!(p.run_until(Duration::from_secs(5), both_direct));
    p.run(Duration::from_secs(10));
    let now = p.now;
    for s in &mut p.sides {
        while s.table.poll(now).is_some() {}
        let next = s.table.next_deadline();
        assert!(
            next.is_some_and(|t| t > now),
            "a deadline in the past would wake the call's task in a loop: {:?}",
            next.map(|t| t.checked_duration_since(now))
        );
    }
}

#[test]
fn a_side_that_learns_its_mapping_late_still_makes_the_attempt_with_the_other() {
    let t0 = Instant::now();
    let hard = Side::new(
        params(PathMode::Auto, vec![a(EASY)]),
        a(HARD_FRESH),
        a(HARD_FRESH),
        t0,
        1,
    )
    .symmetric();
    let mut easy = Side::new(
        params(PathMode::Auto, vec![a(HARD_AT_SERVER)]),
        a(EASY),
        a(EASY),
        t0,
        2,
    );
    easy.restricted = true;
    easy.table.notes_ready();
    let mut p = Pair::new(hard, easy, Net::default(), t0);
    // The hard side's notes come while the easy side does not know its
    // NAT yet (its mapping checks are still out).
    p.run(Duration::from_millis(1500));
    assert!(on_relay(&p));
    let now = p.now;
    p.sides[1]
        .table
        .set_mapping(now, common::probe::Mapping::Cone);
    assert!(
        p.run_until(Duration::from_secs(4), both_direct),
        "{:?}",
        p.sides.iter().map(|s| &s.switches).collect::<Vec<_>>()
    );
    assert_eq!(
        p.sides[0].opened,
        vec![256],
        "one attempt, both sides in it"
    );
}
