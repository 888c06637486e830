//! The NAT lab: a small internet of Linux network namespaces per test.
//!
//! A [`Lab`] owns an "internet" router namespace (`inet`) and, on links of
//! their own, the rendezvous server on a public address and sites: a peer
//! with a public address ([`Nat::Open`]), or peers behind NAT routers built
//! with nftables ([`Nat::Cone`], [`Nat::FullCone`], [`Nat::Symmetric`],
//! [`Nat::Cgnat`]), several
//! peers on one LAN, two LAN segments behind one NAT that does not hairpin,
//! a site whose router drops all UDP ([`Nat::UdpBlocked`]). Links can get a
//! one-way delay through NFQUEUE and the `nfq-delay` program (this kernel has
//! no `tc netem`).
//!
//! # Layout
//! - this file: the [`Lab`] guard (namespaces, processes, teardown), the
//!   server, peers' homes, and the checks for leftover namespaces;
//! - [`sites`]: links, NAT routers and LANs ([`Nat`], [`Site`], [`Host`]);
//! - [`delay`]: NFQUEUE link delay and RTT measurement with `ping`;
//! - [`paths`]: a direct path cut and restored, a NAT rebinding, packet
//!   counters; [`calls`]: listeners, pings and event watches for call tests;
//! - [`udp`]: the `lab-udp` probe, with which tests check that each NAT kind
//!   behaves as its name says.
//!
//! Addresses: link `i` between `inet` and a site is `198.18.i.0/24` (`.1` is
//! `inet`, `.2` the site's public side; 198.18.0.0/15 is the benchmarking
//! range, so it is neither "private" to the candidate rules nor anyone's real
//! address). The server is on link 0 at `198.18.0.2`. A home LAN behind site
//! `i` is `192.168.i.0/24` (a second segment `192.168.(100+i).0/24`); a
//! carrier NAT's inside is `100.64.i.0/24`.
//!
//! Names: every namespace of a lab starts with `rdvlab<pid>t<tag>x<n>-`, so tests
//! can run in parallel and a leak is easy to find ([`leftover_namespaces`];
//! [`stale_namespaces`] of killed processes are swept before a process's
//! first lab). Interfaces are created directly inside their namespaces, so
//! their short names (`wan`, `lan`, `s3`) never meet in the root namespace. Dropping a `Lab` (also while a test panics) kills its
//! processes and deletes its namespaces, and panics if one survived (unless
//! the test is already panicking; then it prints the names).
//!
//! [`Lab::new`] returns `None` (after printing why) when the machine has no
//! root or cannot create network namespaces — unless `CI` is set, where it
//! panics: in CI the lab must run.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod calls;
pub mod delay;
pub mod paths;
pub mod sites;
pub mod udp;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub use sites::{Host, Nat, Site};

use crate::proc::{PeerHome, Proc, ServerProc};

/// Prefix of every lab namespace of every process.
pub const PREFIX: &str = "rdvlab";

/// The server's address on link 0.
pub const SERVER: &str = "198.18.0.2:7700";

/// One test's internet. See the module docs.
pub struct Lab {
    /// Prefix of this lab's namespaces, `rdvlab<pid>t<tag>x<n>-`.
    pub id: String,
    inet: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    /// Server data dir and peers' homes.
    pub dir: tempfile::TempDir,
    next_link: u8,
    delay: Option<Duration>,
    pub server: Option<ServerProc>,
}

