//! The direct-call benchmark on loopback, in one run:
//!
//! - register and lookup latency, and `setup_ms` over 100 calls (median, p95);
//! - bulk throughput of a direct call through the `peer` library and through
//!   the `peer` CLI, each as a ratio to raw quinn between two endpoints with
//!   the same TLS 1.3 (ring) and the same flow-control windows, measured in
//!   the same run.
//!
//! `cargo bench -p tests --bench calls` (add `-- --quick` for a short run).
//! Prints a markdown table. Not a test: nothing here fails on a slow machine.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use common::tls::{self, ClientKeyPolicy};
use common::{Identity, PeerMessage};
use peer::{CallOptions, Event, Policy};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rendezvous::Rate;
use tests::inproc::{listening, Serve, TestServer};
use tests::proc::{bin, PeerHome, ServerProc};

const MIB: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;

struct Row {
    metric: String,
    value: String,
    goal: &'static str,
    met: Option<bool>,
}

fn row(metric: impl Into<String>, value: String, goal: &'static str, met: Option<bool>) -> Row {
    Row {
        metric: metric.into(),
        value,
        goal,
        met,
    }
}

/// Median and 95th percentile, in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p95 = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
    (ms(v[v.len() / 2]), ms(v[p95]))
}

fn main() -> Result<()> {
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var_os("BENCH_QUICK").is_some();
    let runtime = tokio::runtime::Runtime::new()?;
    let (mut rows, raw) = runtime.block_on(in_process(quick))?;
    rows.push(cli(quick, raw)?);
    print_table(&rows);
    Ok(())
}

fn unlimited(limits: &mut rendezvous::Limits) {
    let many = Rate {
        burst: 100_000,
        per_second: 100_000.0,
    };
    limits.register_rate = many;
    limits.lookup_rate = many;
    limits.call_rate = many;
}

/// Library figures; also returns raw quinn's bytes per second.
async fn in_process(quick: bool) -> Result<(Vec<Row>, f64)> {
    let calls = if quick { 20 } else { 100 };
    let bulk = if quick { 64 * MIB } else { 256 * MIB };
    let runs = if quick { 1 } else { 3 };
    let dir = tempfile::tempdir()?;
    let server =
        TestServer::start_with(dir.path().to_owned(), "127.0.0.1:0".parse()?, unlimited).await;
    let mut rows = vec![];

    // Register: a fresh peer's first registration (connect + TLS + fsync).
    let mut register = vec![];
    for i in 0..calls.min(50) {
        let start = Instant::now();
        let mut p = server.peer(&format!("reg-{i}")).await;
        let _l = p.peer.listen(Policy::AcceptAll)?;
        p.wait_event(Duration::from_secs(10), |e| {
            matches!(e, Event::Registered { .. })
        })
        .await;
        register.push(start.elapsed());
    }
    let (med, p95) = percentiles(register);
    rows.push(row(
        "register, new peer (connect + handshake + durable bind)",
        format!("median {med:.2} ms, p95 {p95:.2} ms"),
        "",
        None,
    ));

    let (_alice, _a) = listening(&server, "alice", Policy::AcceptAll, Serve::Sink).await;
    let bob = server.peer("bob").await;
    let mut lookups = vec![];
    for _ in 0..calls {
        let start = Instant::now();
        bob.peer.lookup("alice").await?;
        lookups.push(start.elapsed());
    }
    let (med, p95) = percentiles(lookups);
    rows.push(row(
        "lookup (existing connection)",
        format!("median {med:.2} ms, p95 {p95:.2} ms"),
        "",
        None,
    ));

    let mut setups = vec![];
    for _ in 0..calls {
        let call = bob.peer.call("alice", CallOptions::default()).await?;
        setups.push(call.setup);
        call.close();
    }
    let (med, p95) = percentiles(setups);
    rows.push(row(
        format!("call setup_ms over {calls} calls"),
        format!("median {med:.2} ms, p95 {p95:.2} ms"),
        "",
        None,
    ));

    // Bulk: best of `runs` for each side, interleaved so both see the same noise.
    let call = bob.peer.call("alice", CallOptions::default()).await?;
    let (mut lib, mut raw) = (0f64, 0f64);
    let quinn_pair = RawPair::new().await?;
    for _ in 0..runs {
        let (send, recv) = call.open(&PeerMessage::Pipe).await?;
        lib = lib.max(push(send, recv, bulk).await?);
        raw = raw.max(quinn_pair.push(bulk).await?);
    }
    call.close();
    rows.push(row(
        format!("raw quinn, {} MiB one way", bulk / MIB),
        format!("{:.0} MiB/s", raw / MIB as f64),
        "",
        None,
    ));
    rows.push(row(
        "peer library direct call ÷ raw quinn",
        format!("{:.0} MiB/s = {:.2}×", lib / MIB as f64, lib / raw),
        "≥ 0.9",
        Some(lib / raw >= 0.9),
    ));
    Ok((rows, raw))
}

