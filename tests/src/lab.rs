//! The NAT lab: a small internet of Linux network namespaces per test.
//!
//! A [`Lab`] owns an "internet" router namespace (`inet`) and, on links of
//! their own, the rendezvous server on a public address and sites: a peer
//! with a public address ([`Nat::Open`]), or peers behind NAT routers built
//! with nftables ([`Nat::Cone`], [`Nat::Symmetric`], [`Nat::Cgnat`]), several
//! peers on one LAN, two LAN segments behind one NAT that does not hairpin,
//! a site whose router drops all UDP. Links can get a one-way delay through
//! NFQUEUE and the `nfq-delay` program (this kernel has no `tc netem`).
//!
//! Addresses: link `i` between `inet` and a site is `198.18.i.0/24` (`.1` is
//! `inet`, `.2` the site's public side; 198.18.0.0/15 is the benchmarking
//! range, so it is neither "private" to the candidate rules nor anyone's real
//! address). The server is on link 0 at `198.18.0.2`. A home LAN behind site
//! `i` is `192.168.i.0/24` (a second segment `192.168.(100+i).0/24`); a
//! carrier NAT's inside is `100.64.i.0/24`.
//!
//! Names: every namespace of a lab starts with `rdvlab<pid>x<n>-`, so tests
//! can run in parallel and a leak is easy to find ([`leftover_namespaces`]).
//! Interfaces are created directly inside their namespaces, so their short
//! names (`wan`, `lan`, `s3`) never meet in the root namespace. Dropping a
//! `Lab` (also while a test panics) kills its processes and deletes its
//! namespaces, and says so if one could not be deleted.
//!
//! [`Lab::new`] returns `None` (after printing why) when the machine has no
//! root or no network namespaces — unless `CI` is set, where it panics.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::proc::{bin, command, PeerHome, Proc, ServerProc};

/// Prefix of every lab namespace of every process.
pub const PREFIX: &str = "rdvlab";

/// The kind of network a site has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// A public address, no NAT, no firewall.
    Open,
    /// `masquerade`: endpoint-independent mapping (the port is kept where
    /// free), filtering by address and port, unsolicited packets from the
    /// WAN dropped silently as a home router does.
    Cone,
    /// `masquerade fully-random`: a new public port per destination.
    Symmetric,
    /// A cone home NAT behind a cone carrier NAT in 100.64.0.0/10.
    Cgnat,
    /// A cone NAT whose router drops every UDP packet its LAN sends out.
    UdpBlocked,
}

impl Nat {
    pub fn as_str(self) -> &'static str {
        match self {
            Nat::Open => "open",
            Nat::Cone => "cone",
            Nat::Symmetric => "symmetric",
            Nat::Cgnat => "cgnat",
            Nat::UdpBlocked => "udp-blocked",
        }
    }
}

/// Where a peer lives: its namespace and its own address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// A site on link `index`: its public address and its peers.
#[derive(Clone, Debug)]
pub struct Site {
    pub index: u8,
    pub nat: Nat,
    /// The address the internet sees (the outermost NAT's WAN address).
    pub public: Ipv4Addr,
    /// The namespace that owns `public` (the router, or the peer if open).
    pub edge: String,
    pub hosts: Vec<Host>,
}

