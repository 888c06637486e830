//! The library in this process: a real rendezvous server and real peers on
//! loopback, each peer with its own temp config dir.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use peer::{CallOptions, Event, Fingerprint, Peer, PeerConfig, PeerMessage, Policy};
use tempfile::TempDir;
use tokio::sync::{broadcast, oneshot};

use crate::raw::{self, RawPair, SinkProcess, Variant};
use crate::report::Row;
use crate::Settings;

/// Longest wait for one registration, lookup or call.
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// A rendezvous server running in this process's runtime.
struct Server {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Server {
    /// A server on 127.0.0.1:0 whose rate limits a benchmark cannot reach.
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = rendezvous::Config::new("127.0.0.1:0".parse()?, dir.path().join("server"));
        let many = rendezvous::Rate {
            burst: 100_000,
            per_second: 100_000.0,
        };
        config.limits.register_rate = many;
        config.limits.lookup_rate = many;
        config.limits.call_rate = many;
        let server = rendezvous::Server::bind(config)?;
        let (stop, stopped) = oneshot::channel::<()>();
        Ok(Self {
            addr: server.local_addr()?,
            fingerprint: server.fingerprint(),
            stop: Some(stop),
            task: tokio::spawn(server.run(async move {
                let _ = stopped.await;
            })),
            _dir: dir,
        })
    }

    /// A peer named `name` with a fresh identity, bound to 127.0.0.1.
    async fn peer(&self, name: &str) -> Result<(Peer, TempDir)> {
        let dir = tempfile::tempdir()?;
        let mut config = PeerConfig::new(self.addr.to_string(), self.fingerprint);
        config.name = Some(name.to_owned());
        config.identity = dir.path().join("identity.pem");
        config.known_peers = dir.path().join("known_peers");
        config.bind = "127.0.0.1:0".parse()?;
        Ok((Peer::new(config).await?, dir))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Waits for the next `Registered` event.
async fn registered(events: &mut broadcast::Receiver<Event>) -> Result<()> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event::Registered { .. }) => return Ok(()),
                Ok(Event::Error { kind, message }) => bail!("{kind}: {message}"),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => bail!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(STEP_LIMIT, wait)
        .await
        .context("not registered in time")?
}

/// A listener whose every call's `Pipe` streams go to a sink.
fn serve_sink(mut listener: peer::Listener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(call)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some(Ok((purpose, send, recv))) = call.accept().await {
                    if purpose == PeerMessage::Pipe {
                        tokio::spawn(raw::sink(send, recv));
                    }
                }
            });
        }
    })
}

/// The server, `alice` listening (sink) and `bob`, who calls her.
pub struct World {
    server: Server,
    bob: Peer,
    alice: Peer,
    alice_task: tokio::task::JoinHandle<()>,
    _dirs: [TempDir; 2],
}

impl Drop for World {
    fn drop(&mut self) {
        self.alice_task.abort();
    }
}

impl World {
    pub async fn start() -> Result<Self> {
        let server = Server::start()?;
        let (alice, alice_dir) = server.peer("alice").await?;
        let mut events = alice.events();
        let alice_task = serve_sink(alice.listen(Policy::AcceptAll)?);
        registered(&mut events).await?;
        let (bob, bob_dir) = server.peer("bob").await?;
        Ok(Self {
            server,
            bob,
            alice,
            alice_task,
            _dirs: [alice_dir, bob_dir],
        })
    }

    /// Register, lookup and call-setup latencies.
    pub async fn latencies(&self, settings: Settings) -> Result<Vec<Row>> {
        // A fresh peer's first registration: connect, TLS, durable bind.
        let mut register = vec![];
        for i in 0..settings.registrations {
            let (p, _dir) = self.server.peer(&format!("reg-{i}")).await?;
            let mut events = p.events();
            let start = Instant::now();
            let _listener = p.listen(Policy::AcceptAll)?;
            registered(&mut events).await?;
            register.push(start.elapsed());
            p.shutdown().await;
        }
        // Lookups on bob's link (its first lookup makes the link, untimed).
        let lookup = || tokio::time::timeout(STEP_LIMIT, self.bob.lookup("alice"));
        lookup().await??;
        let mut lookups = vec![];
        for _ in 0..settings.calls {
            let start = Instant::now();
            let info = lookup().await??;
            lookups.push(start.elapsed());
            if !info.online || info.fingerprint != self.alice.fingerprint() {
                bail!("lookup of alice answered {info:?}");
            }
        }
        let mut setups = vec![];
        for _ in 0..settings.calls {
            let call = self.bob.call("alice", CallOptions::default()).await?;
            if call.path() != peer::Path::Direct {
                bail!("call went {}", call.path().as_str());
            }
            setups.push(call.setup);
            call.close();
        }
        Ok(vec![
            Row::latency(
                format!(
                    "register, fresh peer (connect + TLS + durable bind), {} times",
                    settings.registrations
                ),
                register,
            ),
            Row::latency(
                format!("lookup on a live server link, {} times", settings.calls),
                lookups,
            ),
            Row::latency(
                format!(
                    "call setup_ms (call request → authenticated direct connection), {} calls",
                    settings.calls
                ),
                setups,
            ),
        ])
    }

    /// Best library rate; raw quinn runs (every variant, and in two
    /// processes) interleaved with it.
    pub async fn throughput(
        &self,
        settings: Settings,
        raw: &RawPair,
        sink_process: &SinkProcess,
        best: &mut raw::Best,
    ) -> Result<f64> {
        let mut lib = 0f64;
        for _ in 0..settings.runs {
            for variant in Variant::ALL {
                best.add(variant, raw.push(variant, settings.bulk).await?);
            }
            let two = sink_process.push(settings.bulk).await?;
            best.two_processes = best.two_processes.max(two);
            let call = self.bob.call("alice", CallOptions::default()).await?;
            let (send, recv) = call.open(&PeerMessage::Pipe).await?;
            lib = lib.max(raw::push(send, recv, settings.bulk).await?);
            call.close();
        }
        Ok(lib)
    }
}
