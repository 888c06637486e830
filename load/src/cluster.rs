//! A cluster run (`--nodes N --bus URL [--store URL]`): starts N
//! `rendezvous` nodes sharing one server key and one NATS bus (and the
//! store when given), spreads the peers round-robin over them, waits until
//! every node sees the others' names, then measures registrations, lookups
//! and calls at the caller's own node and across nodes, with each node's
//! CPU per operation (from `/proc/PID/stat`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::Message;
use rand::Rng;

use crate::bus::{BusSample, BusWatch};
use crate::plan::{self, Where};
use crate::report_cluster::{ClusterReport, Phase};
use crate::server::{Launch, ServerProc};
use crate::swarm::{self, request, Client};
use crate::Args;

/// Longest wait for the nodes to see each other (and each other's names).
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);

/// Longest any call phase runs.
const CALLS_LIMIT: Duration = Duration::from_secs(120);

/// The whole cluster run.
pub(crate) async fn run(args: &Args, nodes: usize, bus: &str) -> Result<()> {
    let external = args.server.is_some();
    plan::check_cluster(nodes, args.peers, true, external).map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let bin = crate::server::server_bin(args.server_bin.as_deref())?;
    if args.store.is_some() && !supports_store(&bin)? {
        bail!(
            "--store: {} does not list --store in its --help (this build keeps names in its embedded store only); run without --store",
            bin.display()
        );
    }
    let procs = start_nodes(args, nodes, bus, &bin, dir.path())?;
    let fingerprint = procs[0].fingerprint;
    if procs.iter().any(|p| p.fingerprint != fingerprint) {
        bail!("the nodes report different fingerprints: --identity was not shared");
    }
    wait_metric(&procs, "rendezvous_cluster_nodes", |_| nodes - 1).await?;
    eprintln!("{nodes} node(s) up, each sees the others");

    let endpoints = swarm::endpoints(args.sources)?;
    let clients = Arc::new(swarm::make_clients(args.peers, fingerprint, &endpoints).await?);
    let addrs: Vec<Arc<Mutex<SocketAddr>>> =
        procs.iter().map(|p| Arc::new(Mutex::new(p.addr))).collect();
    let per_client: Vec<_> = (0..args.peers)
        .map(|i| addrs[plan::node_of(i, nodes)].clone())
        .collect();
    let shared = Arc::new(swarm::Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sessions = tokio::task::JoinSet::new();

    let meter = Meter {
        procs: &procs,
        bus: BusWatch {
            pid: args.bus_pid,
            monitor: args.bus_monitor,
        },
    };
    let mark = meter.mark();
    let ramp = crate::phases::ramp(
        &clients,
        &per_client,
        &shared,
        &stop_rx,
        &mut sessions,
        args.concurrency,
    )
    .await;
    let registered = ramp.registered;
    let mut phases = vec![meter.phase(
        "registrations (ramp, through all nodes)",
        (registered, args.peers - registered, ramp.took),
        mark,
    )];
    eprintln!("ramp: {registered} in {:.1} s", ramp.took.as_secs_f64());

    // Every node must see the names registered at the others.
    let online = |node: usize| {
        (0..args.peers)
            .filter(|i| plan::node_of(*i, nodes) != node && clients[*i].conn().is_some())
            .count()
    };
    wait_metric(&procs, "rendezvous_cluster_remote_names", online).await?;
    eprintln!("every node sees the other nodes' names");

    let time = Duration::from_secs_f64(args.lookup_secs);
    let kinds: &[Where] = if nodes > 1 {
        &[Where::Same, Where::Cross]
    } else {
        &[Where::Same]
    };
    for &at in kinds {
        let mark = meter.mark();
        let done = lookups(&clients, nodes, at, args.concurrency, time).await;
        phases.push(meter.phase(&format!("lookups, {}", at.label()), done, mark));
    }
    for &at in kinds {
        let mark = meter.mark();
        let (ok, failed, took, _) = calls(&clients, nodes, at, args.concurrency, args.calls).await;
        phases.push(meter.phase(&format!("calls, {}", at.label()), (ok, failed, took), mark));
    }
    let brokering = brokering(&clients, nodes, kinds, args.latency_calls).await;
    let counters: Vec<Vec<(String, f64)>> = procs.iter().map(|p| p.counters()).collect();
    let _ = stop_tx.send(true);
    sessions.abort_all();
    for mut p in procs {
        p.stop(Duration::from_secs(10));
    }
    let report = ClusterReport {
        nodes,
        peers: args.peers,
        store: args
            .store
            .as_ref()
            .map_or("embedded (one per node)", |_| "shared (--store)"),
        phases,
        brokering,
        cluster_calls: counters
            .iter()
            .map(|c| metric(c, "rendezvous_cluster_calls_total").unwrap_or(0.0))
            .collect(),
    };
    report.emit(args.json_out.as_deref(), args.baseline.as_deref())
}

/// Whether the `rendezvous` binary knows `--store` (from its `--help`).
fn supports_store(bin: &Path) -> Result<bool> {
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .with_context(|| format!("{} --help", bin.display()))?;
    Ok(plan::help_lists_store(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

/// A port free for both UDP and TCP on 127.0.0.1 (released just before
/// the node binds it).
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1 after 50 tries")
}

/// Starts nodes n1…nN one after the other (the first creates the shared key).
fn start_nodes(
    args: &Args,
    nodes: usize,
    bus: &str,
    bin: &Path,
    dir: &Path,
) -> Result<Vec<ServerProc>> {
    let identity = dir.join("server.key");
    let mut procs = Vec::with_capacity(nodes);
    for k in 1..=nodes {
        let id = format!("n{k}");
        let mut extra: Vec<String> = vec![
            "--identity".into(),
            identity.display().to_string(),
            "--bus".into(),
            bus.into(),
            "--node-id".into(),
            id.clone(),
        ];
        if let Some(store) = &args.store {
            extra.extend(["--store".into(), store.clone()]);
        }
        extra.extend(crate::split_args(args.server_args.as_deref()));
        let launch = Launch {
            bin: bin.to_owned(),
            data: dir.join(&id),
            peers: args.peers,
            extra,
            label: id.clone(),
        };
        let listen = format!("127.0.0.1:{}", free_port()?);
        let proc = ServerProc::start(&launch, &listen).with_context(|| format!("node {id}"))?;
        eprintln!("node {id}: pid {:?} at {}", proc.pid(), proc.addr);
        procs.push(proc);
    }
    Ok(procs)
}

/// `name`'s value in scraped counters.
fn metric(counters: &[(String, f64)], name: &str) -> Option<f64> {
    counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Polls every node's metric `name` (every 100 ms, at most
/// [`CONVERGE_LIMIT`]) until node k's value is at least `want(k)`.
async fn wait_metric(
    procs: &[ServerProc],
    name: &str,
    want: impl Fn(usize) -> usize,
) -> Result<()> {
    let end = Instant::now() + CONVERGE_LIMIT;
    let wanted: Vec<f64> = (0..procs.len()).map(|k| want(k) as f64).collect();
    loop {
        let now: Vec<f64> = procs
            .iter()
            .map(|p| metric(&p.counters(), name).unwrap_or(-1.0))
            .collect();
        if now.iter().zip(&wanted).all(|(n, w)| n >= w) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{name}: nodes at {now:?}, wanted {wanted:?} within {CONVERGE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every node's CPU and the bus's figures around a phase.
struct Meter<'a> {
    procs: &'a [ServerProc],
    bus: BusWatch,
}

/// Where the figures stood when a phase began.
struct Mark {
    cpus: Vec<f64>,
    bus: BusSample,
}

impl Meter<'_> {
    fn mark(&self) -> Mark {
        Mark {
            cpus: self.procs.iter().map(ServerProc::cpu_secs).collect(),
            bus: self.bus.sample(),
        }
    }

    /// The phase `name` that began at `mark` and did `(ok, failed, took)`.
    fn phase(&self, name: &str, (ok, failed, took): (usize, usize, Duration), mark: Mark) -> Phase {
        let now = self.mark();
        let node_cpu = now
            .cpus
            .iter()
            .zip(&mark.cpus)
            .map(|(a, b)| a - b)
            .collect();
        let bus = now.bus.since(mark.bus);
        eprintln!(
            "{name}: {ok} ok, {failed} failed in {:.1} s",
            took.as_secs_f64()
        );
        Phase::new(name, ok, failed, took, node_cpu, bus)
    }
}

/// Lookups for `time` from random peers of names at their own node or at
/// another: (online answers, other outcomes, time taken).
async fn lookups(
    clients: &Arc<Vec<Arc<Client>>>,
    nodes: usize,
    at: Where,
    workers: usize,
    time: Duration,
) -> (usize, usize, Duration) {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (clients, ok, failed) = (clients.clone(), ok.clone(), failed.clone());
        tasks.spawn(async move {
            let n = clients.len();
            while start.elapsed() < time {
                let (from, target) = {
                    let mut rng = rand::thread_rng();
                    let from = rng.gen_range(0..n);
                    let target = plan::lookup_target(from, rng.gen(), rng.gen(), n, nodes, at);
                    (from, target)
                };
                let (Some(conn), Some(target)) = (clients[from].conn(), target) else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let msg = Message::Lookup {
                    name: clients[target].name.clone(),
                };
                let counter = match request(&conn, &msg).await {
                    Ok(Message::LookupResult { online: true, .. }) => &ok,
                    _ => &failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

/// `total` calls, `workers` at once, between [`plan::pair`]s: (accepted,
/// failed, time taken, Call → CallAccepted time of each accepted call).
async fn calls(
    clients: &Arc<Vec<Arc<Client>>>,
    nodes: usize,
    at: Where,
    workers: usize,
    total: usize,
) -> (usize, usize, Duration, Vec<Duration>) {
    let failed = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.clamp(1, total.max(1)) {
        let (clients, failed, times, next) =
            (clients.clone(), failed.clone(), times.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total || start.elapsed() > CALLS_LIMIT {
                    break;
                }
                match call_once(&clients, k, nodes, at).await {
                    Some(t) => {
                        if let Ok(mut v) = times.lock() {
                            v.push(t);
                        }
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let times = times.lock().map(|v| v.clone()).unwrap_or_default();
    (
        times.len(),
        failed.load(Ordering::Relaxed),
        start.elapsed(),
        times,
    )
}

/// The `k`-th call of a phase; its brokering time if the callee accepted.
async fn call_once(clients: &[Arc<Client>], k: usize, nodes: usize, at: Where) -> Option<Duration> {
    let (caller, callee) = plan::pair(k, clients.len(), nodes, at)?;
    let conn = clients[caller].conn()?;
    let msg = Message::Call {
        to: clients[callee].name.clone(),
        candidates: vec![],
        hide_addresses: false,
    };
    let began = Instant::now();
    match request(&conn, &msg).await {
        Ok(Message::CallAccepted { .. }) => Some(began.elapsed()),
        _ => None,
    }
}

/// Brokering time one call at a time (no queueing), same-node and
/// cross-node calls interleaved so both see the same machine: per kind,
/// (kind, median, p95, accepted, failed).
async fn brokering(
    clients: &[Arc<Client>],
    nodes: usize,
    kinds: &[Where],
    each: usize,
) -> Vec<(Where, Option<(Duration, Duration)>, usize, usize)> {
    let mut times: Vec<Vec<Duration>> = vec![vec![]; kinds.len()];
    let mut failed = vec![0usize; kinds.len()];
    let start = Instant::now();
    // Odd offsets: other callers than the throughput phases' first ones.
    for k in 0..each {
        if start.elapsed() > CALLS_LIMIT {
            break;
        }
        for (j, &at) in kinds.iter().enumerate() {
            match call_once(clients, 7 * k + 1, nodes, at).await {
                Some(t) => times[j].push(t),
                None => failed[j] += 1,
            }
        }
    }
    kinds
        .iter()
        .enumerate()
        .map(|(j, &at)| (at, plan::median_p95(&times[j]), times[j].len(), failed[j]))
        .collect()
}
