//! The `rendezvous` command: run a server, or print its fingerprint.
//!
//! See `CLI.md` for the contract; this file only parses flags, prints the
//! start-up event and waits for SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rendezvous::cluster::ClusterConfig;
use rendezvous::relay::{ByteRate, RelayConfig};
use rendezvous::store::PgStore;
use rendezvous::{Config, Limits, MappingPort, Rate, Server, StoreChoice};

/// Rendezvous server: peers register names, find each other and get introduced
/// for direct, end-to-end authenticated QUIC calls.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// UDP address to listen on (TCP too, same port number, unless --tcp-listen says otherwise).
    #[arg(long, default_value = "0.0.0.0:7700", env = "RENDEZVOUS_LISTEN")]
    listen: SocketAddr,
    /// TCP address for peers on networks without UDP (TLS + WebSocket), or
    /// `off`. Default: the --listen address (same port number as UDP).
    #[arg(long, env = "RENDEZVOUS_TCP_LISTEN", value_parser = parse_tcp_listen)]
    tcp_listen: Option<TcpListen>,
    /// Folder for the server key and the name bindings (created if missing).
    /// Default: $STATE_DIRECTORY (systemd), else $XDG_DATA_HOME/rendezvous, else ~/.local/share/rendezvous.
    #[arg(long, global = true, env = "RENDEZVOUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The server key file, instead of <data-dir>/server.key (created if
    /// missing): nodes of one cluster point at one key, so peers pin one fingerprint.
    #[arg(long, global = true, env = "RENDEZVOUS_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Print status as JSON lines on stderr.
    #[arg(long, global = true)]
    json: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "RENDEZVOUS_METRICS")]
    metrics: Option<SocketAddr>,
    /// Most peer connections at once.
    #[arg(long, env = "RENDEZVOUS_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Most connections from one source IP.
    #[arg(long, env = "RENDEZVOUS_MAX_CONNECTIONS_PER_IP", default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Handshakes in flight above which every new source must answer a QUIC Retry.
    #[arg(long, env = "RENDEZVOUS_RETRY_ABOVE_PENDING", default_value_t = Limits::default().retry_above_pending)]
    retry_above_pending: usize,
    /// Most handshakes in flight; beyond it new attempts are dropped unanswered.
    #[arg(long, env = "RENDEZVOUS_MAX_PENDING_HANDSHAKES", default_value_t = Limits::default().max_pending_handshakes)]
    max_pending_handshakes: usize,
    /// Registrations per source IP, as BURST/PER_SECOND.
    #[arg(long, env = "RENDEZVOUS_REGISTER_RATE", default_value_t = Limits::default().register_rate, value_parser = parse_rate)]
    register_rate: Rate,
    /// Lookups per source IP, as BURST/PER_SECOND.
    #[arg(long, env = "RENDEZVOUS_LOOKUP_RATE", default_value_t = Limits::default().lookup_rate, value_parser = parse_rate)]
    lookup_rate: Rate,
    /// Calls per source IP, as BURST/PER_SECOND.
    #[arg(long, env = "RENDEZVOUS_CALL_RATE", default_value_t = Limits::default().call_rate, value_parser = parse_rate)]
    call_rate: Rate,
    /// Call offers from one source IP (IPv6: /64) to one callee, as BURST/PER_SECOND.
    #[arg(long, env = "RENDEZVOUS_OFFER_RATE_PER_SOURCE", default_value_t = Limits::default().offer_rate_per_source, value_parser = parse_rate)]
    offer_rate_per_source: Rate,
    /// Call offers to one callee from everyone (its pre-approved contacts not counted), as BURST/PER_SECOND.
    #[arg(long, env = "RENDEZVOUS_OFFER_RATE_PER_CALLEE", default_value_t = Limits::default().offer_rate_per_callee, value_parser = parse_rate)]
    offer_rate_per_callee: Rate,
    /// Call offers from one pre-approved key to the callee that approved it, as BURST/PER_SECOND.
    #[arg(long, env = "RENDEZVOUS_OFFER_RATE_PER_CONTACT", default_value_t = Limits::default().offer_rate_per_contact, value_parser = parse_rate)]
    offer_rate_per_contact: Rate,
    /// Most handshakes in flight from one source (an IPv6 /64 is one) while the queue is busy (past --retry-above-pending); past it attempts are dropped, the peers retransmit.
    #[arg(long, env = "RENDEZVOUS_MAX_PENDING_PER_SOURCE", default_value_t = Limits::default().max_pending_handshakes_per_source)]
    max_pending_per_source: usize,
    /// Most handshakes in flight from one source at any time, busy queue or not; past it attempts are dropped, the peers retransmit.
    #[arg(long, env = "RENDEZVOUS_MAX_PENDING_PER_SOURCE_IDLE", default_value_t = Limits::default().max_pending_handshakes_per_source_idle)]
    max_pending_per_source_idle: usize,
    /// Most names one key may hold; past it registrations get `too_many_names`.
    #[arg(long, env = "RENDEZVOUS_MAX_NAMES_PER_KEY", default_value_t = Limits::default().max_names_per_key)]
    max_names_per_key: usize,
    /// The relay on the same port, for calls with no direct path: on or off.
    #[arg(long, env = "RENDEZVOUS_RELAY", value_enum, default_value_t = OnOff::On)]
    relay: OnOff,
    /// The mapping check port: a second UDP port answering UDP checks, so
    /// peers learn whether their NAT maps per destination (a symmetric NAT
    /// needs a birthday attempt to go direct). A port number (on the
    /// --listen IP; must be free), or `off`. Default: the --listen port + 1
    /// when free (a warning and none when not).
    #[arg(long, env = "RENDEZVOUS_MAPPING_PORT", value_name = "PORT|off", value_parser = parse_mapping_port)]
    mapping_port: Option<MappingPort>,
    /// Rate of each direction of a relayed call, bytes per second (suffixes
    /// KiB, MiB, GiB), or `off` for none.
    #[arg(long, env = "RENDEZVOUS_RELAY_RATE", default_value = "10MiB", value_parser = parse_relay_rate)]
    relay_rate: RelayRate,
    /// Where the name bindings live: a PostgreSQL URL
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DB; TLS unless on loopback or
    /// sslmode=disable), shared by the nodes of a cluster. Default: names.redb
    /// in the data dir.
    #[arg(long, env = "RENDEZVOUS_STORE", value_name = "URL")]
    store: Option<String>,
    /// Worker threads: 0 = one per core. 1 runs everything on one thread,
    /// which answers lookups ~1.7× faster per core (no wake-ups across
    /// threads) but does handshakes (restarts, ramps) on one core only.
    #[arg(long, env = "RENDEZVOUS_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    threads: u16,
    /// The cluster bus (NATS) shared with other nodes: `nats://[user:pass@|token@]HOST:PORT`
    /// (`tls://` for TLS; required off loopback). Without it: one node.
    #[arg(long, env = "RENDEZVOUS_BUS")]
    bus: Option<String>,
    /// A NATS credentials file (JWT + nkey seed) for --bus.
    #[arg(long, env = "RENDEZVOUS_BUS_CREDS")]
    bus_creds: Option<PathBuf>,
    /// The CA certificate(s) (PEM) the bus's TLS certificate is checked
    /// against, for a cluster's own CA (implies TLS).
    #[arg(long, env = "RENDEZVOUS_BUS_CA")]
    bus_ca: Option<PathBuf>,
    /// This node's id in its cluster (letters, digits, - and _).
    /// Default: derived from the host name and the listen port.
    #[arg(long, env = "RENDEZVOUS_NODE_ID")]
    node_id: Option<String>,
    /// Where the other nodes reach this node's UDP port (for relay frames
    /// between nodes). Default: the --listen address, unless it is 0.0.0.0 or [::].
    #[arg(long, env = "RENDEZVOUS_NODE_ADDR")]
    node_addr: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The cluster this node joins, from `--bus`, `--node-id` and `--node-addr`.