/// One test's internet. See the module docs.
pub struct Lab {
    pub id: String,
    inet: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
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
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("the NAT lab needs root (network namespaces, nftables)".into());
    }
    for tool in ["ip", "nft", "iptables"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{tool}` is missing (apt-get install -y nftables iptables iproute2)"
            ));
        }
    }
    None
}

/// Runs `program args` and panics with its output if it fails.
fn run(program: &str, args: &[&str]) -> String {
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

/// Lab namespaces that exist now (from any lab of any process).
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

impl Lab {
    /// A lab with just the internet router, or `None` when the machine
    /// cannot run the lab (and `CI` is not set; then this panics).
    pub fn new(test: &str) -> Option<Self> {
        if let Some(why) = unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but the NAT lab cannot run: {why}");
            }
            eprintln!("skipping NAT-lab test {test}: {why}");
            return None;
        }
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{PREFIX}{}x{}-",
            std::process::id(),
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
        lab.sh(&inet, "sysctl -qw net.ipv4.ip_forward=1");
        Some(lab)
    }

    /// Every uplink added after this call delays what it sends to the
    /// internet by `one_way` (so two sites are 2 × `one_way` apart).
    pub fn with_delay(&mut self, one_way: Duration) -> &mut Self {
        self.delay = Some(one_way);
        self
    }

    fn add_ns(&mut self, name: &str) {
        run("ip", &["netns", "add", name]);
        self.namespaces.push(name.to_owned());
        self.sh(name, "ip link set lo up");
    }

    /// `sh -c script` inside namespace `ns`; panics with the output on failure.
    pub fn sh(&self, ns: &str, script: &str) -> String {
        run("ip", &["netns", "exec", ns, "sh", "-euc", script])
    }

    /// A veth pair `a_if` (in `a`, with `a_addr/24`) ↔ `b_if` (in `b`, `b_addr/24`).
    fn link(&self, a: &str, a_if: &str, a_addr: Ipv4Addr, b: &str, b_if: &str, b_addr: Ipv4Addr) {
        run(
            "ip",
            &[
                "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        );
        self.sh(
            a,
            &format!("ip addr add {a_addr}/24 dev {a_if}; ip link set {a_if} up"),
        );
        self.sh(
            b,
            &format!("ip addr add {b_addr}/24 dev {b_if}; ip link set {b_if} up"),
        );
    }

    /// Connects namespace `ns` to the internet on a new link, as `wan`
    /// with `198.18.i.2`, default route via `inet`. Returns (i, address).
    fn uplink(&mut self, ns: &str) -> (u8, Ipv4Addr) {
        let i = self.next_link;
        self.next_link += 1;
        self.uplink_at(ns, i)
    }

    fn uplink_at(&mut self, ns: &str, i: u8) -> (u8, Ipv4Addr) {
        let public = Ipv4Addr::new(198, 18, i, 2);
        let inet = self.inet.clone();
        self.link(
            ns,
            "wan",
            public,
            &inet,
            &format!("s{i}"),
            Ipv4Addr::new(198, 18, i, 1),
        );
        self.sh(ns, &format!("ip route add default via 198.18.{i}.1"));
        if let Some(d) = self.delay {
            self.delay_egress(ns, "wan", d);
        }
        (i, public)
    }

    /// Delays every packet leaving `ns` through `iface` by `d`.
    pub fn delay_egress(&mut self, ns: &str, iface: &str, d: Duration) {
        let mut cmd = command(Some(ns), &bin("nfq-delay"));
        cmd.args(["--queue", "0", "--delay-ms"])
            .arg(format!("{}", d.as_secs_f64() * 1e3))
            .args(["--max-seconds", "900"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut p = Proc::spawn(&format!("nfq-delay {ns}"), cmd);
        let mut out = p.take_stdout();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 6];
            let _ = tx.send(out.read_exact(&mut buf).is_ok() && &buf == b"ready\n");
        });
        let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
        assert!(ready, "nfq-delay did not start in {ns}:\n{}", p.log());
        self.procs.push(p);
        self.sh(
            ns,
            &format!(
                "iptables -t mangle -A POSTROUTING -o {iface} -j NFQUEUE --queue-num 0 --queue-bypass"
            ),
        );
    }

    /// Starts the rendezvous server on `198.18.0.2:7700` (link 0).
    pub fn start_server(&mut self) -> &ServerProc {
        let ns = format!("{}srv", self.id);
        self.add_ns(&ns);
        self.uplink_at(&ns, 0);
        let server = ServerProc::start(
            Some(&ns),
            "198.18.0.2:7700",
            &self.dir.path().join("server"),
            &[],
        );
        self.server = Some(server);
        self.server.as_ref().expect("server")
    }

    /// Kills the server (SIGKILL).
    pub fn kill_server(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.proc.kill();
        }
    }

    /// Starts the server again in its namespace with the same data dir.
    pub fn restart_server(&mut self) {
        let ns = format!("{}srv", self.id);
        self.kill_server();
        self.server = Some(ServerProc::start(
            Some(&ns),
            "198.18.0.2:7700",
            &self.dir.path().join("server"),
            &[],
        ));
    }

    /// NAT and firewall rules for a router whose internet side is `wan`.
    fn nat_rules(&self, router: &str, random: bool, drop_udp: bool) {
        let masq = if random {
            "masquerade fully-random"
        } else {
            "masquerade"
        };
        let udp = if drop_udp {
            "meta l4proto udp drop"
        } else {
            ""
        };
        self.sh(
            router,
            &format!(
                r#"sysctl -qw net.ipv4.ip_forward=1
nft -f - <<'EOF'
table ip nat {{
  chain post {{ type nat hook postrouting priority srcnat; oifname "wan" {masq}; }}
}}
table inet filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    {udp}
    ct state established,related accept
    iifname != "wan" oifname "wan" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" icmp type echo-request accept
    iifname "wan" drop
  }}
}}
EOF"#
            ),
        );
    }

    /// Sets the NAT's UDP conntrack timeouts (seconds) in a router.
    pub fn udp_timeout(&self, router: &str, secs: u32) {
        self.sh(
            router,
            &format!(
                "sysctl -qw net.netfilter.nf_conntrack_udp_timeout={secs} \
                 net.netfilter.nf_conntrack_udp_timeout_stream={secs}"
            ),
        );
    }

    /// A LAN `lan_if` in `router` with `192.168.net.1/24` and `hosts` peers
    /// (`.2`, `.3`, …) on a bridge. Frames within the LAN are switched, not
    /// filtered (bridge netfilter off), as in a home switch.
    fn lan(&mut self, router: &str, lan_if: &str, net: u8, hosts: usize) -> Vec<Host> {
        let gw = Ipv4Addr::new(192, 168, net, 1);
        self.sh(
            router,
            &format!(
                "ip link add {lan_if} type bridge; ip addr add {gw}/24 dev {lan_if}; ip link set {lan_if} up
                 sysctl -qw net.bridge.bridge-nf-call-iptables=0"
            ),
        );
        (0..hosts)
            .map(|h| {
                let ns = format!("{}p{net}{}", self.id, (b'a' + h as u8) as char);
                self.add_ns(&ns);
                let addr = Ipv4Addr::new(192, 168, net, 2 + h as u8);
                let port = format!("{lan_if}{h}");
                run(
                    "ip",
                    &[
                        "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                        "netns", router,
                    ],
                );
                self.sh(
                    router,
                    &format!("ip link set {port} master {lan_if}; ip link set {port} up"),
                );
                self.sh(
                    &ns,
                    &format!(
                        "ip addr add {addr}/24 dev eth0; ip link set eth0 up; ip route add default via {gw}"
                    ),
                );
                Host { ns, addr }
            })
            .collect()
    }

    /// Adds a site of kind `nat` with `hosts` peers on one LAN.
    pub fn site(&mut self, nat: Nat, hosts: usize) -> Site {
        let i = self.next_link;
        match nat {
            Nat::Open => {
                assert_eq!(hosts, 1, "an open site is one host");
                let ns = format!("{}p{i}", self.id);
                self.add_ns(&ns);
                let (index, public) = self.uplink(&ns);
                Site {
                    index,
                    nat,
                    public,
                    edge: ns.clone(),
                    hosts: vec![Host { ns, addr: public }],
                }
            }
            Nat::Cone | Nat::Symmetric | Nat::UdpBlocked => {
                let router = format!("{}r{i}", self.id);
                self.add_ns(&router);
                let (index, public) = self.uplink(&router);
                self.nat_rules(&router, nat == Nat::Symmetric, nat == Nat::UdpBlocked);
                let hosts = self.lan(&router, "lan", index, hosts);
                Site {
                    index,
                    nat,
                    public,
                    edge: router,
                    hosts,
                }
            }
            Nat::Cgnat => {
                let carrier = format!("{}c{i}", self.id);
                let home = format!("{}r{i}", self.id);
                self.add_ns(&carrier);
                self.add_ns(&home);
                let (index, public) = self.uplink(&carrier);
                // The carrier's inside is the home router's "wan".
                self.link(
                    &home,
                    "wan",
                    Ipv4Addr::new(100, 64, index, 2),
                    &carrier,
                    "cgn",
                    Ipv4Addr::new(100, 64, index, 1),
                );
                self.sh(&home, &format!("ip route add default via 100.64.{index}.1"));
                self.nat_rules(&carrier, false, false);
                self.nat_rules(&home, false, false);
                let hosts = self.lan(&home, "lan", index, hosts);
                Site {
                    index,
                    nat,
                    public,
                    edge: carrier,
                    hosts,
                }
            }
        }
    }

    /// One symmetric NAT with two LAN segments (one peer each) that cannot
    /// reach each other, and no hairpinning: the two peers have no path.
    pub fn split_symmetric_site(&mut self) -> Site {
        let i = self.next_link;
        let router = format!("{}r{i}", self.id);
        self.add_ns(&router);
        let (index, public) = self.uplink(&router);
        self.nat_rules(&router, true, false);
        let mut hosts = self.lan(&router, "lan", index, 1);
        hosts.extend(self.lan(&router, "lanb", 100 + index, 1));
        // The forward chain only lets LAN → wan out; between the segments
        // nothing passes (policy drop), and packets to the router's own
        // public address are not mapped back in (no hairpin).
        Site {
            index,
            nat: Nat::Symmetric,
            public,
            edge: router,
            hosts,
        }
    }

    /// A `PeerHome` for a user living on `host`, using this lab's server.
    pub fn home(&self, who: &str, host: &Host) -> PeerHome {
        let server = self.server.as_ref().expect("start_server first");
        let mut home = PeerHome::new(self.dir.path().join(who), server);
        home.netns = Some(host.ns.clone());
        home
    }

    /// Median round trip of `count` pings from `from` to `to` (ms).
    pub fn rtt_ms(&self, from: &str, to: Ipv4Addr, count: u32) -> f64 {
        let out = self.sh(
            from,
            &format!("ping -n -q -c {count} -i 0.05 -W 2 {to} | tail -1"),
        );
        // rtt min/avg/max/mdev = a/b/c/d ms
        out.split('=')
            .nth(1)
            .and_then(|v| v.trim().split('/').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no ping summary from {from} to {to}: {out}"))
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
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside (a peer a test leaked) goes too.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let left = leftover_namespaces(&self.id);
        if !left.is_empty() {
            eprintln!("NAT lab {}: could not delete namespaces {left:?}", self.id);
        }
    }
}
