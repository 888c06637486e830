//! TCP forwarded through the real binaries: `peer forward` →
//! `peer listen --forward-to` in front of a TCP sink of this process,
//! against the same `rendezvous` as the CLI pipe. One stream alone (its
//! rate against the CLI pipe's), then 16 at once on the one call, each
//! with the bulk size (each stream's rate against their mean). A stream's rate counts from the
//! moment its client starts writing to the sink's end of file.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{Proc, RUN_LIMIT, START_LIMIT};

/// Streams at once in the sharing run.
pub const STREAMS: usize = 16;

/// What the forwarding runs measured, bytes per second.
pub struct Forwarded {
    /// One forwarded stream alone (best of the runs).
    pub one: f64,
    /// Each of [`STREAMS`] streams at once (none with `BENCH_FORWARD_ONE`).
    pub each: Vec<f64>,
}

/// `peer forward` → `peer listen --forward-to` → a sink, started once and
/// measured run by run (interleaved with the CLI pipe's runs).
pub struct Forwarding {
    sink: Sink,
    addr: SocketAddr,
    listener: Proc,
    forward: Proc,
}

impl Forwarding {
    /// Starts the sink and both peers and waits for the call; `peer(name,
    /// args)` is a `peer` command as the CLI pipe's runs use.
    pub fn start(peer: &dyn Fn(&str, &[&str]) -> Result<Command>) -> Result<Self> {
        let sink = Sink::start()?;
        let target = sink.addr.to_string();
        let mut listener = Proc::spawn(
            "peer listen --forward-to",
            peer(
                "carol",
                &["listen", "--forward-to", &target, "--accept-any"],
            )?
            .stdin(Stdio::null()),
        )?;
        listener.wait("registered", START_LIMIT)?;
        let mut forward = Proc::spawn(
            "peer forward",
            peer("dave", &["forward", "127.0.0.1:0", "carol"])?.stdin(Stdio::null()),
        )?;
        let (_, ev) = forward.wait("forwarding", START_LIMIT)?;
        let addr: SocketAddr = ev["local_addr"]
            .as_str()
            .ok_or_else(|| anyhow!("forwarding event without local_addr: {ev}"))?
            .parse()?;
        forward.wait("connected", START_LIMIT)?;
        Ok(Self {
            sink,
            addr,
            listener,
            forward,
        })
    }

    /// One forwarded stream of `bulk` bytes alone: its rate.
    pub fn one(&self, bulk: u64) -> Result<f64> {
        Ok(push(&self.sink, self.addr, &[bulk])?[0])
    }

    /// [`STREAMS`] streams of `bulk` bytes each at once: each one's rate.
    pub fn shared(&self, bulk: u64) -> Result<Vec<f64>> {
        push(&self.sink, self.addr, &[bulk; STREAMS])
    }

    /// Stops both peers.
    pub fn stop(mut self) {
        self.forward.stop();
        self.listener.stop();
    }
}

/// Sends `sizes[i]` bytes on stream `i`, all at once; returns each
/// stream's rate (in the order they finished). The clients are tasks of
/// one thread (as the sink's connections are), so 16 streams are not 32
/// threads fighting over 2 cores: what is measured is the call's sharing.
fn push(sink: &Sink, addr: SocketAddr, sizes: &[u64]) -> Result<Vec<f64>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let sizes_now = sizes.to_vec();
    let clients = std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for size in sizes_now {
                tasks.spawn(send(addr, size));
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(|_| anyhow!("client task panicked"))??;
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    let mut rates = Vec::new();
    let mut got = Vec::new();
    for _ in sizes {
        let (bytes, at) = sink
            .done
            .recv_timeout(RUN_LIMIT)
            .context("a forwarded stream did not end in time")?;
        got.push(bytes);
        rates.push(bytes as f64 / (at - start).as_secs_f64());
    }
    clients
        .join()
        .map_err(|_| anyhow!("the clients' thread panicked"))??;
    let mut want = sizes.to_vec();
    want.sort_unstable();
    got.sort_unstable();
    if got != want {
        bail!("the sink got {got:?} bytes, not {want:?}");
    }
    Ok(rates)
}

/// One client: `size` bytes of a pattern, then FIN, then waits for the
/// other side's FIN (the stream is done both ways).
async fn send(addr: SocketAddr, size: u64) -> Result<()> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let block: Vec<u8> = (0..256 * 1024).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        conn.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    conn.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(RUN_LIMIT, conn.read_to_end(&mut rest)).await??;
    Ok(())
}

/// A TCP sink on a thread of its own: each connection (a task) is read to
/// its end; `done` gets its byte count and the time of its end of file.
struct Sink {
    addr: SocketAddr,
    done: Receiver<(u64, Instant)>,
}

impl Sink {
    fn start() -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, done) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((mut conn, _)) = listener.accept().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut total = 0u64;
                        loop {
                            match tokio::time::timeout(RUN_LIMIT, conn.read(&mut buf)).await {
                                Ok(Ok(0)) => {
                                    let _ = tx.send((total, Instant::now()));
                                    break;
                                }
                                Ok(Ok(n)) => total += n as u64,
                                _ => break,
                            }
                        }
                    });
                }
            });
        });
        Ok(Self { addr, done })
    }
}