fn cluster_config(cli: &Cli, listen: SocketAddr) -> anyhow::Result<Option<ClusterConfig>> {
    let Some(bus) = cli.bus.clone() else {
        if cli.node_id.is_some()
            || cli.node_addr.is_some()
            || cli.bus_creds.is_some()
            || cli.bus_ca.is_some()
        {
            anyhow::bail!("--node-id, --node-addr, --bus-creds and --bus-ca need --bus");
        }
        return Ok(None);
    };
    let node_id = match &cli.node_id {
        Some(id) => id.clone(),
        None => default_node_id(listen.port()),
    };
    if !rendezvous::cluster::valid_node_id(&node_id) {
        anyhow::bail!("--node-id {node_id:?}: use 1-64 letters, digits, - and _");
    }
    let node_addr = match cli.node_addr {
        Some(addr) => addr,
        None if !listen.ip().is_unspecified() => listen,
        None => anyhow::bail!(
            "--bus with --listen {listen} needs --node-addr: the address the other nodes reach this node's UDP port at"
        ),
    };
    let mut config = ClusterConfig::new(bus, node_id, node_addr);
    config.creds = cli.bus_creds.clone();
    config.ca = cli.bus_ca.clone();
    Ok(Some(config))
}

/// `HOSTNAME-PORT`, with anything a subject cannot hold turned into `-`.
fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .trim()
        .chars()
        .take(50)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{port}")
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the server fingerprint (creating the key if needed), to hand to peers.
    Fingerprint,
}

