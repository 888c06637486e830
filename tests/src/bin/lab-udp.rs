//! A tiny STUN-like UDP tool that lets the NAT lab check its own NATs.
//!
//! ```text
//! lab-udp serve --listen ADDR [--other-port ADDR] [--tell ADDR] [--max-seconds S]
//! lab-udp probe [--bind ADDR] --to ADDR [--to ADDR ...] [--late-ms MS]
//!               [--wait-ms MS] [--connect]
//! ```
//!
//! `serve` answers every datagram with `seen <source address>` (what a NAT
//! made of the sender, as the server saw it). With `--other-port` it also
//! answers from a second socket (same host, another port) with `other-port`,
//! which a NAT that filters by address *and* port must not let in. With
//! `--tell ADDR` it also sends `tell <source address>` to ADDR, another
//! `serve` on another host, which then sends `stranger` to that address
//! (and nothing else): a host the probe never sent to, which only a NAT
//! with endpoint-independent filtering (a full cone) lets in. A probe
//! whose payload is `late=MS` gets one more answer, `late MS`, MS
//! milliseconds later: by then a NAT with a shorter UDP timeout has forgotten
//! the mapping. It prints `ready` once bound and stops after `--max-seconds`
//! (default 600) or 10,000 datagrams.
//!
//! `probe` sends one datagram to each `--to` from one socket, then prints
//! every answer as a JSON line `{"from":ADDR,"text":TEXT}` until `--wait-ms`
//! (default 1000) has passed. With `--connect` (one target) the socket is
//! connected, so an ICMP port-unreachable shows up as `{"error":"refused"}`:
//! that is how a test tells a silent drop from a rejection.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const MAX_DATAGRAMS: usize = 10_000;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let mut flags: Vec<(String, String)> = vec![];
    let mut connect = false;
    while let Some(flag) = args.next() {
        if flag == "--connect" {
            connect = true;
            continue;
        }
        const KNOWN: [&str; 8] = [
            "--listen",
            "--other-port",
            "--tell",
            "--max-seconds",
            "--bind",
            "--to",
            "--late-ms",
            "--wait-ms",
        ];
        if !KNOWN.contains(&flag.as_str()) {
            bail!("unknown flag {flag}");
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        flags.push((flag, value));
    }
    let all = |name: &str| -> Vec<&str> {
        flags
            .iter()
            .filter(|(f, _)| f == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |name: &str| all(name).last().map(|v| v.to_string());
    let addr =
        |v: &str| -> Result<SocketAddr> { v.parse().with_context(|| format!("address {v}")) };
    let ms = |name: &str, default: u64| -> Result<Duration> {
        Ok(Duration::from_millis(match one(name) {
            Some(v) => v.parse().with_context(|| format!("{name} {v}"))?,
            None => default,
        }))
    };
    match mode.as_str() {
        "serve" => {
            let listen = addr(&one("--listen").context("serve needs --listen")?)?;
            let other = one("--other-port").map(|v| addr(&v)).transpose()?;
            let tell = one("--tell").map(|v| addr(&v)).transpose()?;
            let max = match one("--max-seconds") {
                Some(v) => {
                    Duration::from_secs(v.parse().with_context(|| format!("--max-seconds {v}"))?)
                }
                None => Duration::from_secs(600),
            };
            serve(listen, other, tell, max)
        }
        "probe" => {
            let bind = addr(&one("--bind").unwrap_or_else(|| "0.0.0.0:0".into()))?;
            let targets = all("--to")
                .into_iter()
                .map(addr)
                .collect::<Result<Vec<_>>>()?;
            if targets.is_empty() || (connect && targets.len() != 1) {
                bail!("probe needs --to ADDR (exactly one with --connect)");
            }
            let late = one("--late-ms");
            probe(bind, &targets, late, ms("--wait-ms", 1000)?, connect)
        }
        _ => bail!("usage: lab-udp serve --listen ADDR [--other-port ADDR] | probe --to ADDR ..."),
    }
}

fn serve(
    listen: SocketAddr,
    other: Option<SocketAddr>,
    tell: Option<SocketAddr>,
    max: Duration,
) -> Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    let other = other
        .map(|a| UdpSocket::bind(a).with_context(|| format!("bind {a}")))
        .transpose()?;
    println!("ready");
    let end = Instant::now() + max;
    let mut late: Vec<(Instant, SocketAddr, String)> = vec![];
    let mut buf = [0u8; 1500];
    let mut handled = 0;
    while Instant::now() < end && handled < MAX_DATAGRAMS {
        // Wake for the next late answer, or at least every 100 ms.
        let now = Instant::now();
        let nap = late
            .iter()
            .map(|(due, _, _)| due.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(100))
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        socket.set_read_timeout(Some(nap))?;
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            handled += 1;
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(to) = text.strip_prefix("tell ") {
                // Another serve asks this host to be the stranger.
                if let Ok(to) = to.parse::<SocketAddr>() {
                    let _ = socket.send_to(b"stranger", to);
                }
            } else {
                let _ = socket.send_to(format!("seen {from}").as_bytes(), from);
                if let Some(t) = tell {
                    let _ = socket.send_to(format!("tell {from}").as_bytes(), t);
                }
                if let Some(o) = &other {
                    let _ = o.send_to(b"other-port", from);
                }
                if let Some(ms) = text.strip_prefix("late=").and_then(|v| v.parse().ok()) {
                    let due = Instant::now() + Duration::from_millis(ms);
                    late.push((due, from, format!("late {ms}")));
                }
            }
        }
        let now = Instant::now();
        late.retain(|(due, to, text)| {
            if *due > now {
                return true;
            }
            let _ = socket.send_to(text.as_bytes(), to);
            false
        });
    }
    Ok(())
}

fn probe(
    bind: SocketAddr,
    targets: &[SocketAddr],
    late: Option<String>,
    wait: Duration,
    connect: bool,
) -> Result<()> {
    let socket = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    let payload = match late {
        Some(ms) => format!("late={ms}"),
        None => "probe".into(),
    };
    if connect {
        socket.connect(targets[0])?;
        socket.send(payload.as_bytes())?;
    } else {
        for t in targets {
            socket.send_to(payload.as_bytes(), t)?;
        }
    }
    let end = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                println!(
                    "{}",
                    serde_json::json!({"from": from.to_string(), "text": text})
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                println!("{}", serde_json::json!({"error": "refused"}));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
}
