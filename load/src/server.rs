//! The server under test: a `rendezvous` child process this tool starts
//! (and can kill and restart), or one already running elsewhere on this
//! machine (`--server`), read through `/proc/PID` when its pid is given.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use common::Fingerprint;

/// How the server was started, to start it again the same way.
pub(crate) struct Launch {
    /// The `rendezvous` binary.
    pub(crate) bin: PathBuf,
    /// Its data dir (kept across restarts: key and names).
    pub(crate) data: PathBuf,
    /// Peers expected, to size its connection limits.
    pub(crate) peers: usize,
    /// More arguments for it (`--server-args`, and a cluster node's own).
    pub(crate) extra: Vec<String>,
    /// What its log lines are shown with (`server`, `n1`, …).
    pub(crate) label: String,
}

/// The server under test.
pub(crate) struct ServerProc {
    child: Option<Child>,
    pid: Option<u32>,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its key.
    pub(crate) fingerprint: Fingerprint,
    /// Its `/metrics` address, when this tool started it.
    metrics: Option<SocketAddr>,
}

impl ServerProc {
    /// Starts `rendezvous` on `listen` with every per-source limit lifted, so
    /// the run measures capacity, not flood protection; waits (≤ 20 s) for
    /// its `listening` event.
    pub(crate) fn start(launch: &Launch, listen: &str) -> Result<Self> {
        let lifted = "1000000000/1000000000";
        // A free port for its metrics (released just before it binds it).
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut child = Command::new(&launch.bin)
            .args(["--metrics", &metrics.to_string()])
            .args(["--json", "--listen", listen, "--data-dir"])
            .arg(&launch.data)
            .args(["--max-connections", &(launch.peers * 2 + 100).to_string()])
            .args([
                "--max-connections-per-ip",
                &(launch.peers + 100).to_string(),
            ])
            .args(["--register-rate", lifted, "--lookup-rate", lifted])
            .args(["--call-rate", lifted])
            // The calls phase rings each callee many times from one address.
            .args(["--offer-rate-per-source", lifted])
            .args(["--offer-rate-per-callee", lifted])
            .args(["--offer-rate-per-contact", lifted])
            .args(&launch.extra)
            // The server's own log level: warnings, unless told otherwise.
            .env(
                "RUST_LOG",
                std::env::var("LOAD_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let label = launch.label.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) if v["event"] == "listening" => {
                        let _ = tx.send(v);
                    }
                    _ => eprintln!("{label}: {line}"),
                }
            }
        });
        let ev = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| anyhow!("the server did not start listening within 20 s"))?;
        let addr = ev["addr"].as_str().unwrap_or_default().parse()?;
        let fingerprint = ev["fingerprint"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow!("fingerprint: {e}"))?;
        Ok(Self {
            pid: Some(child.id()),
            child: Some(child),
            addr,
            fingerprint,
            metrics: Some(metrics),
        })
    }

    /// A server this tool did not start (no restart drill).
    pub(crate) fn external(addr: SocketAddr, fingerprint: Fingerprint, pid: Option<u32>) -> Self {
        Self {
            child: None,
            pid,
            addr,
            fingerprint,
            metrics: None,
        }
    }

    /// Whether this tool can stop and restart it.
    pub(crate) fn owned(&self) -> bool {
        self.child.is_some()
    }

    /// Its pid, if known.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Resident memory, KiB (0 when unknown).
    pub(crate) fn rss_kib(&self) -> u64 {
        self.pid.map_or(0, rss_kib)
    }

    /// User + system CPU time so far, in seconds (0 when unknown).
    pub(crate) fn cpu_secs(&self) -> f64 {
        self.pid.map_or(0.0, cpu_secs)
    }

    /// The server's counters (`GET /metrics`, bounded by 5 s), as
    /// "name value" pairs; empty when unknown.
    pub(crate) fn counters(&self) -> Vec<(String, f64)> {
        let Some(addr) = self.metrics else {
            return vec![];
        };
        scrape(addr).unwrap_or_default()
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
    }

    /// A clean stop (SIGTERM: the server closes every connection), waiting
    /// up to `limit` before [`Self::kill`].
    pub(crate) fn stop(&mut self, limit: Duration) {
        let Some(child) = &mut self.child else { return };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn scrape(addr: SocketAddr) -> std::io::Result<Vec<(String, f64)>> {
    let text = http_get(addr, "/metrics")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("rendezvous_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// `GET path` over HTTP/1.0 from `addr` (bounded: 5 s, 1 MiB), headers
/// and body as one text.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let limit = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.take(1 << 20).read_to_string(&mut text)?;
    Ok(text)
}

/// User + system CPU time of `pid` so far, in seconds (0 when unknown).
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Clock ticks are 1/100 s on Linux.
    (get(11) + get(12)) as f64 / 100.0
}

/// Resident memory of `pid`, KiB (0 when unknown).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// UDP datagrams the kernel dropped for want of socket buffer space, on the
/// whole machine (`RcvbufErrors` in `/proc/net/snmp`).
pub(crate) fn udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The `rendezvous` binary: `explicit`, or the one next to this program.
pub(crate) fn server_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let bin = std::env::current_exe()?.with_file_name("rendezvous");
    if !bin.exists() {
        anyhow::bail!(
            "{} not found: build it first (cargo build --release -p rendezvous -p load) or pass --server-bin",
            bin.display()
        );
    }
    Ok(bin)
}