/// Why the lab cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("the NAT lab needs Linux network namespaces".into());
    }
    let uid = Command::new("id").arg("-u").output();
    let root = uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("the NAT lab needs root (network namespaces, nftables)".into());
    }
    for tool in ["ip", "nft", "iptables", "ping", "conntrack"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is missing (apt-get install -y nftables iptables iproute2 iputils-ping conntrack)"
            ));
        }
    }
    // Root in a container may still be unable to make namespaces.
    let probe = format!("{PREFIX}{}probe", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match made {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip netns add`: {e}")),
    }
}

/// Runs `program args` and panics with its output if it fails.
pub(crate) fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A shell line setting sysctl `key` (dotted) to `value` in the namespace it
/// runs in, by writing `/proc/sys` (no `procps` needed; `/proc/sys/net`
/// shows the writer's namespace).
pub fn sysctl(key: &str, value: impl std::fmt::Display) -> String {
    format!("echo {value} > /proc/sys/{}", key.replace('.', "/"))
}

/// Lab namespaces whose names start with `prefix` that exist now.
pub fn leftover_namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return vec![] };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The process id in a lab namespace's name (`rdvlab<pid>t<tag>x<n>-...`).
pub fn owner_pid(namespace: &str) -> Option<u32> {
    let rest = namespace.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How old a namespace of a process that no longer runs here must be before
/// it counts as stale. A machine's `/run/netns` may be shared with other CI
/// jobs in other pid namespaces, whose live labs look "dead" from here; no
/// lab lives this long, so an old one is a leftover, never a live lab.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Namespaces starting with `prefix` left by processes that no longer run
/// (a test binary killed before its guards ran) and at least `min_age`
/// old. Never those of a live test of this machine.
pub fn stale_namespaces(prefix: &str, min_age: Duration) -> Vec<String> {
    leftover_namespaces(prefix)
        .into_iter()
        .filter(|ns| {
            owner_pid(ns).is_some_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists())
        })
        .filter(|ns| {
            // The entry's time is the namespace's creation.
            std::fs::metadata(format!("/run/netns/{ns}"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age)
        })
        .collect()
}

/// Kills whatever runs in `ns` and deletes it. `ip netns del` can fail for
/// a moment (`EBUSY` while another `ip netns exec` copies the mount table),
/// so it is tried a few times, bounded. Returns why it failed, if it did.
pub fn delete_namespace(ns: &str) -> Result<(), String> {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
        let pids = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !pids.is_empty() {
            // The shell's own `kill`: no procps needed.
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -9 {pids}")])
                .status();
        }
    }
    let mut why = String::new();
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        match Command::new("ip").args(["netns", "del", ns]).output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => why = String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => why = e.to_string(),
        }
        if !leftover_namespaces(ns).contains(&ns.to_owned()) {
            return Ok(());
        }
    }
    Err(format!("{ns}: {why}"))
}

/// Deletes the [`stale_namespaces`] starting with `prefix` and says so on
/// stderr. Every lab process does this once, before its first lab, for
/// `PREFIX` and [`STALE_AFTER`], so leftovers of a killed run are cleared.
/// Returns what it found.
pub fn sweep_stale_namespaces(prefix: &str, min_age: Duration) -> Vec<String> {
    let stale = stale_namespaces(prefix, min_age);
    if stale.is_empty() {
        return stale;
    }
    let failed: Vec<String> = stale
        .iter()
        .filter_map(|ns| delete_namespace(ns).err())
        .collect();
    let line = format!(
        "\nNAT lab: deleted namespaces left by processes that no longer run: {stale:?}{}\n",
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (could not delete: {failed:?})")
        }
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    stale
}

/// This process's part of its labs' names: its pid, for [`owner_pid`], and
/// a random tag, so that processes with the same pid in other pid namespaces
/// (CI jobs sharing `/run/netns`) never pick the same names.
fn process_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{}t{:06x}", std::process::id(), h.finish() & 0xff_ffff)
    })
}

impl Lab {
    /// A lab with just the internet router, or `None` when the machine
    /// cannot run the lab (and `CI` is not set; then this panics).
    pub fn new(test: &str) -> Option<Self> {
        static WHY: OnceLock<Option<String>> = OnceLock::new();
        if let Some(why) = WHY.get_or_init(unavailable) {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but the NAT lab cannot run ({test}): {why}");
            }
            // Straight to stderr, past the test harness's capture, so the
            // skip is seen even when the test passes.
            let line = format!("\nskipping NAT-lab test {test}: {why}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            return None;
        }
        static SWEPT: OnceLock<Vec<String>> = OnceLock::new();
        SWEPT.get_or_init(|| sweep_stale_namespaces(PREFIX, STALE_AFTER));
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{PREFIX}{}x{}-",
            process_tag(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            inet: format!("{id}inet"),
            id,
            namespaces: vec![],
            procs: vec![],
            dir: tempfile::tempdir().expect("tempdir"),
            next_link: 1,
            delay: None,
            server: None,
        };
        let inet = lab.inet.clone();
        lab.add_ns(&inet);
        lab.sh(&inet, &sysctl("net.ipv4.ip_forward", 1));
        Some(lab)
    }

    /// Creates namespace `name`, owned (and deleted) by this lab.
    fn add_ns(&mut self, name: &str) {
        run("ip", &["netns", "add", name]);
        self.namespaces.push(name.to_owned());
        self.sh(name, "ip link set lo up");
    }

    /// `sh -c script` inside namespace `ns`; panics with the output on failure.
    pub fn sh(&self, ns: &str, script: &str) -> String {
        run("ip", &["netns", "exec", ns, "sh", "-euc", script])
    }

    /// Keeps `proc` alive until the lab is dropped (killed before the
    /// namespaces go).
    pub fn keep(&mut self, proc: Proc) {
        self.procs.push(proc);
    }

    /// Starts the rendezvous server on [`SERVER`] (link 0).
    pub fn start_server(&mut self) -> &ServerProc {
        let ns = self.server_ns();
        self.add_ns(&ns);
        self.uplink_at(&ns, 0);
        self.server = Some(ServerProc::start(
            Some(&ns),
            SERVER,
            &self.dir.path().join("server"),
            &[],
        ));
        self.server.as_ref().expect("server")
    }

    /// The server's namespace.
    pub fn server_ns(&self) -> String {
        format!("{}srv", self.id)
    }

    /// Kills the server (SIGKILL).
    pub fn kill_server(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.proc.kill();
        }
    }

    /// A `PeerHome` for a user living on `host`, using this lab's server.
    pub fn home(&self, who: &str, host: &Host) -> PeerHome {
        let server = self.server.as_ref().expect("start_server first");
        let mut home = PeerHome::new(self.dir.path().join(who), server);
        home.netns = Some(host.ns.clone());
        home
    }

    /// Paths of files the lab keeps (the server's data dir, peers' homes).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (they live in the namespaces), then namespaces.
        if let Some(s) = self.server.as_mut() {
            s.proc.kill();
        }
        for p in &mut self.procs {
            p.kill();
        }
        // Anything still running inside (a peer a test leaked) goes too.
        let failed: Vec<String> = self
            .namespaces
            .iter()
            .rev()
            .filter_map(|ns| delete_namespace(ns).err())
            .collect();
        let left = leftover_namespaces(&self.id);
        if left.is_empty() {
            return;
        }
        let msg = format!(
            "NAT lab {}: could not delete namespaces {left:?} ({failed:?})",
            self.id
        );
        if std::thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_writes_proc_sys() {
        assert_eq!(
            sysctl("net.netfilter.nf_conntrack_udp_timeout", 15),
            "echo 15 > /proc/sys/net/netfilter/nf_conntrack_udp_timeout"
        );
    }

    #[test]
    fn owner_pid_reads_the_pid_out_of_a_lab_name() {
        assert_eq!(owner_pid("rdvlab4242x7-inet"), Some(4242));
        assert_eq!(owner_pid("rdvlab4242t00beefx7-inet"), Some(4242));
        assert_eq!(owner_pid("rdvlab17probe"), Some(17));
        assert_eq!(owner_pid("other4242x7-inet"), None);
        assert_eq!(owner_pid("rdvlabx7-inet"), None);
    }
}
