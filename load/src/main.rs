//! `rendezvous-load`: how many peers one rendezvous server carries, measured.
//!
//! Starts `target/release/rendezvous` on 127.0.0.1 with its per-source
//! limits lifted (so the tool measures capacity, not the flood limits), then
//! opens N real peer sessions — each its own Ed25519 key, its own QUIC
//! connection and name, spread over several 127.0.0.0/8 source addresses —
//! and measures:
//!
//! - registrations/s during the ramp;
//! - lookups/s over the existing connections (many at once);
//! - calls brokered/s between pairs of load peers (the callee accepts);
//! - server RSS per connected peer, and server CPU while N peers idle
//!   (their keep-alives);
//! - after the server is killed and restarted on the same data dir, the time
//!   until all N are registered again (sessions notice through stateless
//!   resets and reconnect with jittered backoff).
//!
//! Prints a markdown table and writes JSON with `--json-out`. Every loop is
//! bounded in count and time; all traffic stays on loopback.
//!
//! ```text
//! cargo build --release -p rendezvous -p load
//! target/release/rendezvous-load --peers 10000
//! ```

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{tls, Fingerprint, Identity, Message};
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;
use serde_json::json;

/// Measure one rendezvous server's capacity with many real peer sessions.
#[derive(Parser, Debug)]
#[command(name = "rendezvous-load")]
struct Args {
    /// Peer sessions to open.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Source addresses (127.0.1.1, 127.0.1.2, …) to spread them over.
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Requests in flight at once during the ramp, lookups and calls.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds of lookups.
    #[arg(long, default_value_t = 5.0)]
    lookup_secs: f64,
    /// Calls to broker (between pairs of load peers).
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
    /// Seconds to watch the server's CPU while every peer idles.
    #[arg(long, default_value_t = 16.0)]
    idle_secs: f64,
    /// Skip the restart drill.
    #[arg(long)]
    no_restart: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// The server binary (default: `rendezvous` next to this program).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

/// A `rendezvous` child process.
struct ServerChild {
    child: Child,
    addr: SocketAddr,
    fingerprint: Fingerprint,
}

impl ServerChild {
    fn start(bin: &Path, data: &Path, listen: &str, peers: usize) -> Result<Self> {
        let lifted = "1000000000/1000000000";
        let mut child = Command::new(bin)
            .args(["--json", "--listen", listen, "--data-dir"])
            .arg(data)
            .args(["--max-connections", &(peers * 2 + 100).to_string()])
            .args(["--max-connections-per-ip", &(peers + 100).to_string()])
            .args(["--register-rate", lifted, "--lookup-rate", lifted])
            .args(["--call-rate", lifted])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["event"] == "listening" {
                        let _ = tx.send(v);
                    }
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
            child,
            addr,
            fingerprint,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        status
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU time so far, in clock ticks (1/100 s on Linux).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        let stat = stat.unwrap_or_default();
        // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A clean stop (SIGTERM), waiting up to `limit` before [`Self::kill`].
    fn stop(&mut self, limit: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One load peer.
struct Client {
    name: String,
    config: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    conn: Mutex<Option<quinn::Connection>>,
}

/// Counters the sessions share.
#[derive(Default)]
struct Shared {
    /// Sessions registered now.
    registered: AtomicUsize,
    /// Registrations completed since the epoch started.
    epoch_registrations: AtomicUsize,
    /// Bumped on a server restart.
    epoch: AtomicU64,
    /// Offers the load peers accepted.
    offers: AtomicUsize,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One request on its own stream, one answer (bounded by a timeout).
async fn request(conn: &quinn::Connection, msg: &Message) -> Result<Message> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, msg, MAX_FRAME).await?;
        send.finish()?;
        Ok(read_frame(&mut recv, MAX_FRAME).await?)
    })
    .await
    .map_err(|_| anyhow!("request timed out"))?
}

async fn connect_and_register(
    c: &Client,
    server: SocketAddr,
    shared: &Shared,
) -> Result<quinn::Connection> {
    let connecting = c
        .endpoint
        .connect_with(c.config.clone(), server, tls::SERVER_NAME)?;
    let conn = tokio::time::timeout(REQUEST_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow!("handshake timed out"))??;
    let answer = request(
        &conn,
        &Message::Register {
            name: c.name.clone(),
            presence: true,
        },
    )
    .await?;
    match answer {
        Message::Registered { .. } => {}
        other => bail!("register {}: {other:?}", c.name),
    }
    *c.conn.lock().map_err(|_| anyhow!("poisoned"))? = Some(conn.clone());
    shared.registered.fetch_add(1, Ordering::SeqCst);
    shared.epoch_registrations.fetch_add(1, Ordering::SeqCst);
    Ok(conn)
}

/// Answers call offers like a `listen` that accepts everyone.
async fn serve_offers(conn: quinn::Connection, shared: Arc<Shared>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let offer = tokio::time::timeout(
                REQUEST_TIMEOUT,
                read_frame::<Message, _>(&mut recv, MAX_FRAME),
            )
            .await;
            if let Ok(Ok(Message::IncomingCall { .. })) = offer {
                let accept = Message::Accept { candidates: vec![] };
                if write_frame(&mut send, &accept, MAX_FRAME).await.is_ok() {
                    shared.offers.fetch_add(1, Ordering::Relaxed);
                    // The Dial frame follows; read it so the stream ends cleanly.
                    let _ = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        read_frame::<Message, _>(&mut recv, MAX_FRAME),
                    )
                    .await;
                }
                let _ = send.finish();
            }
        });
    }
}

