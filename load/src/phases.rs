//! The measured phases: ramp, lookups, calls, idle, restart. Each is
//! bounded in time (and its loops in count) and returns plain numbers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use common::Message;
use rand::Rng;

use crate::server::{udp_drops, Launch, ServerProc};
use crate::swarm::{request, requests, session, Client, Shared};

/// Longest any phase waits for the whole swarm.
const PHASE_LIMIT: Duration = Duration::from_secs(600);

/// Prints the server's handshake counters (what a phase cost it).
pub(crate) fn print_counters(server: &ServerProc, when: &str) {
    let wanted = [
        "rendezvous_connections_total",
        "rendezvous_handshakes_failed_total",
        "rendezvous_retries_total",
        "rendezvous_handshakes_dropped_total",
        "rendezvous_connections_refused_total",
        "rendezvous_registrations_total",
    ];
    let shown: Vec<String> = server
        .counters()
        .into_iter()
        .filter(|(n, _)| wanted.contains(&n.as_str()))
        .map(|(n, v)| format!("{}={v}", n.trim_start_matches("rendezvous_")))
        .collect();
    if !shown.is_empty() {
        eprintln!("server counters {when}: {}", shown.join(" "));
    }
}

/// Waits until `pred` holds (checked every 20 ms) or `limit` passes.
pub(crate) async fn wait_until(limit: Duration, pred: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pred()
}

