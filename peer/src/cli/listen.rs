//! `peer listen`: stay online and answer calls in one of four modes.
//!
//! Every mode answers pings. Many calls at once are fine in `--echo`,
//! `--exec`, `--receive-dir` and `--forward-to`; the default mode has one
//! stdin/stdout, so only the first pipe gets them. `--forward-to` bridges
//! each `Forward` (from `peer forward`) or `Pipe` (from `peer call`)
//! stream to a new TCP connection to its one target ([`peer::forward`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use peer::{Call, Error, Event, Peer, PeerMessage, Policy, Result};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Out;

/// Flags of `peer listen`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ListenArgs {
    /// Send every byte back to the caller.
    #[arg(long, conflicts_with_all = ["exec", "receive_dir", "forward_to"])]
    echo: bool,
    /// Run CMD (with `sh -c`) per call, with the call as its stdin/stdout.
    #[arg(long, value_name = "CMD", conflicts_with_all = ["receive_dir", "forward_to"])]
    exec: Option<String>,
    /// Store files sent with `peer send` in DIR (created if missing).
    #[arg(long, value_name = "DIR", conflicts_with = "forward_to")]
    receive_dir: Option<PathBuf>,
    /// Bridge every stream of a call to a new TCP connection to HOST:PORT
    /// (`peer forward` at the other end); needs --accept-from or --accept-any.
    #[arg(long, value_name = "HOST:PORT")]
    forward_to: Option<String>,
    /// Accept calls only from these names (each pinned to the key first seen for it).
    #[arg(long, value_delimiter = ',', value_name = "N1,N2")]
    accept_from: Vec<String>,
    /// Accept calls from everyone (the default, except with --forward-to,
    /// which must say so).
    #[arg(long, conflicts_with = "accept_from")]
    accept_any: bool,
    /// Largest file accepted with --receive-dir, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_file_size: u64,
    /// Which paths accepted calls may take: `relay` never gives callers this
    /// machine's addresses (calls go through the relay); `direct` accepts
    /// no relayed call.
    #[arg(long, value_enum, default_value_t = crate::PathArg::Auto)]
    pub(crate) path: crate::PathArg,
    /// Stay callable but show this name offline to lookups and watchers
    /// (Skype's invisible status).
    #[arg(long)]
    pub(crate) invisible: bool,
}

impl ListenArgs {
    /// Whether this listener serves many calls at once (every mode but the
    /// default, which pipes one call to stdin/stdout).
    pub(crate) fn serves_many_calls(&self) -> bool {
        self.echo || self.exec.is_some() || self.receive_dir.is_some() || self.forward_to.is_some()
    }

    /// Whether this listener forwards TCP (it then allows more streams per call).
    pub(crate) fn forwards(&self) -> bool {
        self.forward_to.is_some()
    }

