//! What the relay costs the server: CPU time of the in-process server's
//! threads (all named [`SERVER_THREAD`]), and the memory of relay
//! allocations, measured in a fresh process (this bench executable started
//! with [`STATE_FLAG`]) so no freed heap of the rest of the bench hides it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rendezvous::relay::{Allocation, PartySpec, RelayConfig, RelayTable};

/// The name of the in-process server's thread and of its runtime's
/// threads (at most 15 bytes: the kernel's `comm`).
pub const SERVER_THREAD: &str = "rdv-bench-srv";
/// Runs this executable as the relay-state probe (see [`state_process_main`]).
pub const STATE_FLAG: &str = "--relay-state-process";
/// Allocations the state probe makes.
pub const ALLOCATIONS: u32 = 10_000;

/// CPU time (user + system) of every live thread of this process named
/// [`SERVER_THREAD`]: the kernel's per-thread `schedstat` run time
/// (nanoseconds), or `stat`'s utime + stime (clock ticks, assumed 100 Hz)
/// where there is no schedstat.
pub fn server_cpu() -> Duration {
    let mut total = Duration::ZERO;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != SERVER_THREAD {
            continue;
        }
        let sched = std::fs::read_to_string(dir.join("schedstat")).ok();
        let ns = sched.and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        total += match ns {
            Some(ns) => Duration::from_nanos(ns),
            None => stat_cpu(&dir).unwrap_or_default(),
        };
    }
    total
}

/// utime + stime of one `/proc/.../task/TID/stat`, at 100 ticks a second.
fn stat_cpu(dir: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // Fields after the `(comm)`: state is the first, utime the 12th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Resident set size of this process, bytes (`/proc/self/statm`, 4 KiB pages).
fn rss() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm without rss")?
        .parse()?;
    Ok(pages * 4096)
}

/// The state probe: [`ALLOCATIONS`] relay allocations in a fresh
/// [`RelayTable`] (each call's two parties at addresses of their own);
/// prints the growth of this process's RSS, in bytes, on stdout.
pub fn state_process_main() -> Result<()> {
    let config = RelayConfig {
        max_allocations: ALLOCATIONS as usize,
        max_per_source: ALLOCATIONS as usize,
        ..RelayConfig::default()
    };
    let mut table = RelayTable::new(config);
    let now = Instant::now();
    let party = |net: u8, i: u32| PartySpec {
        addr: std::net::SocketAddr::from(([10, net, (i >> 8) as u8, i as u8], 40_000)),
        source: std::net::IpAddr::from([10, net, (i >> 8) as u8, i as u8]),
        secret: [i as u8; 32],
    };
    let before = rss()?;
    for i in 0..ALLOCATIONS {
        let alloc = Allocation {
            call_id: i + 1,
            caller: party(1, i),
            callee: party(2, i),
        };
        if let Err(e) = table.allocate(now, alloc) {
            bail!("allocation {i} refused: {e}");
        }
    }
    let after = rss()?;
    if table.len() != ALLOCATIONS as usize {
        bail!("{} allocations in the table", table.len());
    }
    println!("{}", after.saturating_sub(before));
    Ok(())
}

/// Runs the state probe in a child process; its RSS growth in bytes.
pub fn state_rss_growth() -> Result<u64> {
    let out = Command::new(std::env::current_exe()?)
        .arg(STATE_FLAG)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting the relay-state probe")?;
    if !out.status.success() {
        bail!("the relay-state probe exited with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
