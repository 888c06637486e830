//! In-process test worlds: a real rendezvous server and real peers in the
//! test's own tokio runtime, on loopback, each with its own temp dirs.
//!
//! Also a raw protocol client ([`RawClient`]) that speaks the rendezvous
//! protocol frame by frame, to send what a well-behaved peer never would.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::tls::{self, ClientKeyPolicy};
use common::{Fingerprint, Identity, Message};
use peer::{Event, Peer, PeerConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tempfile::TempDir;
use tokio::sync::{broadcast, oneshot};

/// The kind of an `Error` reply; `None` for any other message.
pub fn error_kind(reply: &Message) -> Option<common::ErrorKind> {
    match reply {
        Message::Error { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// A server running inside the test.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Its TCP listener (for peers without UDP); `None` when off.
    pub tcp_addr: Option<SocketAddr>,
    /// Its mapping check port (UDP); `None` when off or not bound.
    pub mapping_addr: Option<SocketAddr>,
    pub fingerprint: Fingerprint,
    pub data_dir: PathBuf,
    /// The running server's counters and table sizes (let go by `stop`,
    /// so a restart on the same data dir finds the database free).
    metrics: Option<rendezvous::MetricsHandle>,
    _dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// A server on a fresh port with a fresh data dir.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_owned();
        let mut s = Self::start_at(data_dir, "127.0.0.1:0".parse().expect("addr")).await;
        s._dir = Some(dir);
        s
    }

    /// A server on `addr` with `data_dir` (to restart one in place).
    pub async fn start_at(data_dir: PathBuf, addr: SocketAddr) -> Self {
        Self::start_with(data_dir, addr, |_| {}).await
    }

    /// Like [`TestServer::start_at`], with limits changed by `tune`.
    pub async fn start_with(
        data_dir: PathBuf,
        addr: SocketAddr,
        tune: impl FnOnce(&mut rendezvous::Limits),
    ) -> Self {
        Self::start_configured(data_dir, addr, |c| tune(&mut c.limits)).await
    }

    /// A server on a fresh port and data dir, its config (limits, relay)
    /// changed by `tune`.
    pub async fn start_tuned(tune: impl FnOnce(&mut rendezvous::Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = "127.0.0.1:0".parse().expect("addr");
        let mut s = Self::start_configured(dir.path().to_owned(), addr, tune).await;
        s._dir = Some(dir);
        s
    }

    /// Like [`TestServer::start_with`], with the whole config changed by `tune`.
    pub async fn start_configured(
        data_dir: PathBuf,
        addr: SocketAddr,
        tune: impl FnOnce(&mut rendezvous::Config),
    ) -> Self {
        let mut config = rendezvous::Config::new(addr, data_dir.clone());
        tune(&mut config);
        let server = rendezvous::Server::bind(config).expect("server binds");
        Self::run(server, data_dir)
    }

    /// A server on a fresh port and data dir with the name store `store`
    /// (e.g. a [`rendezvous::store::PgStore`]).
    pub async fn start_with_store(store: Arc<dyn rendezvous::store::NameStore>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            rendezvous::Config::new("127.0.0.1:0".parse().expect("addr"), dir.path().into());
        let server = rendezvous::Server::with_store(config, store).expect("server binds");
        let mut s = Self::run(server, dir.path().to_owned());
        s._dir = Some(dir);
        s
    }

    /// A node of a cluster on a fresh port and data dir: its server key
    /// copied from `key_of` (every node of a cluster has the same), its
    /// names in `store` (shared by the nodes), joined to the bus at
    /// `bus` as `node_id`.
    pub async fn start_node(
        key_of: &Path,
        store: Arc<dyn rendezvous::store::NameStore>,
        bus: &str,
        node_id: &str,
    ) -> Self {
        Self::start_node_tuned(key_of, store, bus, node_id, |_| {}).await
    }

    /// [`TestServer::start_node`] with its config changed by `tune`.
    pub async fn start_node_tuned(
        key_of: &Path,
        store: Arc<dyn rendezvous::store::NameStore>,
        bus: &str,
        node_id: &str,
        tune: impl FnOnce(&mut rendezvous::Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_owned();
        let key = rendezvous::server::key_path(key_of);
        if key.exists() {
            std::fs::copy(&key, rendezvous::server::key_path(&data_dir)).expect("copy key");
        }
        let mut config =
            rendezvous::Config::new("127.0.0.1:0".parse().expect("addr"), data_dir.clone());
        tune(&mut config);
        let server = rendezvous::Server::with_store(config, store).expect("server binds");
        let addr = server.local_addr().expect("addr");
        let cluster = rendezvous::cluster::ClusterConfig::new(bus.into(), node_id.into(), addr);
        server.join(cluster).await.expect("joins the bus");
        let mut s = Self::run(server, data_dir);
        s._dir = Some(dir);
        s
    }

    /// Runs a bound server in a task.
    fn run(server: rendezvous::Server, data_dir: PathBuf) -> Self {
        let addr = server.local_addr().expect("addr");
        let tcp_addr = server.tcp_addr();
        let mapping_addr = server.mapping_addr();
        let fingerprint = server.fingerprint();
        let metrics = server.metrics_handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            tcp_addr,
            mapping_addr,
            fingerprint,
            data_dir,
            metrics: Some(metrics),
            _dir: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The running server's counters and table sizes.
    pub fn metrics(&self) -> &rendezvous::MetricsHandle {
        self.metrics.as_ref().expect("the server was stopped")
    }

    /// Stops the server (closing its connections) and waits for it.
    pub async fn stop(&mut self) {
        self.metrics = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Takes the temp dir out so the data survives this handle.
    pub fn keep_dir(&mut self) -> Option<TempDir> {
        self._dir.take()
    }

    /// A peer config for this server with its own config dir in `dir`.
    pub fn peer_config(&self, dir: &Path, name: Option<&str>) -> PeerConfig {
        let mut config = PeerConfig::new(self.addr.to_string(), self.fingerprint);
        config.name = name.map(str::to_owned);
        config.identity = dir.join("identity.pem");
        config.known_peers = dir.join("known_peers");
        config.bind = "127.0.0.1:0".parse().expect("addr");
        config
    }

    /// A peer with a fresh identity.
    pub async fn peer(&self, name: &str) -> TestPeer {
        self.peer_tuned(name, |_| {}).await
    }

    /// A peer with a fresh identity and `tune` applied to its config.
    pub async fn peer_tuned(&self, name: &str, tune: impl FnOnce(&mut PeerConfig)) -> TestPeer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = self.peer_config(dir.path(), Some(name));
        tune(&mut config);
        let peer = Peer::new(config).await.expect("peer");
        TestPeer {
            events: peer.events(),
            peer,
            dir,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A peer with its temp dir and an event subscription.
pub struct TestPeer {
    pub peer: Peer,
    pub events: broadcast::Receiver<Event>,
    pub dir: TempDir,
}

impl TestPeer {
    /// Waits for the next event `pred` accepts, panicking after `timeout`.
    pub async fn wait_event(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Event {
        let mut seen = vec![];
        let found = tokio::time::timeout(timeout, async {
            loop {
                match self.events.recv().await {
                    Ok(e) if pred(&e) => return e,
                    Ok(e) => seen.push(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(e) => panic!("event stream ended: {e}"),
                }
            }
        })
        .await;
        match found {
            Ok(e) => e,
            Err(_) => panic!("no matching event within {timeout:?}; saw {seen:#?}"),
        }
    }
}

/// Waits for `fut` or panics saying `what` did not happen in time.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {timeout:?}"))
}

/// Two nodes of one cluster on one bus (a private nats-server) and one
/// shared in-memory store, with one key; `None` when nats-server is
/// missing (outside CI).
pub async fn two_nodes() -> Option<(crate::nats::NatsServer, TestServer, TestServer)> {
    let nats = crate::nats::NatsServer::start()?;
    let store: Arc<dyn rendezvous::store::NameStore> =
        Arc::new(rendezvous::store::MemoryStore::default());
    let keys = tempfile::tempdir().expect("tempdir");
    // The first node creates the key; the second copies it.
    let one = TestServer::start_node(keys.path(), store.clone(), &nats.url(), "one").await;
    let two = TestServer::start_node(&one.data_dir, store, &nats.url(), "two").await;
    assert_eq!(one.fingerprint, two.fingerprint, "one key, one fingerprint");
    Some((nats, one, two))
}

/// A hand-driven rendezvous client: one quinn endpoint, one identity.
pub struct RawClient {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub identity: Arc<Identity>,
}

impl RawClient {
    /// Connects to `server` with a fresh identity (and, for a fake callee,
    /// an endpoint whose peer-facing key is `peer_key`).
    pub async fn connect(server: &TestServer) -> Self {
        Self::connect_with(server, Arc::new(Identity::generate().expect("id")), None).await
    }

    pub async fn connect_with(
        server: &TestServer,
        identity: Arc<Identity>,
        peer_key: Option<&Identity>,
    ) -> Self {
        let local = "127.0.0.1:0".parse().expect("addr");
        Self::connect_from(server, identity, peer_key, local).await
    }

    /// Like [`RawClient::connect_with`], from the local address `local`
    /// (another 127.0.0.0/8 address is another source to the server).
    pub async fn connect_from(
        server: &TestServer,
        identity: Arc<Identity>,
        peer_key: Option<&Identity>,
        local: SocketAddr,
    ) -> Self {
        Self::connect_tuned(server, identity, peer_key, local, None).await
    }

    /// Like [`RawClient::connect_from`], with the server link's transport
    /// set by `transport` (e.g. a callee granting little flow-control credit).
    pub async fn connect_tuned(
        server: &TestServer,
        identity: Arc<Identity>,
        peer_key: Option<&Identity>,
        local: SocketAddr,
        transport: Option<quinn::TransportConfig>,
    ) -> Self {
        let server_config = peer_key.map(|key| {
            let tls =
                tls::server_config(key, ClientKeyPolicy::AnyKey, tls::PEER_ALPN).expect("tls");
            quinn::ServerConfig::with_crypto(Arc::new(
                QuicServerConfig::try_from(tls).expect("quic"),
            ))
        });
        let socket = std::net::UdpSocket::bind(local).expect("bind");
        let endpoint = quinn::Endpoint::new(
            peer::endpoint_config(),
            server_config,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint");
        let tls = tls::client_config(&identity, server.fingerprint, tls::SERVER_ALPN).expect("tls");
        let mut config =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("quic")));
        if let Some(transport) = transport {
            config.transport_config(Arc::new(transport));
        }
        let conn = endpoint
            .connect_with(config, server.addr, tls::SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        Self {
            endpoint,
            conn,
            identity,
        }
    }

    /// Sends raw bytes on a new stream and reads what comes back (until the stream ends).
    pub async fn raw_exchange(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        within(
            Duration::from_secs(5),
            "raw answer",
            recv.read_to_end(1 << 20),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// One request, one answer.
    /// `Register { name, presence: false }`, and the reply.
    pub async fn register(&self, name: &str) -> Message {
        let msg = Message::Register {
            name: name.into(),
            presence: false,
        };
        self.request(&msg).await
    }

    /// `Lookup { name }`, and the reply.
    pub async fn lookup(&self, name: &str) -> Message {
        self.request(&Message::Lookup { name: name.into() }).await
    }

    pub async fn request(&self, msg: &Message) -> Message {
        let (mut send, mut recv) = self.conn.open_bi().await.expect("stream");
        write_frame(&mut send, msg, MAX_FRAME).await.expect("write");
        send.finish().expect("finish");
        within(
            Duration::from_secs(10),
            "answer",
            read_frame(&mut recv, MAX_FRAME),
        )
        .await
        .expect("answer frame")
    }

    /// The next call offer from the server (for a fake `listen`).
    pub async fn next_offer(&self) -> (quinn::SendStream, quinn::RecvStream, Message) {
        let (send, mut recv) = within(Duration::from_secs(10), "offer", self.conn.accept_bi())
            .await
            .expect("offer stream");
        let msg = read_frame(&mut recv, MAX_FRAME).await.expect("offer frame");
        (send, recv, msg)
    }
}

/// What an in-process listener does with each stream.
#[derive(Clone)]
pub enum Serve {
    /// Echo pipes, answer pings.
    Echo,
    /// Store files in this dir (max size), answer pings.
    Receive(PathBuf, u64),
    /// Read pipes to the end and drop the bytes (bulk-throughput benches).
    Sink,
}

/// Runs `listener` until it ends, serving every call's streams as `mode` says.
/// Returns the listener's final error, if any.
pub fn serve(
    mut listener: peer::Listener,
    mode: Serve,
) -> tokio::task::JoinHandle<Option<peer::Error>> {
    tokio::spawn(async move {
        while let Some(call) = listener.accept().await {
            let call = match call {
                Ok(call) => Arc::new(call),
                Err(e) => return Some(e),
            };
            let mode = mode.clone();
            tokio::spawn(async move {
                while let Some(Ok((purpose, send, recv))) = call.accept().await {
                    let mode = mode.clone();
                    tokio::spawn(async move {
                        match (purpose, mode) {
                            (common::PeerMessage::Ping { seq }, _) => {
                                let _ = peer::app::answer_pings(seq, send, recv).await;
                            }
                            (common::PeerMessage::Pipe, Serve::Echo) => {
                                let _ = peer::app::echo(send, recv).await;
                            }
                            (common::PeerMessage::Pipe, Serve::Sink) => {
                                let _ = sink(send, recv).await;
                            }
                            (
                                header @ common::PeerMessage::SendFile { .. },
                                Serve::Receive(dir, max),
                            ) => {
                                let _ =
                                    peer::app::receive_file(header, send, recv, &dir, max).await;
                            }
                            _ => {}
                        }
                    });
                }
            });
        }
        None
    })
}

/// Reads `recv` to the end, then finishes `send`.
async fn sink(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Option<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(1 << 20, false).await.ok()? {
        total += chunk.bytes.len() as u64;
    }
    send.finish().ok()?;
    Some(total)
}

/// Starts `name` listening with `policy` and serving `mode`; waits until registered.
pub async fn listening(
    server: &TestServer,
    name: &str,
    policy: peer::Policy,
    mode: Serve,
) -> (TestPeer, tokio::task::JoinHandle<Option<peer::Error>>) {
    listening_tuned(server, name, policy, mode, |_| {}).await
}

/// [`listening`] with `tune` applied to the peer's config.
pub async fn listening_tuned(
    server: &TestServer,
    name: &str,
    policy: peer::Policy,
    mode: Serve,
    tune: impl FnOnce(&mut PeerConfig),
) -> (TestPeer, tokio::task::JoinHandle<Option<peer::Error>>) {
    let mut p = server.peer_tuned(name, tune).await;
    let listener = p.peer.listen(policy).expect("listen");
    p.wait_event(Duration::from_secs(10), |e| {
        matches!(e, Event::Registered { .. })
    })
    .await;
    let task = serve(listener, mode);
    (p, task)
}

/// A fake callee (see [`fake_callee`]); it stays registered and answering
/// until dropped.
pub struct FakeCallee {
    /// The `Dial` the server sent it, once it has.
    pub dial: tokio::sync::oneshot::Receiver<Message>,
    /// Dropping it lets the fake go.
    _release: tokio::sync::oneshot::Sender<()>,
}

/// A fake callee: registered (presence) with one key, but its UDP socket
/// answers peer handshakes with another key, or not at all. It accepts the
/// first offer and reports the `Dial` it gets.
pub async fn fake_callee(
    server: &TestServer,
    name: &str,
    answers_with: Option<&Identity>,
) -> FakeCallee {
    let raw = RawClient::connect_with(
        server,
        Arc::new(Identity::generate().expect("id")),
        answers_with,
    )
    .await;
    // Complete the handshakes that come in (with the stranger's key).
    let endpoint = raw.endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                if let Ok(connecting) = incoming.accept() {
                    let _ = connecting.await;
                }
            });
        }
    });
    let reply = raw
        .request(&Message::Register {
            name: name.into(),
            presence: true,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    let (dial_tx, dial) = tokio::sync::oneshot::channel();
    let (_release, release) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut send, mut recv, offer) = raw.next_offer().await;
        assert!(matches!(offer, Message::IncomingCall { .. }), "{offer:?}");
        let accept = Message::Accept {
            candidates: vec![],
            hide_addresses: false,
        };
        common::framing::write_frame(&mut send, &accept, common::framing::MAX_FRAME)
            .await
            .expect("accept");
        let dial: Message = common::framing::read_frame(&mut recv, common::framing::MAX_FRAME)
            .await
            .expect("dial");
        let _ = dial_tx.send(dial);
        // Stay registered and answering until the test drops the fake.
        let _ = release.await;
        drop(raw);
    });
    FakeCallee { dial, _release }
}

/// Sends `data` through a call to an echo listener on one `Pipe` stream
/// and returns what came back (the whole echo, both directions finished).
pub async fn echo_roundtrip(call: &peer::Call, data: &[u8]) -> Vec<u8> {
    let (send, recv) = call.open(&common::PeerMessage::Pipe).await.expect("stream");
    let mut out = Vec::new();
    let (sent, _) = peer::app::pipe(send, recv, data, &mut out)
        .await
        .expect("pipe");
    assert_eq!(sent, data.len() as u64);
    out
}