    /// The usage errors clap cannot see.
    pub(crate) fn check(&self) -> Result<(), String> {
        let Some(target) = &self.forward_to else {
            return Ok(());
        };
        let port = target.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
            return Err(format!("--forward-to {target}: expected HOST:PORT"));
        }
        if self.accept_from.is_empty() && !self.accept_any {
            return Err("--forward-to exposes a TCP service: say who may call, with --accept-from N1,N2 (or --accept-any for everyone)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Mode {
    Stdio(Arc<AtomicBool>),
    Echo,
    Exec(String),
    Receive(PathBuf, u64),
    Forward(Arc<str>),
}

pub(crate) async fn run(peer: &Peer, args: ListenArgs, out: Out) -> Result<()> {
    for name in &args.accept_from {
        common::validate_name(name)?;
    }
    args.check().map_err(Error::Usage)?;
    let mode = if args.echo {
        Mode::Echo
    } else if let Some(target) = args.forward_to {
        Mode::Forward(target.into())
    } else if let Some(cmd) = args.exec {
        Mode::Exec(cmd)
    } else if let Some(dir) = args.receive_dir {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Mode::Receive(dir, args.max_file_size)
    } else {
        Mode::Stdio(Arc::new(AtomicBool::new(false)))
    };
    let policy = if args.accept_from.is_empty() {
        let notice = "accepting calls from everyone: every caller learns this machine's addresses (use --accept-from to restrict)";
        if out.json {
            eprintln!(
                "{}",
                serde_json::json!({"event": "notice", "message": notice})
            );
        } else {
            eprintln!("{notice}");
        }
        Policy::AcceptAll
    } else {
        Policy::AllowList(args.accept_from)
    };
    let mut listener = peer.listen(policy)?;
    while let Some(call) = listener.accept().await {
        tokio::spawn(serve_call(call?, mode.clone(), out));
    }
    Ok(())
}

#[derive(Default)]
struct Bytes {
    sent: AtomicU64,
    received: AtomicU64,
}

async fn serve_call(call: Call, mode: Mode, out: Out) {
    // The turns its forwarded streams take at its send buffer.
    let turns = match mode {
        Mode::Forward(_) => peer::forward::prepare_call(&call),
        _ => peer::forward::Turns::default(),
    };
    let call = Arc::new(call);
    let bytes = Arc::new(Bytes::default());
    let mut streams = JoinSet::new();
    while let Some(stream) = call.accept().await {
        match stream {
            Ok((purpose, send, recv)) => {
                let (call, mode, bytes) = (call.clone(), mode.clone(), bytes.clone());
                let turns = turns.clone();
                streams.spawn(async move {
                    let stream = Stream {
                        purpose,
                        send,
                        recv,
                        turns,
                    };
                    if let Err(e) = serve_stream(&call, stream, &mode, &bytes, out).await {
                        debug!(peer = %call.peer, "stream ended with an error: {e}");
                    }
                });
            }
            Err(e) => debug!(peer = %call.peer, "bad stream: {e}"),
        }
    }
    while streams.join_next().await.is_some() {}
    out.event(&Event::CallEnded {
        peer: call.peer.clone(),
        bytes_sent: bytes.sent.load(Ordering::Relaxed),
        bytes_received: bytes.received.load(Ordering::Relaxed),
    });
}

/// One stream of a call, with the call's turns at its send buffer.
struct Stream {
    purpose: PeerMessage,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    turns: peer::forward::Turns,
}

async fn serve_stream(
    call: &Call,
    stream: Stream,
    mode: &Mode,
    bytes: &Bytes,
    out: Out,
) -> Result<()> {
    let Stream {
        purpose,
        mut send,
        mut recv,
        turns,
    } = stream;
    let add = |s: u64, r: u64| {
        bytes.sent.fetch_add(s, Ordering::Relaxed);
        bytes.received.fetch_add(r, Ordering::Relaxed);
    };
    match (purpose, mode) {
        (PeerMessage::Ping { seq }, _) => {
            peer::app::answer_pings(seq, send, recv).await?;
        }
        (PeerMessage::Pipe, Mode::Echo) => {
            let n = peer::app::echo(send, recv).await?;
            add(n, n);
        }
        (PeerMessage::Pipe, Mode::Exec(cmd)) => {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Error::io(format!("starting {cmd:?}"), e))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(Error::Usage("the command's stdio is not piped".into()));
            };
            let (s, r) = peer::app::pipe(send, recv, stdout, stdin).await?;
            add(s, r);
            let _ = child.wait().await;
        }
        (PeerMessage::Pipe, Mode::Stdio(taken)) => {
            if taken.swap(true, Ordering::SeqCst) {
                let _ = send.reset(1u32.into());
                let _ = recv.stop(1u32.into());
                return Err(Error::Usage(
                    "stdin/stdout already serve another call".into(),
                ));
            }
            let (s, r) = peer::stdio_pipe::pipe_stdio(send, recv).await?;
            add(s, r);
        }
        (header @ PeerMessage::SendFile { .. }, Mode::Receive(dir, max)) => {
            let (path, size) = peer::app::receive_file(header, send, recv, dir, *max).await?;
            add(0, size);
            out.event(&Event::FileReceived {
                peer: call.peer.clone(),
                path: path.display().to_string(),
                bytes: size,
            });
        }
        (purpose @ (PeerMessage::Forward | PeerMessage::Pipe), Mode::Forward(target)) => {
            let connect = peer::forward::ForwardConfig::default().connect_timeout;
            match peer::forward::serve_target(&purpose, send, recv, target, connect, &turns).await {
                Ok((s, r)) => add(s, r),
                Err(e) => {
                    warn!(peer = %call.peer, "forwarding to {target}: {e}");
                    return Err(e);
                }
            }
        }
        (other, _) => {
            let _ = send.reset(1u32.into());
            let _ = recv.stop(1u32.into());
            return Err(Error::Protocol(format!(
                "this listener does not serve {other:?} in its mode"
            )));
        }
    }
    Ok(())
}
