//! Call setup time across NATs with realistic round trips (see
//! `tests/LAB.md`): 20 ms one-way delay on every uplink (40 ms between any
//! two sites), `setup_ms` printed next to the RTT floor measured here with
//! ping, RTT(A,S) + RTT(S,B) + RTT(A,B). The benchmark with more calls and
//! topologies is `lab-bench`.
//! Needs root; skips with a reason elsewhere, fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use tests::lab::{Lab, Nat};

const T: Duration = Duration::from_secs(30);
const CALLS: usize = 5;

#[test]
fn setup_ms_against_the_rtt_floor_with_20ms_uplinks() {
    let Some(mut lab) = Lab::new("setup_ms") else {
        return;
    };
    lab.with_delay(Duration::from_millis(20));
    lab.start_server();
    let a = lab.site(Nat::Cone, 1);
    let b = lab.site(Nat::Cone, 1);
    let server = Ipv4Addr::new(198, 18, 0, 2);
    let rtt_as = lab.rtt_ms(&a.hosts[0].ns, server, 10);
    let rtt_bs = lab.rtt_ms(&b.hosts[0].ns, server, 10);
    let rtt_ab = lab.rtt_ms(&b.hosts[0].ns, a.public, 10);
    for rtt in [rtt_as, rtt_bs, rtt_ab] {
        assert!((39.0..55.0).contains(&rtt), "the delay is real: {rtt} ms");
    }
    let floor = rtt_as + rtt_bs + rtt_ab;

    let mut l = lab
        .home("alice", &a.hosts[0])
        .spawn("alice", Some("alice"), &["listen", "--echo"]);
    l.wait_for(T, "registered");
    let bob = lab.home("bob", &b.hosts[0]);
    let mut setups = vec![];
    for _ in 0..CALLS {
        let out = bob.run(Some("bob"), &["call", "alice", "--timeout", "5"], T);
        assert!(out.status.success(), "{}", out.log);
        let c = out.event("connected");
        assert_eq!(c["path"], "direct");
        let setup = c["setup_ms"].as_f64().unwrap();
        // A setup faster than the two round trips through the server would
        // mean the delay or the measurement is wrong.
        assert!(setup > rtt_as + rtt_bs, "{setup} ms vs floor {floor} ms");
        setups.push(setup);
    }
    setups.sort_by(f64::total_cmp);
    let median = setups[CALLS / 2];
    println!(
        "cone ↔ cone, 20 ms per uplink: setup_ms {setups:.1?}, median {median:.1}; RTT floor \
         {floor:.1} = A–S {rtt_as:.1} + S–B {rtt_bs:.1} + A–B {rtt_ab:.1}; median ÷ floor {:.2}",
        median / floor
    );
    // A first Initial lost in a closed pinhole costs a retransmission
    // timeout (≥ 3 × the server RTT here): that would show as ≥ 1.6.
    assert!(
        median < 1.6 * floor,
        "setup {median:.1} ms vs floor {floor:.1} ms"
    );
}
