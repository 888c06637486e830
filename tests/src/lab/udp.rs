//! Plain UDP through the lab with the `lab-udp` tool, so tests can check
//! that each NAT kind does what its name says before trusting a call result:
//! which public address and port a NAT gives one socket toward two
//! destinations (mapping), what it lets in (filtering), whether it drops or
//! rejects, and when it forgets a mapping (UDP timeout). A third host
//! answering a probe that never sent to it (`stranger`) tells a full cone
//! from a port-restricted one.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::Lab;
use crate::proc::{bin, command, Proc};

/// A probe's plan: where from, where to, and how long to listen.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The probe socket's local address (`0.0.0.0:0` for any).
    pub bind: SocketAddr,
    pub to: Vec<SocketAddr>,
    /// Ask the servers for one more answer this much later.
    pub late: Option<Duration>,
    /// How long to collect answers.
    pub wait: Duration,
    /// Connect the socket (one target) so ICMP errors are seen.
    pub connect: bool,
}

impl Probe {
    /// One datagram to each of `to`, answers collected for one second.
    pub fn to(to: &[SocketAddr]) -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            to: to.to_vec(),
            late: None,
            wait: Duration::from_secs(1),
            connect: false,
        }
    }
}

/// What came back to a probe.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    /// `(from, text)` of every datagram received.
    pub datagrams: Vec<(SocketAddr, String)>,
    /// An ICMP port-unreachable was reported (connected probes only).
    pub refused: bool,
}

impl Answers {
    /// The public address `server` saw the probe come from (`seen ADDR`).
    pub fn seen_by(&self, server: SocketAddr) -> Option<SocketAddr> {
        self.datagrams
            .iter()
            .filter(|(from, _)| *from == server)
            .find_map(|(_, text)| text.strip_prefix("seen ")?.parse().ok())
    }

    /// Whether a datagram with exactly `text` came back.
    pub fn got(&self, text: &str) -> bool {
        self.datagrams.iter().any(|(_, t)| t == text)
    }
}

impl Lab {
    /// Starts `lab-udp serve` in `ns` on `listen` (and `other_port`, a
    /// second socket answering `other-port`), kept until the lab is dropped.
    pub fn udp_server(&mut self, ns: &str, listen: SocketAddr, other_port: Option<SocketAddr>) {
        self.udp_server_telling(ns, listen, other_port, None);
    }

    /// [`Lab::udp_server`] that also asks the `serve` at `tell` (another
    /// host) to send `stranger` to every probe's address (`--tell`).
    pub fn udp_server_telling(
        &mut self,
        ns: &str,
        listen: SocketAddr,
        other_port: Option<SocketAddr>,
        tell: Option<SocketAddr>,
    ) {
        let mut cmd = command(Some(ns), &bin("lab-udp"));
        cmd.args(["serve", "--listen", &listen.to_string()]);
        if let Some(o) = other_port {
            cmd.args(["--other-port", &o.to_string()]);
        }
        if let Some(t) = tell {
            cmd.args(["--tell", &t.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut p = Proc::spawn(&format!("lab-udp serve {listen}"), cmd);
        let out = p.take_stdout();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            let _ = tx.send(line.trim() == "ready");
        });
        let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
        assert!(ready, "lab-udp serve did not start in {ns}:\n{}", p.log());
        self.keep(p);
    }

    /// Starts `probe` from namespace `ns`; [`ProbeRun::answers`] waits for it.
    pub fn udp_probe(&self, ns: &str, probe: &Probe) -> ProbeRun {
        let mut cmd = command(Some(ns), &bin("lab-udp"));
        cmd.args(["probe", "--bind", &probe.bind.to_string()]);
        for t in &probe.to {
            cmd.args(["--to", &t.to_string()]);
        }
        if let Some(late) = probe.late {
            cmd.args(["--late-ms", &late.as_millis().to_string()]);
        }
        cmd.args(["--wait-ms", &probe.wait.as_millis().to_string()]);
        if probe.connect {
            cmd.arg("--connect");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        ProbeRun {
            proc: Proc::spawn(&format!("lab-udp probe from {ns}"), cmd),
            wait: probe.wait,
        }
    }
}

/// A running probe.
pub struct ProbeRun {
    proc: Proc,
    wait: Duration,
}

impl ProbeRun {
    /// Waits (bounded) for the probe to finish and parses what it printed.
    pub fn answers(mut self) -> Answers {
        let limit = self.wait + Duration::from_secs(10);
        let out = self.proc.read_stdout(limit);
        let status = self.proc.wait_exit(limit);
        assert!(status.success(), "lab-udp probe: {}", self.proc.log());
        let mut answers = Answers::default();
        for line in String::from_utf8_lossy(&out).lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["error"] == "refused" {
                answers.refused = true;
            } else if let (Some(from), Some(text)) = (v["from"].as_str(), v["text"].as_str()) {
                answers
                    .datagrams
                    .push((from.parse().expect("address"), text.to_owned()));
            }
        }
        answers
    }
}
