//! `rendezvous-load`: how many peers one rendezvous server carries, measured.
//!
//! Starts `target/release/rendezvous` on 127.0.0.1 with its per-source
//! limits lifted (so the tool measures capacity, not the flood limits), or
//! uses a running one (`--server ADDR --fingerprint FP [--server-pid PID]`),
//! then opens N real peer sessions — each its own Ed25519 key, its own QUIC
//! connection and name, spread over several 127.0.0.0/8 source addresses —
//! and measures:
//!
//! - registrations/s during the ramp;
//! - lookups/s over the existing connections (many at once), one lookup at
//!   a time per session and a batch at once per session;
//! - calls brokered/s between pairs of load peers (the callee accepts);
//! - server RSS per connected peer, and server CPU while N peers idle
//!   (their keep-alives);
//! - after the server is stopped (SIGTERM, then SIGKILL) and restarted on
//!   the same data dir, the time until all N are registered again (sessions
//!   notice through the server's close or its stateless resets, and
//!   reconnect with jittered backoff).
//!
//! Prints a markdown table and writes JSON with `--json-out`. Every loop is
//! bounded in count and time; all traffic stays on loopback.
//!
//! ```text
//! cargo build --release -p rendezvous -p load
//! target/release/rendezvous-load --peers 10000
//! ```
//!
//! With `--nodes N --bus nats://USER:PASS@127.0.0.1:PORT [--store URL]` it
//! starts N cluster nodes instead (one `--identity` key, one bus, node ids
//! `n1`…), spreads the peers round-robin over them, and measures lookups and
//! calls at the caller's node and across nodes, the brokering time of each,
//! and each node's CPU per operation (see `cluster`). `--baseline FILE`
//! (the `--json-out` of a `--nodes 1` run) adds the ratio to one node;
//! `scripts/cluster-bench.sh` runs both.
//!
//! # Layout
//!
//! - `server`: the server process (start, stop, RSS and CPU from `/proc`).
//! - `swarm`: the load peers (keys, endpoints, sessions, requests).
//! - `phases`: ramp, lookups, calls, restart drills.
//! - `report`: the table and the JSON.
//! - `cluster`, `report_cluster`: a cluster run and its table.
//! - `plan`: the pure decisions of a cluster run (pairs, statistics).

mod bus;
mod cluster;
mod phases;
mod plan;
mod report;
mod report_cluster;
mod server;
mod swarm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use common::Fingerprint;

use crate::phases::Stop;
use crate::report::Report;
use crate::server::{Launch, ServerProc};

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
    /// Seconds of lookups, for each of the two lookup phases.
    #[arg(long, default_value_t = 5.0)]
    lookup_secs: f64,
    /// Lookups sent at once on one session in the batched lookup phase
    /// (at most the server's streams per connection, 8 by default).
    #[arg(long, default_value_t = 8)]
    lookup_batch: usize,
    /// Calls to broker (between pairs of load peers).
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
    /// Seconds to watch the server's CPU while every peer idles.
    #[arg(long, default_value_t = 16.0)]
    idle_secs: f64,
    /// Longest first wait (seconds) of a load peer before reconnecting after
    /// its link was lost; the wait is uniform below it.
    #[arg(long, default_value_t = 1.0)]
    reconnect_jitter: f64,
    /// Longest first wait (seconds) before reconnecting when the server
    /// closed the link (a clean shutdown tells every peer at once). Default:
    /// what the server asks for in its close (as `peer listen` does).
    #[arg(long)]
    close_jitter: Option<f64>,
    /// Skip the restart drills.
    #[arg(long)]
    no_restart: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// More arguments for the server this tool starts, e.g.
    /// `--server-args=--max-pending-handshakes=2048`.
    #[arg(long, allow_hyphen_values = true)]
    server_args: Option<String>,
    /// The server binary (default: `rendezvous` next to this program).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Use a server already running at ADDR (on this machine) instead of
    /// starting one; lift its per-source limits yourself. No restart drill.
    #[arg(long, requires = "fingerprint")]
    server: Option<SocketAddr>,
    /// The running server's fingerprint (with `--server`).
    #[arg(long)]
    fingerprint: Option<Fingerprint>,
    /// The running server's pid (with `--server`), to read its RSS and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start this many cluster nodes (needs `--bus`) and measure the
    /// cluster: same-node and cross-node lookups and calls, CPU per node.
    #[arg(long, requires = "bus", conflicts_with = "server")]
    nodes: Option<usize>,
    /// The NATS bus of the cluster (`nats://USER:PASS@127.0.0.1:PORT`).
    #[arg(long, requires = "nodes")]
    bus: Option<String>,
    /// The shared name store, passed to every node (`postgres://…`).
    #[arg(long, requires = "nodes")]
    store: Option<String>,
    /// Calls of each kind (same-node, cross-node) one at a time, for the
    /// brokering times (with `--nodes`).
    #[arg(long, default_value_t = 200)]
    latency_calls: usize,
    /// The bus's pid, for its CPU per operation (with `--nodes`).
    #[arg(long, requires = "nodes")]
    bus_pid: Option<u32>,
    /// The bus's monitoring address (`nats-server -m PORT`), for its
    /// messages per operation (with `--nodes`).
    #[arg(long, requires = "nodes")]
    bus_monitor: Option<SocketAddr>,
    /// The `--json-out` of a `--nodes 1` run, for ratios (with `--nodes`).
    #[arg(long, requires = "nodes")]
    baseline: Option<PathBuf>,
}

