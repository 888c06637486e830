//! The `peer` command: a thin layer over the `peer` library (see `CLI.md`).
//!
//! Parses flags, builds a [`peer::Peer`], runs one subcommand, prints status
//! events on stderr (plain or `--json`) and data on stdout, and maps errors to
//! `error` events and exit codes (0 done, 2 usage, 1 anything else).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Call other machines by name: a rendezvous server introduces you, then the
/// two peers talk over a direct, end-to-end authenticated QUIC connection.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// The rendezvous server, HOST:PORT; or several nodes of one cluster,
    /// HOST:PORT,HOST:PORT,… (the peer uses one and moves to the next when
    /// it is lost; a name with several addresses is several nodes).
    #[arg(
        long,
        env = "PEER_SERVER",
        global = true,
        value_name = "HOST:PORT[,HOST:PORT…]"
    )]
    server: Option<String>,
    /// The server's fingerprint (the operator prints it with `rendezvous fingerprint`).
    #[arg(long, env = "PEER_SERVER_FINGERPRINT", global = true)]
    server_fingerprint: Option<String>,
    /// This peer's name (needed to listen and to call).
    #[arg(long, env = "PEER_NAME", global = true)]
    name: Option<String>,
    /// Identity key file (created on first use). Default: ~/.config/peer/identity.pem.
    #[arg(long, env = "PEER_IDENTITY", global = true)]
    identity: Option<PathBuf>,
    /// known_peers file (contacts' pinned keys). Default: ~/.config/peer/known_peers.
    #[arg(long, env = "PEER_KNOWN_PEERS", global = true)]
    known_peers: Option<PathBuf>,
    /// Local UDP address of the one socket.
    #[arg(long, default_value = "0.0.0.0:0", global = true)]
    bind: SocketAddr,
    /// How to reach the server: `auto` tries UDP and falls back to a TLS
    /// tunnel over TCP when UDP gets no answer (through `HTTPS_PROXY` if
    /// set, except for `NO_PROXY` hosts); `udp` or `tcp` force one.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto, global = true)]
    transport: TransportArg,
    /// Seconds between checks whether UDP works again while on TCP (tuning for tests).
    #[arg(long = "udp-retry", value_name = "SECS", hide = true, global = true)]
    udp_retry: Option<f64>,
    /// Birthday attempts through a symmetric NAT, its side: extra sockets
    /// opened (each one NAT mapping for a few seconds); 0: none.
    #[arg(long, value_name = "N", default_value_t = 256, global = true)]
    birthday_sockets: usize,
    /// Birthday attempts, the cone side: guessed ports pinged per second.
    #[arg(long, value_name = "PER_SEC", default_value_t = 1000, global = true)]
    birthday_rate: u32,
    /// Birthday attempts, the cone side: most guessed ports per attempt
    /// (within 3 s); 0: none.
    #[arg(long, value_name = "N", default_value_t = 3000, global = true)]
    birthday_budget: u32,
    /// Status as JSON lines on stderr.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print this peer's fingerprint (creates the identity on first use).
    Id,
    /// Print whether NAME is online and its fingerprint (never its addresses).
    Lookup {
        /// The name to look up.
        #[arg(value_name = "NAME")]
        target: String,
    },
    /// Register NAME and stay online, answering calls.
    Listen(cli::listen::ListenArgs),
    /// Call NAME: stdin goes to it, what it sends comes out on stdout.
    Call {
        /// Who to call.
        #[arg(value_name = "NAME")]
        target: String,
        #[command(flatten)]
        opts: CallFlags,
    },
    /// Round trips over the peer connection.
    Ping {
        /// Who to ping.
        #[arg(value_name = "NAME")]
        target: String,
        /// How many pings.
        #[arg(short = 'c', long = "count", default_value_t = 4)]
        count: u64,
        /// Seconds between pings (fractions allowed).
        #[arg(short = 'i', long = "interval", default_value_t = 1.0)]
        interval: f64,
        #[command(flatten)]
        opts: CallFlags,
    },
    /// Print each NAME's presence now and every change, until stopped.
    Watch {
        /// The names to watch (at most 256).
        #[arg(value_name = "NAME", required = true, num_args = 1..=256)]
        names: Vec<String>,
    },
    /// Send FILE to NAME (which runs `listen --receive-dir`).
    Send {
        /// Who to send to.
        #[arg(value_name = "NAME")]
        target: String,
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        opts: CallFlags,
    },
    /// Listen on TCP LOCAL_ADDR; forward every connection to NAME (a
    /// `listen --forward-to`) over one kept call, like `ssh -L`.
    Forward {
        /// The TCP address to accept connections on, e.g. 127.0.0.1:2222.
        #[arg(value_name = "LOCAL_ADDR")]
        local_addr: String,
        /// Who to forward to.
        #[arg(value_name = "NAME")]
        target: String,
        #[command(flatten)]
        opts: CallFlags,
    },
}

/// Flags every calling command shares.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CallFlags {
    /// Give up after this many seconds without an authenticated connection.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Accept (and record) a changed key for a known name.
    #[arg(long)]
    accept_new_key: bool,
    /// Which paths the call may take: `auto` starts on whatever works first
    /// and moves to a direct path when it can; `direct` never uses the relay;
    /// `relay` never sends to the callee's addresses and never gives the
    /// callee ours.
    #[arg(long, value_enum, default_value_t = PathArg::Auto)]
    path: PathArg,
}

impl CallFlags {
    pub(crate) fn options(&self) -> peer::CallOptions {
        peer::CallOptions {
            timeout: secs(self.timeout),
            accept_new_key: self.accept_new_key,
            path: self.path.into(),
        }
    }
}

/// `--path auto|direct|relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PathArg {
    /// Direct when one works, the relay otherwise.
    Auto,
    /// Never the relay.
    Direct,
    /// Only the relay; no addresses exchanged.
    Relay,
}

impl From<PathArg> for peer::path::PathMode {
    fn from(p: PathArg) -> Self {
        match p {
            PathArg::Auto => Self::Auto,
            PathArg::Direct => Self::Direct,
            PathArg::Relay => Self::Relay,
        }
    }
}

/// `--transport auto|udp|tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TransportArg {
    /// UDP, with the TCP tunnel as fallback.
    Auto,
    /// UDP only.
    Udp,
    /// The TCP tunnel only.
    Tcp,
}

impl From<TransportArg> for peer::TransportMode {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Auto => Self::Auto,
            TransportArg::Udp => Self::Udp,
            TransportArg::Tcp => Self::Tcp,
        }
    }
}

pub(crate) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::from_secs(3600))
}

/// The async runtime for `command`. One call's data path runs fastest on
/// one thread: quinn's connection driver and the task moving the bytes wake
/// each other without crossing threads (`peer call` with 512 MiB on
/// loopback: ~425 MiB/s on the multi-thread runtime, ~590 on one thread). A
/// `listen` that serves many calls at once (`--echo`, `--exec`,
/// `--receive-dir`) spreads them over the cores instead; `--forward-to`
/// stays on one thread: its streams are usually one `peer forward`'s, all
/// on one connection (whose driver is one task anyway).
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Command::Listen(args) if args.serves_many_calls() && !args.forwards() => {
            tokio::runtime::Runtime::new()
        }
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colours only for a person at a terminal: logs piped to a file or
    // journald stay plain text.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let out = cli::Out { json: cli.json };
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            out.fail(&peer::Error::io("starting the async runtime", e));
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(cli::run(cli, out));
    // Do not wait for a blocked stdin reader: exit now.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}