/// A peer's whole life: register, answer offers, and after a lost
/// connection come back with jittered backoff. Ends when `stop` is set or
/// after 50 failed attempts in a row.
async fn session(
    c: Arc<Client>,
    server: Arc<Mutex<SocketAddr>>,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    while !*stop.borrow() && failures < 50 {
        let addr = server
            .lock()
            .map(|a| *a)
            .unwrap_or(([127, 0, 0, 1], 0).into());
        match connect_and_register(&c, addr, &shared).await {
            Ok(conn) => {
                failures = 0;
                let mut stop = stop.clone();
                tokio::select! {
                    () = serve_offers(conn.clone(), shared.clone()) => {}
                    _ = conn.closed() => {}
                    _ = stop.changed() => {}
                }
                shared.registered.fetch_sub(1, Ordering::SeqCst);
                if let Ok(mut slot) = c.conn.lock() {
                    *slot = None;
                }
            }
            Err(_) => failures += 1,
        }
        // Jittered backoff: 0–1 s, growing to 0–3 s; nobody stampedes.
        let cap = 1000 * u64::from(failures.clamp(1, 3));
        let wait = rand::thread_rng().gen_range(0..cap);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

fn client_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // As the peer's server link: keep-alive 8 s, idle timeout 20 s.
    t.keep_alive_interval(Some(Duration::from_secs(8)))
        .max_idle_timeout(Duration::from_secs(20).try_into().ok())
        .stream_receive_window(65_536u32.into())
        .receive_window(262_144u32.into());
    Arc::new(t)
}

/// Waits until `pred` holds (checked every 50 ms) or `limit` passes.
async fn wait_until(limit: Duration, pred: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pred()
}

fn server_bin(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.server_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("rendezvous");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p rendezvous -p load) or pass --server-bin",
            bin.display()
        );
    }
    Ok(bin)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.peers < 2 || args.sources == 0 {
        bail!("--peers must be at least 2 and --sources at least 1");
    }
    let bin = server_bin(&args)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("server");
    let mut server = ServerChild::start(&bin, &data, "127.0.0.1:0", args.peers)?;
    let server_addr = Arc::new(Mutex::new(server.addr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = server.rss_kib();
    eprintln!(
        "server pid {} at {} (RSS {} KiB idle)",
        server.pid(),
        server.addr,
        rss_idle
    );

    // Keys and TLS configs, on every core.
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut jobs = tokio::task::JoinSet::new();
    for t in 0..threads {
        let (n, fp) = (args.peers, server.fingerprint);
        jobs.spawn_blocking(move || -> Result<Vec<(usize, quinn::ClientConfig)>> {
            (t..n)
                .step_by(threads)
                .map(|i| {
                    let id = Identity::generate()?;
                    let tls = tls::client_config(&id, fp, tls::SERVER_ALPN)?;
                    let mut cc =
                        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
                    cc.transport_config(client_transport());
                    Ok((i, cc))
                })
                .collect()
        });
    }
    let mut configs: Vec<Option<quinn::ClientConfig>> = (0..args.peers).map(|_| None).collect();
    while let Some(done) = jobs.join_next().await {
        for (i, cc) in done?? {
            configs[i] = Some(cc);
        }
    }
    let keygen = started.elapsed();
    eprintln!("{} keys in {:.1} s", args.peers, keygen.as_secs_f64());

    let endpoints = (0..args.sources)
        .map(|s| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, s + 1));
            quinn::Endpoint::client(SocketAddr::new(ip, 0))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding client endpoints on 127.0.1.x")?;
    let clients: Vec<Arc<Client>> = configs
        .into_iter()
        .enumerate()
        .map(|(i, cc)| {
            Ok(Arc::new(Client {
                name: format!("load-{i}"),
                config: cc.ok_or_else(|| anyhow!("missing config {i}"))?,
                endpoint: endpoints[i % endpoints.len()].clone(),
                conn: Mutex::new(None),
            }))
        })
        .collect::<Result<_>>()?;

    // Ramp: start sessions `concurrency` at a time.
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ramp_start = Instant::now();
    let mut sessions = tokio::task::JoinSet::new();
    let ramp_deadline = ramp_start + Duration::from_secs(600);
    for (i, c) in clients.iter().enumerate() {
        // Keep at most `concurrency` registrations in flight.
        while i - shared.registered.load(Ordering::SeqCst).min(i) >= args.concurrency
            && Instant::now() < ramp_deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sessions.spawn(session(
            c.clone(),
            server_addr.clone(),
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    // Wait for everyone, printing progress; give up when nobody new has
    // registered for 30 s (the machine is saturated) or after 600 s.
    let (mut all, mut last, mut stalled_since) = (false, 0, Instant::now());
    while ramp_start.elapsed() < Duration::from_secs(600) {
        all = wait_until(Duration::from_secs(5), || {
            shared.registered.load(Ordering::SeqCst) >= args.peers
        })
        .await;
        let now = shared.registered.load(Ordering::SeqCst);
        eprintln!(
            "ramp: {now} registered after {:.0} s",
            ramp_start.elapsed().as_secs_f64()
        );
        if all {
            break;
        }
        if now > last {
            (last, stalled_since) = (now, Instant::now());
        } else if stalled_since.elapsed() > Duration::from_secs(30) {
            eprintln!("ramp stalled at {now}: stopping it here");
            break;
        }
    }
    let ramp = ramp_start.elapsed();
    let registered = shared.registered.load(Ordering::SeqCst);
    if !all {
        eprintln!(
            "only {registered} of {} registered within 600 s",
            args.peers
        );
    }
    let reg_rate = registered as f64 / ramp.as_secs_f64();
    eprintln!(
        "ramp: {registered} registered in {:.1} s",
        ramp.as_secs_f64()
    );

    // Memory and idle CPU with everyone connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_full = server.rss_kib();
    let per_peer_kib = rss_full.saturating_sub(rss_idle) as f64 / registered.max(1) as f64;
    let t0 = server.cpu_ticks();
    let idle = Duration::from_secs_f64(args.idle_secs);
    tokio::time::sleep(idle).await;
    let idle_cores = (server.cpu_ticks() - t0) as f64 / 100.0 / idle.as_secs_f64();
    eprintln!("idle: {idle_cores:.3} cores, RSS {rss_full} KiB");

    // Lookups over existing connections.
    let lookups = Arc::new(AtomicUsize::new(0));
    let lookup_errors = Arc::new(AtomicUsize::new(0));
    let lookup_time = Duration::from_secs_f64(args.lookup_secs);
    let lookup_ticks = server.cpu_ticks();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (clients, lookups, errors) = (clients.clone(), lookups.clone(), lookup_errors.clone());
        tasks.spawn(async move {
            while start.elapsed() < lookup_time {
                let (i, j) = {
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_range(0..clients.len()),
                        rng.gen_range(0..clients.len()),
                    )
                };
                let conn = clients[i].conn.lock().ok().and_then(|c| c.clone());
                let Some(conn) = conn else { continue };
                let msg = Message::Lookup {
                    name: clients[j].name.clone(),
                };
                match request(&conn, &msg).await {
                    Ok(Message::LookupResult { .. }) => lookups.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let lookup_elapsed = start.elapsed().as_secs_f64();
    let lookup_rate = lookups.load(Ordering::Relaxed) as f64 / lookup_elapsed;
    // The load tool shares the machine's cores with the server, so also
    // report what the server did per second of its own CPU time.
    let lookup_cores = (server.cpu_ticks() - lookup_ticks) as f64 / 100.0 / lookup_elapsed;
    let lookups_per_core = lookup_rate / lookup_cores.max(0.01);
    eprintln!("lookups: {lookup_rate:.0}/s using {lookup_cores:.2} server cores");

    // Calls between pairs: load-2k calls load-(2k+1), which accepts.
    let calls_ok = Arc::new(AtomicUsize::new(0));
    let calls_failed = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let pairs = (clients.len() / 2).max(1);
    let start = Instant::now();
    for _ in 0..args.concurrency.min(args.calls.max(1)) {
        let (clients, ok, failed, next) = (
            clients.clone(),
            calls_ok.clone(),
            calls_failed.clone(),
            next.clone(),
        );
        let total = args.calls;
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let pair = k % pairs;
                let (caller, callee) = (&clients[2 * pair], &clients[2 * pair + 1]);
                let conn = caller.conn.lock().ok().and_then(|c| c.clone());
                let Some(conn) = conn else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let msg = Message::Call {
                    to: callee.name.clone(),
                    candidates: vec![],
                };
                match request(&conn, &msg).await {
                    Ok(Message::CallAccepted { .. }) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let call_rate = calls_ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "calls: {call_rate:.0}/s ({} failed)",
        calls_failed.load(Ordering::Relaxed)
    );

    // Restart drill: SIGKILL, start again on the same address and data dir.
    let mut rereg = None;
    if !args.no_restart {
        let addr = server.addr;
        server.kill();
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        shared.epoch_registrations.store(0, Ordering::SeqCst);
        let restart = Instant::now();
        server = ServerChild::start(&bin, &data, &addr.to_string(), args.peers)?;
        *server_addr.lock().map_err(|_| anyhow!("poisoned"))? = server.addr;
        // Progress each second, for the report: how the returns spread out.
        let mut timeline = vec![];
        let mut back = false;
        for _ in 0..120 {
            back = wait_until(Duration::from_secs(1), || {
                shared.epoch_registrations.load(Ordering::SeqCst) >= registered
            })
            .await;
            timeline.push(shared.epoch_registrations.load(Ordering::SeqCst));
            if back {
                break;
            }
        }
        eprintln!("re-registered by second: {timeline:?}");
        let took = restart.elapsed();
        let n = shared.epoch_registrations.load(Ordering::SeqCst);
        eprintln!(
            "restart: {n} of {registered} registered again after {:.1} s{}",
            took.as_secs_f64(),
            if back { "" } else { " (gave up waiting)" }
        );
        rereg = Some((n, took));
    }
    let _ = stop_tx.send(true);
    sessions.abort_all();
    server.stop(Duration::from_secs(30));

    // The report.
    let n = registered;
    let rows = vec![
        (
            "peers registered".to_string(),
            format!("{n} of {}", args.peers),
            String::new(),
        ),
        (
            "registrations/s (ramp)".into(),
            format!("{reg_rate:.0}"),
            String::new(),
        ),
        (
            "lookups/s".into(),
            format!(
                "{lookup_rate:.0} (server busy {lookup_cores:.2} cores: {lookups_per_core:.0} per server core-second)"
            ),
            "≥ 50,000".into(),
        ),
        (
            "calls brokered/s".into(),
            format!(
                "{call_rate:.0} ({} failed)",
                calls_failed.load(Ordering::Relaxed)
            ),
            String::new(),
        ),
        (
            "server RSS per peer".into(),
            format!("{per_peer_kib:.1} KiB ({rss_idle} → {rss_full} KiB)"),
            "≤ 20 KiB".into(),
        ),
        (
            "server CPU, all peers idle".into(),
            format!("{idle_cores:.3} cores"),
            "≤ 0.5".into(),
        ),
        (
            "re-registered after SIGKILL + restart".into(),
            rereg.map_or("skipped".into(), |(k, t)| {
                format!("{k} of {n} in {:.1} s", t.as_secs_f64())
            }),
            "10,000 in ≤ 10 s".into(),
        ),
    ];
    println!(
        "\n| {} peers over {} sources | value | goal |\n|---|---|---|",
        args.peers, args.sources
    );
    for (metric, value, goal) in &rows {
        println!("| {metric} | {value} | {goal} |");
    }
    if let Some(path) = &args.json_out {
        let report = json!({
            "peers": args.peers,
            "sources": args.sources,
            "registered": n,
            "key_generation_s": keygen.as_secs_f64(),
            "registrations_per_s": reg_rate,
            "lookups_per_s": lookup_rate,
            "lookup_server_cores": lookup_cores,
            "lookups_per_server_core_s": lookups_per_core,
            "calls_per_s": call_rate,
            "calls_failed": calls_failed.load(Ordering::Relaxed),
            "rss_idle_kib": rss_idle,
            "rss_full_kib": rss_full,
            "rss_per_peer_kib": per_peer_kib,
            "idle_cpu_cores": idle_cores,
            "reregistered": rereg.map(|(k, _)| k),
            "reregister_s": rereg.map(|(_, t)| t.as_secs_f64()),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
