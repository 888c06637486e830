//! Subcommands and the output conventions of `CLI.md`.

pub(crate) mod calls;
pub(crate) mod forward;
pub(crate) mod listen;
pub(crate) mod watch;

use std::process::ExitCode;

use peer::{Event, Peer, PeerConfig};

use crate::{Cli, Command};

/// Where status goes: stderr, plain or JSON lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    pub(crate) fn event(&self, e: &Event) {
        if self.json {
            match e.json_line() {
                Ok(line) => eprintln!("{line}"),
                Err(err) => {
                    eprintln!("{{\"event\":\"error\",\"kind\":\"internal\",\"message\":\"{err}\"}}")
                }
            }
        } else {
            eprintln!("{}", e.human());
        }
    }

    /// Reports a failure the command ends on.
    pub(crate) fn fail(&self, e: &peer::Error) {
        if self.json {
            self.event(&Event::error(e));
        } else {
            // The message may carry a server's or peer's words.
            let message = e.to_string();
            eprintln!(
                "peer: {} ({})",
                common::escape_for_terminal(&message),
                e.kind()
            );
        }
    }

    /// A usage error: exit 2.
    pub(crate) fn usage(&self, message: &str) -> ExitCode {
        if self.json {
            eprintln!(
                "{}",
                serde_json::json!({"event": "error", "kind": "usage", "message": message})
            );
        } else {
            eprintln!("peer: {message}");
        }
        ExitCode::from(2)
    }
}

pub(crate) async fn run(cli: Cli, out: Out) -> ExitCode {
    let dir = peer::default_config_dir();
    let identity = cli
        .identity
        .clone()
        .unwrap_or_else(|| dir.join("identity.pem"));
    if let Command::Id = cli.command {
        return match common::Identity::load_or_create(&identity) {
            Ok(id) => {
                println!("{}", id.fingerprint());
                ExitCode::SUCCESS
            }
            Err(e) => {
                out.fail(&e.into());
                ExitCode::FAILURE
            }
        };
    }
    let Some(server) = cli.server.clone() else {
        return out.usage("--server HOST:PORT is required (or set PEER_SERVER)");
    };
    if let Err(e) = peer::ServerList::parse(&server) {
        return out.usage(&e.to_string());
    }
    let Some(fp_text) = cli.server_fingerprint.clone() else {
        return out.usage(
            "--server-fingerprint is required (or set PEER_SERVER_FINGERPRINT): ask the server's operator, who prints it with `rendezvous fingerprint`",
        );
    };
    let fingerprint = match fp_text.parse() {
        Ok(fp) => fp,
        Err(e) => return out.usage(&format!("--server-fingerprint: {e}")),
    };
    let mut config = PeerConfig::new(server, fingerprint);
    config.name = cli.name.clone();
    config.identity = identity;
    config.known_peers = cli
        .known_peers
        .clone()
        .unwrap_or_else(|| dir.join("known_peers"));
    config.bind = cli.bind;
    config.paths.birthday_sockets = cli.birthday_sockets.min(peer::MAX_BIRTHDAY_SOCKETS);
    config.paths.birthday_rate = cli.birthday_rate.clamp(1, 10_000);
    config.paths.birthday_budget = cli.birthday_budget.min(65_535);
    config.transport = cli.transport.into();
    if let Some(s) = cli.udp_retry {
        config.timing.udp_retry_interval = crate::secs(s);
    }
    config.proxy = match proxy_from_env() {
        Ok(p) => p,
        Err(e) => return out.usage(&format!("HTTPS_PROXY: {e}")),
    };
    if let Command::Listen(args) = &cli.command {
        config.listen_path = args.path.into();
        config.invisible = args.invisible;
        if let Err(message) = args.check() {
            return out.usage(&message);
        }
        if args.forwards() {
            config.limits.max_streams_per_call = peer::forward::MAX_STREAMS;
        }
    }
    let peer = match Peer::new(config).await {
        Ok(p) => p,
        Err(e) => {
            out.fail(&e);
            return ExitCode::FAILURE;
        }
    };
    let mut events = peer.events();
    let printer = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            out.event(&e);
        }
    });
    // Long-running commands end normally on a signal.
    let is_listen = matches!(
        cli.command,
        Command::Listen(_) | Command::Watch { .. } | Command::Forward { .. }
    );
    let work = async {
        match cli.command {
            Command::Id => Ok(()),
            Command::Lookup { target } => calls::lookup(&peer, &target, out).await,
            Command::Listen(args) => listen::run(&peer, args, out).await,
            Command::Call { target, opts } => calls::call(&peer, &target, &opts, out).await,
            Command::Ping {
                target,
                count,
                interval,
                opts,
            } => calls::ping(&peer, &target, count, interval, &opts, out).await,
            Command::Send { target, file, opts } => {
                calls::send(&peer, &target, &file, &opts, out).await
            }
            Command::Watch { names } => watch::run(&peer, names).await,
            Command::Forward {
                local_addr,
                target,
                opts,
            } => forward::run(&peer, &local_addr, &target, &opts).await,
        }
    };
    // SIGINT/SIGTERM: close every connection cleanly (the server marks a
    // listener offline at once; a call's other side sees a clean close).
    let (result, signal) = tokio::select! {
        r = work => (r, None),
        s = stop_signal() => (Ok(()), Some(s)),
    };
    peer.shutdown().await;
    // Let queued events reach stderr before the error line and exit.
    tokio::task::yield_now().await;
    printer.abort();
    match result {
        // An operator stopping `listen` is its normal end; any other
        // command was interrupted (128 + signal, as shells report it).
        Ok(()) => match signal {
            Some(number) if !is_listen => ExitCode::from(128 + number),
            _ => ExitCode::SUCCESS,
        },
        Err(e) => {
            out.fail(&e);
            ExitCode::FAILURE
        }
    }
}

/// The proxy for the TCP tunnel from `https_proxy`/`HTTPS_PROXY` and
/// `no_proxy`/`NO_PROXY` (lowercase first, as curl does).
fn proxy_from_env() -> Result<Option<peer::ProxyConfig>, String> {
    let var = |lower: &str, upper: &str| {
        [lower, upper]
            .into_iter()
            .filter_map(|k| std::env::var(k).ok())
            .find(|v| !v.trim().is_empty())
    };
    peer::ProxyConfig::from_env_values(
        var("https_proxy", "HTTPS_PROXY").as_deref(),
        var("no_proxy", "NO_PROXY").as_deref(),
    )
}

/// Resolves on SIGINT or SIGTERM with the signal's number.
async fn stop_signal() -> u8 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // No signal handling: never resolve, the default action applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => 2,
        _ = term.recv() => 15,
    }
}
