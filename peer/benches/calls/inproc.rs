//! The library in this process: a real rendezvous server and real peers on
//! loopback, each peer with its own temp config dir.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use peer::path::PathMode;
use peer::{CallOptions, Event, Fingerprint, Peer, PeerConfig, PeerMessage, Policy};
use tempfile::TempDir;
use tokio::sync::{broadcast, mpsc, oneshot, Mutex};

use crate::raw::{self, RawPair, SinkProcess, Variant};
use crate::relay;
use crate::report::Row;
use crate::Settings;

/// Longest wait for one registration, lookup or call.
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// Pause between calls that open no stream (see [`World::latencies`]).
const CALL_GAP: Duration = Duration::from_millis(100);

/// A rendezvous server on a thread of its own (a single-threaded runtime,
/// its threads named [`relay::SERVER_THREAD`], so its CPU time can be told
/// from the peers').
struct Server {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    stop: Option<oneshot::Sender<()>>,
    _dir: TempDir,
}

impl Server {
    /// A server on 127.0.0.1:0 whose rate limits a benchmark cannot reach,
    /// its relay without a rate limit.
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
        config.limits.offer_rate_per_source = many;
        config.limits.offer_rate_per_callee = many;
        config.limits.offer_rate_per_contact = many;
        // Every call allocates at consent and holds it until idle expiry:
        // all of the bench's calls come from 127.0.0.1.
        config.relay = Some(rendezvous::relay::RelayConfig {
            rate: None,
            max_per_source: 100_000,
            ..Default::default()
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, bound) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(relay::SERVER_THREAD.into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(relay::SERVER_THREAD)
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => return drop(started.send(Err(anyhow!(e)))),
                };
                runtime.block_on(async move {
                    let server = match rendezvous::Server::bind(config) {
                        Ok(s) => s,
                        Err(e) => return drop(started.send(Err(anyhow!(e)))),
                    };
                    let addr = server.local_addr().map_err(|e| anyhow!(e));
                    let _ = started.send(addr.map(|a| (a, server.fingerprint())));
                    server
                        .run(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        let (addr, fingerprint) = bound
            .recv_timeout(STEP_LIMIT)
            .context("server not started in time")??;
        Ok(Self {
            addr,
            fingerprint,
            stop: Some(stop),
            _dir: dir,
        })
    }

    /// A peer named `name` with a fresh identity, bound to 127.0.0.1.
    async fn peer(&self, name: &str) -> Result<(Peer, TempDir)> {
        self.peer_on(name, peer::TransportMode::Udp).await
    }

    /// Like [`Server::peer`], its server link (and relay traffic) on `transport`.
    async fn peer_on(&self, name: &str, transport: peer::TransportMode) -> Result<(Peer, TempDir)> {
        let dir = tempfile::tempdir()?;
        let mut config = PeerConfig::new(self.addr.to_string(), self.fingerprint);
        config.transport = transport;
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

/// A listener whose every call's `Pipe` streams go to a sink; `ended`
/// hears of every call it saw end.
fn serve_sink(
    mut listener: peer::Listener,
    ended: mpsc::UnboundedSender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(call)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                while let Some(Ok((purpose, send, recv))) = call.accept().await {
                    if purpose == PeerMessage::Pipe {
                        tokio::spawn(raw::sink(send, recv));
                    }
                }
                let _ = ended.send(());
            });
        }
    })
}