/// Sends `bytes` on `send` and waits until the other side has read them all
/// (it finishes its half when it saw the end). Returns bytes per second.
async fn push(mut send: quinn::SendStream, mut recv: quinn::RecvStream, bytes: u64) -> Result<f64> {
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    send.finish()?;
    // The sink finishes its side after reading everything.
    recv.read_to_end(64).await?;
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// Two plain quinn endpoints with the peer link's TLS and windows.
struct RawPair {
    client: quinn::Endpoint,
    server_addr: SocketAddr,
    server_fp: common::Fingerprint,
    client_id: Identity,
    _server: quinn::Endpoint,
}

fn raw_transport() -> Arc<quinn::TransportConfig> {
    // The same windows as the peer library's peer links.
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window((8u32 << 20).into())
        .receive_window((16u32 << 20).into())
        .send_window(16 << 20);
    Arc::new(t)
}

impl RawPair {
    async fn new() -> Result<Self> {
        let server_id = Identity::generate()?;
        let client_id = Identity::generate()?;
        let tls = tls::server_config(&server_id, ClientKeyPolicy::AnyKey, b"bench")?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        sc.transport_config(raw_transport());
        let server = quinn::Endpoint::server(sc, "127.0.0.1:0".parse()?)?;
        let server_addr = server.local_addr()?;
        let s = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = s.accept().await {
                tokio::spawn(async move {
                    let conn = incoming.await.ok()?;
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            while let Some(_c) = recv.read_chunk(CHUNK, false).await.ok()? {}
                            send.finish().ok()
                        });
                    }
                    Some(())
                });
            }
        });
        let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        Ok(Self {
            client,
            server_addr,
            server_fp: server_id.fingerprint(),
            client_id,
            _server: server,
        })
    }

    async fn push(&self, bytes: u64) -> Result<f64> {
        let tls = tls::client_config(&self.client_id, self.server_fp, b"bench")?;
        let mut cc = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        cc.transport_config(raw_transport());
        let conn = self
            .client
            .connect_with(cc, self.server_addr, "bench")?
            .await?;
        let (send, recv) = conn.open_bi().await?;
        let rate = push(send, recv, bytes).await?;
        conn.close(0u32.into(), b"");
        Ok(rate)
    }
}

/// Through the real binaries: `peer call alice < FILE` to a `peer listen`
/// whose stdout is /dev/null. Throughput counts from the caller's
/// `connected` event to its exit (every byte delivered and acknowledged).
fn cli(quick: bool, raw: f64) -> Result<Row> {
    let bytes = if quick { 64 * MIB } else { 256 * MIB };
    let runs = if quick { 1 } else { 3 };
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
        let block: Vec<u8> = (0..CHUNK).map(|i| (i * 7 % 251) as u8).collect();
        for _ in 0..bytes / CHUNK as u64 {
            f.write_all(&block)?;
        }
    }
    let _ = bin("peer"); // build first, outside the timings
    let server = ServerProc::start(
        None,
        "127.0.0.1:0",
        &dir.path().join("server"),
        &["--call-rate", "1000/1000"],
    );
    let alice = PeerHome::new(dir.path().join("alice"), &server);
    let bob = PeerHome::new(dir.path().join("bob"), &server);
    let mut best = 0f64;
    for _ in 0..runs {
        let mut l = alice.spawn("alice", Some("alice"), &["listen"]);
        l.wait_for(Duration::from_secs(20), "registered");
        let mut cmd = bob.cmd(Some("bob"), &["call", "alice"]);
        cmd.stdin(std::fs::File::open(&input)?)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn peer call")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let mut connected = None;
        let mut log = vec![];
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if connected.is_none() && line.contains("\"connected\"") {
                connected = Some(Instant::now());
            }
            log.push(line);
        }
        let status = child.wait()?;
        let done = Instant::now();
        let connected = connected.ok_or_else(|| anyhow!("no connected event: {log:?}"))?;
        if !status.success() {
            return Err(anyhow!("peer call failed: {log:?}"));
        }
        best = best.max(bytes as f64 / (done - connected).as_secs_f64());
        l.terminate(Duration::from_secs(10));
    }
    Ok(row(
        "peer CLI (call → listen, stdin → stdout) ÷ raw quinn",
        format!("{:.0} MiB/s = {:.2}×", best / MIB as f64, best / raw),
        "≥ 0.8",
        Some(best / raw >= 0.8),
    ))
}

fn print_table(rows: &[Row]) {
    println!("\n| metric | value | goal | met |\n|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        println!("| {} | {} | {} | {} |", r.metric, r.value, r.goal, met);
    }
}