/// `--server-args` split on whitespace.
fn split_args(args: Option<&str>) -> Vec<String> {
    args.unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A whole number of keep-alive intervals (8 s), long enough that the
/// spreading lookups stay near 2,500/s: the phases of the keep-alive timers
/// end up uniform either way.
fn spread_over(peers: usize) -> Duration {
    Duration::from_secs(8 * peers.div_ceil(20_000).max(1) as u64)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.peers < 2 || args.sources == 0 || args.lookup_batch == 0 {
        bail!("--peers must be at least 2, --sources and --lookup-batch at least 1");
    }
    if let (Some(nodes), Some(bus)) = (args.nodes, args.bus.as_deref()) {
        return cluster::run(&args, nodes, bus).await;
    }
    let dir = tempfile::tempdir()?;
    let launch = Launch {
        bin: server::server_bin(args.server_bin.as_deref())?,
        data: dir.path().join("server"),
        peers: args.peers,
        extra: split_args(args.server_args.as_deref()),
        label: "server".into(),
    };
    let mut server = match (args.server, args.fingerprint) {
        (Some(addr), Some(fp)) => ServerProc::external(addr, fp, args.server_pid),
        _ => ServerProc::start(&launch, "127.0.0.1:0")?,
    };
    let server_addr = Arc::new(Mutex::new(server.addr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_kib = server.rss_kib();
    eprintln!(
        "server pid {:?} at {} (RSS {rss_idle_kib} KiB idle)",
        server.pid(),
        server.addr
    );

    let started = Instant::now();
    let endpoints = swarm::endpoints(args.sources)?;
    let clients = Arc::new(swarm::make_clients(args.peers, server.fingerprint, &endpoints).await?);
    let keygen_s = started.elapsed().as_secs_f64();
    eprintln!("{} keys in {keygen_s:.1} s", args.peers);

    // Setup latency of the server link on an idle server (the cost of a
    // Retry shows here when the server is told to always ask for one).
    let handshake = phases::handshake_latency(&clients, server.addr, 200).await;
    if let Some((median, p99, n)) = handshake {
        eprintln!(
            "handshakes one at a time: median {:.2} ms, p99 {:.2} ms ({n})",
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }

    let shared = Arc::new(swarm::Shared::default());
    shared.first_retry_ms.store(
        (args.reconnect_jitter.max(0.0) * 1000.0) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    shared.close_retry_ms.store(
        args.close_jitter
            .map_or(swarm::FOLLOW_SERVER, |s| (s.max(0.0) * 1000.0) as u64),
        std::sync::atomic::Ordering::Relaxed,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sessions = tokio::task::JoinSet::new();
    let ramp = phases::ramp(
        &clients,
        std::slice::from_ref(&server_addr),
        &shared,
        &stop_rx,
        &mut sessions,
        args.concurrency,
    )
    .await;
    eprintln!(
        "ramp: {} registered in {:.1} s",
        ramp.registered,
        ramp.took.as_secs_f64()
    );

    phases::print_counters(&server, "after the ramp");
    // Memory once every handshake has settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_full_kib = server.rss_kib();
    let load_rss_kib = server::rss_kib(std::process::id());

    let time = Duration::from_secs_f64(args.lookup_secs);
    let lookups_single = phases::lookups(&clients, &server, args.concurrency, 1, time).await;
    eprintln!("lookups, 1 at a time: {:.0}/s", lookups_single.per_second);
    let batch = args.lookup_batch;
    let lookups_batch = phases::lookups(&clients, &server, args.concurrency, batch, time).await;
    eprintln!(
        "lookups, {batch} at once: {:.0}/s",
        lookups_batch.per_second
    );
    let calls = phases::calls(&clients, &server, args.concurrency, args.calls).await;
    eprintln!("calls: {:.0}/s ({} failed)", calls.per_second, calls.failed);

    // Idle: only keep-alives, their timers spread evenly first (as on a
    // server whose peers connected at random times).
    phases::spread_keepalives(&clients, spread_over(args.peers)).await;
    let cpu0 = server.cpu_secs();
    let idle = Duration::from_secs_f64(args.idle_secs);
    tokio::time::sleep(idle).await;
    let idle_cores = (server.cpu_secs() - cpu0) / idle.as_secs_f64();
    eprintln!("idle: {idle_cores:.3} cores");

    let mut restarts = vec![];
    if !args.no_restart && server.owned() {
        for stop in [Stop::Kill, Stop::Term] {
            restarts
                .push(phases::restart(&mut server, &launch, &server_addr, &shared, stop).await?);
            // Spread the keep-alive timers again before the next drill.
            phases::spread_keepalives(&clients, spread_over(args.peers)).await;
        }
    }
    let _ = stop_tx.send(true);
    sessions.abort_all();
    server.stop(Duration::from_secs(30));

    let report = Report {
        handshake,
        peers: args.peers,
        sources: args.sources,
        keygen_s,
        ramp,
        rss_idle_kib,
        rss_full_kib,
        load_rss_kib,
        idle_cores,
        lookups_single,
        lookups_batch,
        batch,
        calls,
        restarts,
    };
    println!("\n{}", report.table());
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)?;
    }
    Ok(())
}