/// Handshake times on an idle server, one at a time: (median, 99th
/// percentile, count). One at a time from one source, the server never asks
/// for a Retry, unless it was started with `--retry-above-pending 0`.
pub(crate) async fn handshake_latency(
    clients: &[Arc<Client>],
    server: SocketAddr,
    n: usize,
) -> Option<(Duration, Duration, usize)> {
    let mut times = vec![];
    for c in clients.iter().take(n) {
        if let Ok(t) = crate::swarm::handshake_time(c, server).await {
            times.push(t);
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (!times.is_empty()).then(|| (at(0.5), at(0.99), times.len()))
}

/// What the ramp did.
pub(crate) struct Ramp {
    /// Sessions registered at the end.
    pub(crate) registered: usize,
    /// How long it took.
    pub(crate) took: Duration,
    /// UDP datagrams the kernel dropped meanwhile (whole machine).
    pub(crate) drops: u64,
}

/// Starts every session, keeping at most `concurrency` registrations in
/// flight; ends when all are registered, when nobody new registered for
/// 30 s (the machine is saturated), or after 600 s. Session `i` uses
/// `servers[i % servers.len()]` (one server, or the node round-robin gives it).
pub(crate) async fn ramp(
    clients: &[Arc<Client>],
    servers: &[Arc<Mutex<SocketAddr>>],
    shared: &Arc<Shared>,
    stop: &tokio::sync::watch::Receiver<bool>,
    sessions: &mut tokio::task::JoinSet<()>,
    concurrency: usize,
) -> Ramp {
    let (start, drops) = (Instant::now(), udp_drops());
    let deadline = start + PHASE_LIMIT;
    for (i, c) in clients.iter().enumerate() {
        while i.saturating_sub(shared.registered.load(Ordering::SeqCst)) >= concurrency
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let server = servers[i % servers.len().max(1)].clone();
        let (shared, stop) = (shared.clone(), stop.clone());
        sessions.spawn(session(c.clone(), server, shared, stop));
    }
    let (mut last, mut progress_at) = (0, Instant::now());
    while Instant::now() < deadline {
        let all = wait_until(Duration::from_secs(5), || {
            shared.registered.load(Ordering::SeqCst) >= clients.len()
        })
        .await;
        let now = shared.registered.load(Ordering::SeqCst);
        eprintln!(
            "ramp: {now} registered after {:.0} s",
            start.elapsed().as_secs_f64()
        );
        if all {
            break;
        }
        if now > last {
            (last, progress_at) = (now, Instant::now());
        } else if progress_at.elapsed() > Duration::from_secs(30) {
            eprintln!("ramp stalled at {now}: stopping it here");
            break;
        }
    }
    Ramp {
        registered: shared.registered.load(Ordering::SeqCst),
        took: start.elapsed(),
        drops: udp_drops().saturating_sub(drops),
    }
}

/// Throughput of one request phase.
pub(crate) struct Rate {
    /// Answers per second.
    pub(crate) per_second: f64,
    /// Requests that failed.
    pub(crate) failed: usize,
    /// Server CPU (cores) meanwhile, if its pid is known.
    pub(crate) server_cores: f64,
}

impl Rate {
    /// The rate of `ok` answers since `start`, and the server's CPU since
    /// it stood at `cpu0` seconds.
    fn since(
        ok: &AtomicUsize,
        failed: &AtomicUsize,
        start: Instant,
        cpu0: f64,
        server: &ServerProc,
    ) -> Self {
        let secs = start.elapsed().as_secs_f64();
        Self {
            per_second: ok.load(Ordering::Relaxed) as f64 / secs,
            failed: failed.load(Ordering::Relaxed),
            server_cores: (server.cpu_secs() - cpu0) / secs,
        }
    }
}

/// Lookups of random names from random sessions for `time`: `workers`
/// loops, each sending `batch` lookups at once on one connection (batch 1:
/// one at a time, every lookup its own packets; batch 8: a contact list
/// refreshed at once, sharing packets).
pub(crate) async fn lookups(
    clients: &Arc<Vec<Arc<Client>>>,
    server: &ServerProc,
    workers: usize,
    batch: usize,
    time: Duration,
) -> Rate {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (cpu0, start) = (server.cpu_secs(), Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (clients, ok, failed) = (clients.clone(), ok.clone(), failed.clone());
        tasks.spawn(async move {
            while start.elapsed() < time {
                let (conn, msgs) = {
                    let mut rng = rand::thread_rng();
                    let conn = clients[rng.gen_range(0..clients.len())].conn();
                    let msgs: Vec<Message> = (0..batch)
                        .map(|_| Message::Lookup {
                            name: clients[rng.gen_range(0..clients.len())].name.clone(),
                        })
                        .collect();
                    (conn, msgs)
                };
                let Some(conn) = conn else {
                    // Not registered right now: count it, and do not spin.
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                match requests(&conn, &msgs).await {
                    Ok(answers) => {
                        for a in answers {
                            let counter = match a {
                                Message::LookupResult { .. } => &ok,
                                _ => &failed,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(batch, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Rate::since(&ok, &failed, start, cpu0, server)
}

/// `total` calls between pairs (load-2k calls load-2k+1, which accepts),
/// `workers` at once.
pub(crate) async fn calls(
    clients: &Arc<Vec<Arc<Client>>>,
    server: &ServerProc,
    workers: usize,
    total: usize,
) -> Rate {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let next = Arc::new(AtomicUsize::new(0));
    let pairs = (clients.len() / 2).max(1);
    let (cpu0, start) = (server.cpu_secs(), Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.min(total.max(1)) {
        let (clients, ok, failed, next) =
            (clients.clone(), ok.clone(), failed.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total || start.elapsed() > PHASE_LIMIT {
                    break;
                }
                let pair = k % pairs;
                let (caller, callee) = (&clients[2 * pair], &clients[2 * pair + 1]);
                let Some(conn) = caller.conn() else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let msg = Message::Call {
                    to: callee.name.clone(),
                    candidates: vec![],
                    hide_addresses: false,
                };
                let counter = match request(&conn, &msg).await {
                    Ok(Message::CallAccepted { .. }) => &ok,
                    _ => &failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Rate::since(&ok, &failed, start, cpu0, server)
}

/// One lookup from every session at a uniformly random moment within
/// `over`, so that keep-alive timers (8 s after a connection's last packet)
/// are spread evenly again, as on a server whose peers connected at random
/// times — not bunched by the phases before. Bounded: one request each.
pub(crate) async fn spread_keepalives(clients: &[Arc<Client>], over: Duration) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        let Some(conn) = c.conn() else { continue };
        let at = over.mul_f64(rand::thread_rng().gen::<f64>());
        let msg = Message::Lookup {
            name: c.name.clone(),
        };
        tasks.spawn(async move {
            tokio::time::sleep(at).await;
            let _ = request(&conn, &msg).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// How a restart drill stops the old server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM: the server closes every connection; peers notice at once.
    Term,
    /// SIGKILL: a crash; peers notice at their next keep-alive, which the
    /// new server answers with a stateless reset.
    Kill,
}

/// What a restart drill measured.
pub(crate) struct Restart {
    /// How the old server was stopped.
    pub(crate) stop: Stop,
    /// Sessions registered again.
    pub(crate) back: usize,
    /// Of how many.
    pub(crate) of: usize,
    /// From the stop signal to the last registration (or giving up).
    pub(crate) took: Duration,
    /// Registrations by the end of each second.
    pub(crate) timeline: Vec<usize>,
    /// UDP datagrams the kernel dropped meanwhile (whole machine).
    pub(crate) drops: u64,
    /// How the old connections ended (`reset`, `timed_out`, …).
    pub(crate) endings: Vec<(&'static str, usize)>,
    /// CPU seconds the new server spent until the swarm was back.
    pub(crate) server_cpu: f64,
    /// CPU seconds this tool spent meanwhile (the peers' side of it all).
    pub(crate) load_cpu: f64,
}

impl Restart {
    /// The first whole second by which `share` of the swarm was back.
    pub(crate) fn seconds_to(&self, share: f64) -> Option<usize> {
        let need = (self.of as f64 * share).ceil() as usize;
        self.timeline.iter().position(|n| *n >= need).map(|i| i + 1)
    }
}

/// Stops the server (`stop`), starts it again on the same address and data
/// dir, and times the swarm's return (bounded: 120 s, or 2 ms per session).
pub(crate) async fn restart(
    server: &mut ServerProc,
    launch: &Launch,
    addr_slot: &Mutex<SocketAddr>,
    shared: &Shared,
    stop: Stop,
) -> Result<Restart> {
    let of = shared.registered.load(Ordering::SeqCst);
    let addr = server.addr;
    let drops = udp_drops();
    let load_cpu0 = crate::server::cpu_secs(std::process::id());
    let began = Instant::now();
    shared.new_epoch();
    match stop {
        Stop::Term => server.stop(Duration::from_secs(10)),
        Stop::Kill => server.kill(),
    }
    let stopped = began.elapsed();
    *server = ServerProc::start(launch, &addr.to_string())?;
    let listening = began.elapsed();
    *addr_slot.lock().map_err(|_| anyhow!("poisoned"))? = server.addr;
    let mut timeline = vec![];
    // At most 120 s, or 2 ms per session for large swarms.
    let limit = 120.max(of / 500);
    for _ in 0..limit {
        let all = wait_until(Duration::from_secs(1), || {
            shared.epoch_registrations.load(Ordering::SeqCst) >= of
        })
        .await;
        timeline.push(shared.epoch_registrations.load(Ordering::SeqCst));
        if all {
            break;
        }
    }
    let back = shared.epoch_registrations.load(Ordering::SeqCst);
    let took = began.elapsed();
    print_counters(server, &format!("after the {stop:?} restart"));
    let endings: Vec<(&'static str, usize)> = shared
        .endings
        .lock()
        .map(|e| e.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default();
    eprintln!("how the old connections ended: {endings:?}");
    eprintln!(
        "restart ({stop:?}): old server gone after {:.2} s, new one listening after {:.2} s; {back} of {of} back after {:.1} s; by second: {timeline:?}",
        stopped.as_secs_f64(),
        listening.as_secs_f64(),
        took.as_secs_f64()
    );
    Ok(Restart {
        stop,
        back,
        of,
        took,
        timeline,
        drops: udp_drops().saturating_sub(drops),
        endings,
        server_cpu: server.cpu_secs(),
        load_cpu: crate::server::cpu_secs(std::process::id()) - load_cpu0,
    })
}
