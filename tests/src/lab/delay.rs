//! One-way link delay without `tc netem`, and round trips measured with ping.
//!
//! [`Lab::with_delay`] makes every uplink created afterwards send what it
//! sends to the internet through NFQUEUE (`iptables -t mangle -A POSTROUTING
//! -o wan -j NFQUEUE --queue-num 0 --queue-bypass`) to an `nfq-delay`
//! process in that namespace, which holds each packet for the delay and then
//! accepts it, in order. With 20 ms on every uplink any two sites are 40 ms
//! apart. Tests measure the result with [`Lab::rtt_ms`] (ICMP echo takes the
//! same links and queues as UDP) rather than trusting the setting.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use super::Lab;
use crate::proc::{bin, command, Proc};

/// How long a delayer runs at most (a lab never lives this long).
const DELAYER_MAX_SECONDS: &str = "900";

impl Lab {
    /// Every uplink added after this call delays what it sends to the
    /// internet by `one_way` (so two sites are 2 × `one_way` apart).
    pub fn with_delay(&mut self, one_way: Duration) -> &mut Self {
        self.delay = Some(one_way);
        self
    }

    /// Delays every packet leaving `ns` through `iface` by `d`.
    pub fn delay_egress(&mut self, ns: &str, iface: &str, d: Duration) {
        let mut cmd = command(Some(ns), &bin("nfq-delay"));
        cmd.args(["--queue", "0", "--delay-ms"])
            .arg(format!("{}", d.as_secs_f64() * 1e3))
            .args(["--max-seconds", DELAYER_MAX_SECONDS])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut p = Proc::spawn(&format!("nfq-delay {ns}"), cmd);
        let mut out = p.take_stdout();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 6];
            let _ = tx.send(out.read_exact(&mut buf).is_ok() && &buf == b"ready\n");
        });
        let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
        assert!(ready, "nfq-delay did not start in {ns}:\n{}", p.log());
        self.keep(p);
        self.sh(
            ns,
            &format!(
                "iptables -t mangle -A POSTROUTING -o {iface} -j NFQUEUE --queue-num 0 --queue-bypass"
            ),
        );
    }

    /// Median round trip (ms) of `count` pings from namespace `from` to `to`.
    pub fn rtt_ms(&self, from: &str, to: Ipv4Addr, count: u32) -> f64 {
        let out = self.sh(
            from,
            &format!("ping -n -c {count} -i 0.05 -W 2 {to} | grep -o 'time=[0-9.]*' || true"),
        );
        let mut rtts: Vec<f64> = out
            .lines()
            .filter_map(|l| l.strip_prefix("time=")?.parse().ok())
            .collect();
        assert!(
            !rtts.is_empty(),
            "no ping replies from {from} to {to}: {out}"
        );
        rtts.sort_by(f64::total_cmp);
        rtts[rtts.len() / 2]
    }
}