/// A rate flag or variable ([`Rate`]'s `FromStr`: zero, negative or
/// non-finite rates are refused).
fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse().map_err(|e: rendezvous::RateError| e.to_string())
}

/// A `--mapping-port`: a port, `auto` or `off`.
fn parse_mapping_port(s: &str) -> Result<MappingPort, String> {
    s.parse()
        .map_err(|e: rendezvous::mapping::MappingPortError| e.to_string())
}

/// A `--tcp-listen`: an address, or off.
#[derive(Debug, Clone, Copy)]
enum TcpListen {
    At(SocketAddr),
    Off,
}

fn parse_tcp_listen(s: &str) -> Result<TcpListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(TcpListen::Off);
    }
    s.parse()
        .map(TcpListen::At)
        .map_err(|e| format!("{e}: expected IP:PORT (e.g. 0.0.0.0:443) or off"))
}

/// A switch flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// A `--relay-rate`: a limit, or none.
#[derive(Debug, Clone, Copy)]
struct RelayRate(Option<ByteRate>);

fn parse_relay_rate(s: &str) -> Result<RelayRate, String> {
    if s == "off" {
        return Ok(RelayRate(None));
    }
    s.parse()
        .map(|r| RelayRate(Some(r)))
        .map_err(|e: rendezvous::relay::ByteRateError| format!("{e}, or off"))
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("rendezvous")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Checked here, not by clap, so the error never echoes the URL (it may
    // hold a password); still a usage error (exit 2).
    let store = match cli.store.as_deref().map(str::parse::<StoreChoice>) {
        None => StoreChoice::Embedded,
        Some(Ok(store)) => store,
        Some(Err(e)) => {
            use clap::CommandFactory;
            Cli::command()
                .error(clap::error::ErrorKind::InvalidValue, e.to_string())
                .exit()
        }
    };
    let json = cli.json;
    match run(cli, store) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            if json {
                eprintln!(
                    "{}",
                    serde_json::json!({"event": "error", "kind": "internal", "message": message})
                );
            } else {
                eprintln!("rendezvous: {message}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, store: StoreChoice) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    if let Some(Command::Fingerprint) = cli.command {
        let identity = match &cli.identity {
            Some(file) => rendezvous::load_identity_file(file)
                .with_context(|| format!("identity {}", file.display()))?,
            None => {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("data dir {}", data_dir.display()))?;
                rendezvous::load_identity(&data_dir)?
            }
        };
        println!("{}", identity.fingerprint());
        return Ok(());
    }
    // Colours only for a person at a terminal: logs piped to a file or
    // journald stay plain text.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = match cli.threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    runtime.block_on(serve(cli, data_dir, store))
}

async fn serve(cli: Cli, data_dir: PathBuf, store: StoreChoice) -> anyhow::Result<()> {
    let mut config = Config::new(cli.listen, data_dir);
    config.identity = cli.identity.clone();
    config.store = store;
    config.limits.max_connections = cli.max_connections;
    config.limits.max_connections_per_ip = cli.max_connections_per_ip;
    config.limits.retry_above_pending = cli.retry_above_pending;
    config.limits.max_pending_handshakes = cli.max_pending_handshakes;
    config.limits.register_rate = cli.register_rate;
    config.limits.lookup_rate = cli.lookup_rate;
    config.limits.call_rate = cli.call_rate;
    config.limits.offer_rate_per_source = cli.offer_rate_per_source;
    config.limits.offer_rate_per_callee = cli.offer_rate_per_callee;
    config.limits.offer_rate_per_contact = cli.offer_rate_per_contact;
    config.limits.max_pending_handshakes_per_source = cli.max_pending_per_source;
    config.limits.max_pending_handshakes_per_source_idle = cli.max_pending_per_source_idle;
    config.limits.max_names_per_key = cli.max_names_per_key;
    config.relay = (cli.relay == OnOff::On).then(|| RelayConfig {
        rate: cli.relay_rate.0,
        ..RelayConfig::default()
    });
    config.mapping_port = cli.mapping_port.unwrap_or_default();
    match cli.tcp_listen {
        Some(TcpListen::Off) => config.tcp = None,
        Some(TcpListen::At(addr)) => {
            if let Some(tcp) = &mut config.tcp {
                tcp.listen = Some(addr);
            }
        }
        None => {}
    }
    let (server, store) = start_server(config).await?;
    let addr = server.local_addr()?;
    let node = match cluster_config(&cli, addr)? {
        Some(cluster) => {
            let node = cluster.node_id.clone();
            server.join(cluster).await?;
            Some(node)
        }
        None => None,
    };
    let tcp_addr = server.tcp_addr();
    let mapping_addr = server.mapping_addr();
    let fingerprint = server.fingerprint();
    if let Some(metrics_addr) = cli.metrics {
        let listener = rendezvous::http::bind(metrics_addr)
            .await
            .with_context(|| format!("metrics listener on {metrics_addr}"))?;
        tokio::spawn(rendezvous::http::serve(listener, server.metrics_handle()));
    }
    let relay_rate = server.relay_config().map(|r| r.rate.map(|r| r.per_second));
    if cli.json {
        let mut event = serde_json::json!({"event": "listening", "addr": addr.to_string(), "fingerprint": fingerprint.to_string(), "store": store});
        if let Some(tcp) = tcp_addr {
            event["tcp_addr"] = tcp.to_string().into();
        }
        if let Some(node) = &node {
            event["node"] = node.clone().into();
        }
        if let Some(mapping) = mapping_addr {
            event["mapping_addr"] = mapping.to_string().into();
        }
        if let Some(rate) = relay_rate {
            // `relay_rate`: bytes per second per direction of a call; null: none.
            event["relay"] = true.into();
            event["relay_rate"] = rate.into();
        }
        eprintln!("{event}");
    } else {
        match tcp_addr {
            Some(tcp) => eprintln!("rendezvous listening on {addr} (UDP) and {tcp} (TCP)"),
            None => eprintln!("rendezvous listening on {addr} (UDP; TCP off)"),
        }
        match relay_rate {
            Some(Some(rate)) => {
                eprintln!("relay on, {} KiB/s per direction of a call", rate / 1024)
            }
            Some(None) => eprintln!("relay on, no rate limit"),
            None => eprintln!("relay off"),
        }
        match mapping_addr {
            Some(mapping) => eprintln!("mapping check on {mapping} (UDP; open it too)"),
            None => {
                eprintln!("mapping check port off (peers behind symmetric NATs stay on the relay)")
            }
        }
        if let Some(node) = &node {
            eprintln!("node {node} of a cluster (bus joined)");
        }
        eprintln!("name store: {store}");
        eprintln!("fingerprint: {fingerprint}");
        eprintln!(
            "peers use: peer --server HOST:{} --server-fingerprint {fingerprint} ...",
            addr.port()
        );
    }
    server.run(shutdown_signal()).await;
    Ok(())
}

/// Opens the name store `config` names and binds the server; also says
/// which store it is (`embedded`, or the PostgreSQL URL without password).
/// A PostgreSQL that cannot be reached now fails the start.
async fn start_server(config: Config) -> anyhow::Result<(Server, String)> {
    match config.store.clone() {
        StoreChoice::Embedded => {
            let names = config.data_dir.join("names.redb");
            tracing::info!(path = %names.display(), "name store: embedded (redb)");
            Ok((Server::bind(config)?, "embedded".to_owned()))
        }
        StoreChoice::Postgres(url) => {
            let store = PgStore::connect(&url)
                .await
                .context("cannot use the PostgreSQL name store (--store)")?;
            let at = store.describe().to_owned();
            tracing::info!(%at, "name store: PostgreSQL");
            Ok((Server::with_store(config, Arc::new(store))?, at))
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