/// The server, `alice` listening (sink) and `bob`, who calls her.
pub struct World {
    server: Server,
    bob: Peer,
    /// Like bob, but on the TCP transport (a network without UDP).
    tcp_bob: Peer,
    alice: Peer,
    alice_task: tokio::task::JoinHandle<()>,
    /// One message per call alice saw end.
    alice_ended: Mutex<mpsc::UnboundedReceiver<()>>,
    _dirs: [TempDir; 3],
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
        let (ended, alice_ended) = mpsc::unbounded_channel();
        let alice_task = serve_sink(alice.listen(Policy::AcceptAll)?, ended);
        registered(&mut events).await?;
        let (bob, bob_dir) = server.peer("bob").await?;
        let (tcp_bob, tcp_dir) = server.peer_on("tcp-bob", peer::TransportMode::Tcp).await?;
        Ok(Self {
            server,
            bob,
            tcp_bob,
            alice,
            alice_task,
            alice_ended: Mutex::new(alice_ended),
            _dirs: [alice_dir, bob_dir, tcp_dir],
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
            // Alice never sees a call that opened no stream: give her side
            // time to drop it (see `alice_saw_it_end` for why a call made
            // before that can fail).
            tokio::time::sleep(CALL_GAP).await;
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

    /// Waits until alice's side of the last call has ended too. A call
    /// made before that can fail: alice's router still maps bob's address
    /// to the old call, so the new call's Initial lands on the old
    /// call's virtual address (see the report of the bench's author).
    async fn alice_saw_it_end(&self) -> Result<()> {
        let mut ended = self.alice_ended.lock().await;
        match tokio::time::timeout(STEP_LIMIT, ended.recv()).await {
            Ok(Some(())) => Ok(()),
            _ => bail!("alice did not see the call end"),
        }
    }

    /// Best library rates, direct and relayed, and the server's CPU time
    /// while relaying; raw quinn runs (every variant, and in two processes)
    /// interleaved with them.
    pub async fn throughput(
        &self,
        settings: Settings,
        raw: &RawPair,
        sink_process: &SinkProcess,
        best: &mut raw::Best,
    ) -> Result<Throughput> {
        let mut t = Throughput::default();
        for _ in 0..settings.runs {
            for variant in Variant::ALL {
                best.add(variant, raw.push(variant, settings.bulk).await?);
            }
            let two = sink_process.push(settings.bulk).await?;
            best.two_processes = best.two_processes.max(two);
            let (direct, _) = self.push(PathMode::Auto, settings.bulk).await?;
            t.direct = t.direct.max(direct);
            let (relayed, cpu) = self.push(PathMode::Relay, settings.bulk).await?;
            t.relayed = t.relayed.max(relayed);
            t.relay_cpu += cpu;
            t.relayed_bytes += settings.bulk;
            let (over_tcp, cpu) = self
                .push_from(&self.tcp_bob, PathMode::Relay, settings.bulk)
                .await?;
            t.over_tcp = t.over_tcp.max(over_tcp);
            t.tcp_cpu += cpu;
        }
        Ok(t)
    }

    /// One call from bob to alice on `mode`'s path (checked), `bytes` one
    /// way: bytes per second from the stream's opening to the last byte
    /// read, and the server's CPU time over the transfer.
    async fn push(&self, mode: PathMode, bytes: u64) -> Result<(f64, Duration)> {
        self.push_from(&self.bob, mode, bytes).await
    }

    /// Like [`World::push`], from `caller`.
    async fn push_from(
        &self,
        caller: &Peer,
        mode: PathMode,
        bytes: u64,
    ) -> Result<(f64, Duration)> {
        let options = CallOptions {
            path: mode,
            ..CallOptions::default()
        };
        let call = caller
            .call("alice", options)
            .await
            .with_context(|| format!("a {mode:?} call"))?;
        let want = match mode {
            PathMode::Relay => peer::Path::Relay,
            _ => peer::Path::Direct,
        };
        if call.path() != want {
            bail!("a {mode:?} call went {}", call.path().as_str());
        }
        let (send, recv) = call.open(&PeerMessage::Pipe).await?;
        let cpu = relay::server_cpu();
        let rate = raw::push(send, recv, bytes).await?;
        let cpu = relay::server_cpu().saturating_sub(cpu);
        if call.path() != want {
            bail!("a {mode:?} call moved to {}", call.path().as_str());
        }
        call.close();
        self.alice_saw_it_end().await?;
        Ok((rate, cpu))
    }
}

/// What [`World::throughput`] measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct Throughput {
    /// Best direct call, bytes per second.
    pub direct: f64,
    /// Best relayed call, bytes per second.
    pub relayed: f64,
    /// The server's CPU time over every relayed transfer (handshakes not
    /// counted: the clock starts once the call is up).
    pub relay_cpu: Duration,
    /// Bulk bytes of those transfers (one way; their acknowledgements,
    /// relayed too, are not counted).
    pub relayed_bytes: u64,
    /// Best relayed call whose caller is on the TCP transport.
    pub over_tcp: f64,
    /// The server's CPU time over those (as many bytes as `relayed_bytes`).
    pub tcp_cpu: Duration,
}
