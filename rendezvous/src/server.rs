//! The QUIC driver: accepts connections, authenticates them, and hands each
//! request stream to its handler in [`crate::handlers`].
//!
//! One task per connection (waits for request streams) and one per stream
//! (parse → apply → reply). Everything the drivers decide lives in
//! [`crate::registry`], [`crate::store`] and [`crate::ratelimit`]; this file
//! only moves bytes and enforces timeouts. A peer that sends something
//! malformed gets an error frame and its connection closed; nobody else notices.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::error::close;
use common::framing::{read_frame, write_frame, FrameError};
use common::tls;
use common::{ErrorKind, Fingerprint, Identity, Message};
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Sources, Ticket};
use crate::config::{Config, Limits};
use crate::counted::Counted;
use crate::handlers;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::registry::{Registry, SessionId};
use crate::relay::driver::{self, Relay};
use crate::relay::RelayConfig;
use crate::store::{NameStore, RedbStore, StoreError};
use crate::transport::make_endpoint;

/// Why the server could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] common::IdentityError),
    /// The name store could not be opened.
    #[error("cannot open the name store in the data dir: {0}")]
    Store(#[from] StoreError),
    /// The data dir could not be created.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The folder.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TLS or QUIC configuration failed.
    #[error("configuration: {0}")]
    Config(String),
}

/// Per-source limiters and connection counts (every one keyed by
/// [`crate::ratelimit::source_key`]: an IPv6 /64 is one source).
pub(crate) struct Rates {
    pub(crate) register: RateLimiter,
    pub(crate) lookup: RateLimiter,
    pub(crate) call: RateLimiter,
    /// Call offers per (source, callee) and per callee.
    pub(crate) offers: crate::offers::OfferLimits,
    /// Connections and handshakes per source, with a handle to abort each
    /// handshake (to shed it from a full queue).
    pub(crate) sources: Sources<oneshot::Sender<()>>,
}

/// What every task of the server shares.
pub(crate) struct State {
    pub(crate) limits: Limits,
    pub(crate) store: Arc<dyn NameStore>,
    pub(crate) registry: Mutex<Registry<quinn::Connection>>,
    pub(crate) rates: Mutex<Rates>,
    pub(crate) metrics: Metrics,
    pub(crate) next_call_id: AtomicU64,
    /// Sessions with a registration in flight (see `handlers::register`).
    pub(crate) claiming: Mutex<std::collections::HashSet<SessionId>>,
    /// The relay on the server's port; `None` when it is off.
    pub(crate) relay: Option<Arc<Relay>>,
}

/// Locks a mutex, recovering from a panicked holder (the data stays consistent:
/// every critical section is a few map operations).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    /// The shared state of a server with `limits` and `store`, nothing counted yet.
    pub(crate) fn new(limits: Limits, store: Arc<dyn NameStore>) -> Self {
        let rates = Rates {
            register: RateLimiter::new(limits.register_rate),
            lookup: RateLimiter::new(limits.lookup_rate),
            call: RateLimiter::new(limits.call_rate),
            offers: crate::offers::OfferLimits::new(&limits),
            sources: Sources::default(),
        };
        Self {
            limits,
            store,
            registry: Mutex::new(Registry::default()),
            rates: Mutex::new(rates),
            metrics: Metrics::default(),
            next_call_id: AtomicU64::new(rand::random::<u64>() >> 1),
            claiming: Mutex::default(),
            relay: None,
        }
    }

    /// Prometheus text of every counter, the relay's copied in first.
    /// (Under the registry lock, so two scrapes at once never both add the
    /// same difference to a mirrored counter.)
    pub(crate) fn render_metrics(&self) -> String {
        let registry = lock(&self.registry);
        if let Some(relay) = &self.relay {
            let (stats, send) = relay.stats();
            self.metrics.set_relay(&stats, send);
        }
        self.metrics.render(&registry)
    }

    /// Takes a token for `ip` from the limiter `pick` chooses.
    pub(crate) fn allow(
        &self,
        ip: IpAddr,
        pick: impl FnOnce(&mut Rates) -> &mut RateLimiter,
    ) -> bool {
        let ok = pick(&mut lock(&self.rates)).check(ip, Instant::now());
        if !ok {
            self.metrics.rate_limited.inc();
        }
        ok
    }
}

/// A running rendezvous server.
pub struct Server {
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    fingerprint: Fingerprint,
}

/// The server's key file inside its data dir.
pub fn key_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("server.key")
}

/// Loads (or creates) the server identity kept in `data_dir`.
pub fn load_identity(data_dir: &std::path::Path) -> Result<Identity, ServerError> {
    Ok(Identity::load_or_create(&key_path(data_dir))?)
}

impl Server {
    /// Opens the data dir (key + name store) and binds the UDP socket.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = Arc::new(RedbStore::open(&config.data_dir.join("names.redb"))?);
        Self::with_store(config, store)
    }

    /// Like [`Server::bind`], with another name store.
    pub fn with_store(config: Config, store: Arc<dyn NameStore>) -> Result<Self, ServerError> {
        let identity = load_identity(&config.data_dir)?;
        let limits = config.limits.clone();
        let relay = config.relay.clone().map(|c| Arc::new(Relay::new(c)));
        let endpoint = make_endpoint(&identity, &config, relay.clone())?;
        match &relay {
            Some(r) => match r.config().rate {
                Some(rate) => info!(
                    rate_bytes_per_s = rate.per_second,
                    "relay on (same port), each direction of a call at most {} KiB/s",
                    rate.per_second / 1024
                ),
                None => info!("relay on (same port), no rate limit"),
            },
            None => info!("relay off"),
        }
        let mut state = State::new(limits, store);
        state.relay = relay;
        let state = Arc::new(state);
        Ok(Self {
            endpoint,
            state,
            fingerprint: identity.fingerprint(),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The server's fingerprint, for `--server-fingerprint`.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The relay's limits; `None` when the relay is off.
    pub fn relay_config(&self) -> Option<&RelayConfig> {
        self.state.relay.as_deref().map(Relay::config)
    }

    /// Prometheus text of the server's counters.
    pub fn metrics_text(&self) -> String {
        self.state.render_metrics()
    }

    /// A cheap handle that renders the metrics while the server runs.
    pub fn metrics_handle(&self) -> MetricsHandle {
        MetricsHandle(self.state.clone())
    }

    /// Serves until `shutdown` completes, then closes every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let sweeper = tokio::spawn(sweep_rates(self.state.clone()));
        let expiry = self
            .state
            .relay
            .clone()
            .map(|r| tokio::spawn(driver::expire(r)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => self.admit(incoming),
                    None => break,
                },
                () = &mut shutdown => break,
            }
        }
        sweeper.abort();
        if let Some(expiry) = expiry {
            expiry.abort();
        }
        // Peers are told to spread their return, so the next server is not
        // met by all of them in one second (`Limits::reconnect_rate`).
        let sessions = lock(&self.state.registry).sessions();
        let spread = self.state.limits.shutdown_spread(sessions);
        info!(sessions, spread_ms = spread.as_millis(), "shutting down");
        self.endpoint
            .close(close::SHUTDOWN.into(), &close::shutdown_reason(spread));
        // The close frames leave at once; waiting for every connection to
        // drain (3 PTOs each) would only keep a restart waiting.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }

    fn admit(&self, incoming: quinn::Incoming) {
        let ip = common::candidates::canonical(incoming.remote_address()).ip();
        let state = &self.state;
        let mut cancel = None;
        let admitted = {
            let open = lock(&state.registry).sessions();
            let validated = incoming.remote_address_validated();
            lock(&state.rates)
                .sources
                .admit(ip, validated, open, state.limits.quotas(), || {
                    let (abort, aborted) = oneshot::channel();
                    cancel = Some(aborted);
                    abort
                })
        };
        if let Some(victim) = admitted.shed {
            state.metrics.handshakes_shed.inc();
            debug!(%ip, "handshake queue full: shedding a handshake of the biggest holder");
            let _ = victim.send(());
        }
        match admitted.admission {
            Admission::Accept | Admission::Shed => {}
            Admission::Retry if incoming.may_retry() => {
                state.metrics.retries.inc();
                debug!(%ip, "asking for a Retry before a second concurrent handshake");
                // Only fails when the packet was already a Retry answer.
                let _ = incoming.retry();
                return;
            }
            Admission::Drop => {
                state.metrics.handshakes_dropped.inc();
                incoming.ignore();
                return;
            }
            Admission::Retry | Admission::Refuse => {
                state.metrics.connections_refused.inc();
                debug!(%ip, "refusing connection: at a connection limit");
                incoming.refuse();
                return;
            }
        }
        let (Some(ticket), Some(cancel)) = (admitted.ticket, cancel) else {
            return;
        };
        let state = state.clone();
        // Boxed: the task lives as long as the connection, the Incoming only
        // until the handshake ends (memory per connected peer).
        let incoming = Box::new(incoming);
        tokio::spawn(async move {
            // Gives the counts back when the task ends, even by a panic.
            let mut counted = Counted::new(state.clone(), ticket);
            serve_connection(&state, incoming, &mut counted, ticket, cancel).await;
        });
    }
}

/// Renders the server's metrics (see [`Server::metrics_handle`]).
#[derive(Clone)]
pub struct MetricsHandle(Arc<State>);

impl MetricsHandle {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.0.render_metrics()
    }

    /// The sizes of the server's in-memory tables: what a flood could grow.
    pub fn tables(&self) -> Tables {
        let (sessions, online) = {
            let registry = lock(&self.0.registry);
            (registry.sessions(), registry.online())
        };
        let rates = lock(&self.0.rates);
        Tables {
            sessions,
            online,
            rate_buckets: rates.register.tracked()
                + rates.lookup.tracked()
                + rates.call.tracked()
                + rates.offers.tracked(),
            sources: rates.sources.sources(),
            handshakes: rates.sources.pending(),
        }
    }
}

/// Sizes of the server's in-memory tables (see [`MetricsHandle::tables`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tables {
    /// Open sessions (authenticated connections).
    pub sessions: usize,
    /// Names online.
    pub online: usize,
    /// Token buckets held, all three limiters together (forgotten once full again).
    pub rate_buckets: usize,
    /// Source addresses with a connection or handshake counted.
    pub sources: usize,
    /// Handshakes in flight.
    pub handshakes: usize,
}

async fn sweep_rates(state: Arc<State>) {
    // (An interval of zero would panic: a tenth of a second at least.)
    let every = state
        .limits
        .rate_sweep_interval
        .max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut rates = lock(&state.rates);
        rates.register.sweep(now);
        rates.lookup.sweep(now);
        rates.call.sweep(now);
        rates.offers.sweep(now);
    }
}

/// Handshake, then one task per request stream until the connection ends.
async fn serve_connection(
    state: &Arc<State>,
    incoming: Box<quinn::Incoming>,
    counted: &mut Counted,
    ticket: Ticket,
    cancel: oneshot::Receiver<()>,
) {
    let remote = common::candidates::canonical(incoming.remote_address());
    // The handshake's state is large and needed once: keep it on the heap
    // only while it runs, not in this long-lived task.
    let Some(conn) = Box::pin(handshake(state, *incoming, ticket, cancel, remote)).await else {
        return;
    };
    let Some(fingerprint) = peer_fingerprint(&conn) else {
        conn.close(close::PROTOCOL.into(), b"no client certificate");
        return;
    };
    let id = lock(&state.registry).open(fingerprint, remote, conn.clone());
    counted.set_session(id);
    state.metrics.connections_total.inc();
    debug!(%remote, peer = %fingerprint.short(), id, "peer connected");
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (state, conn) = (state.clone(), conn.clone());
        tokio::spawn(async move { serve_stream(&state, id, &conn, send, recv).await });
    }
    // `counted` closes the session (and logs who went offline) when dropped.
    debug!(%remote, id, "peer disconnected: {:?}", conn.close_reason());
}

/// The TLS handshake, bounded by the handshake timeout and ended early when
/// `cancel` fires (shed from a full queue); `None` if it did not complete.
/// (Dropping an unfinished handshake closes its connection.)
async fn handshake(
    state: &State,
    incoming: quinn::Incoming,
    ticket: Ticket,
    cancel: oneshot::Receiver<()>,
    remote: SocketAddr,
) -> Option<quinn::Connection> {
    let handshake = tokio::select! {
        done = tokio::time::timeout(state.limits.handshake_timeout, incoming) => Some(done),
        _ = cancel => None,
    };
    lock(&state.rates).sources.handshake_done(ticket);
    let Some(handshake) = handshake else {
        debug!(%remote, "handshake shed for a source holding fewer");
        state.metrics.handshakes_failed.inc();
        return None;
    };
    match handshake {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            if is_version_mismatch(&e) {
                warn!(%remote, "refused a peer speaking another protocol version ({e})");
            } else {
                debug!(%remote, "handshake failed: {e}");
            }
            state.metrics.handshakes_failed.inc();
            None
        }
        Err(_) => {
            debug!(%remote, "handshake timed out");
            state.metrics.handshakes_failed.inc();
            None
        }
    }
}

fn is_version_mismatch(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(t) if u64::from(t.code) == tls::NO_APPLICATION_PROTOCOL)
        || matches!(e, quinn::ConnectionError::ConnectionClosed(c) if u64::from(c.error_code) == tls::NO_APPLICATION_PROTOCOL)
}

/// The fingerprint of the key the handshake authenticated.
pub(crate) fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::peer_fingerprint(&certs)
}

/// One request: parse → apply → reply. Bad input closes the connection.
async fn serve_stream(
    state: &Arc<State>,
    id: SessionId,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = state.limits.max_frame;
    let request = match tokio::time::timeout(
        state.limits.request_timeout,
        read_frame::<Message, _>(&mut recv, state.limits.max_request_frame),
    )
    .await
    {
        Ok(Ok(msg)) => msg,
        Ok(Err(FrameError::Closed)) => return,
        // The stream was reset or the connection is gone: nobody to answer,
        // and nothing the peer did wrong.
        Ok(Err(FrameError::Io(e))) => {
            debug!(id, "request stream failed: {e}");
            return;
        }
        Ok(Err(e)) => return refuse(state, conn, &mut send, &format!("bad request: {e}")).await,
        // Slow is not malformed (a congested link, a busy server): give up
        // on this stream only, and say why. The stream cap bounds how many
        // such streams a connection can hold at once.
        Err(_) => return give_up(state, id, &mut send, &mut recv).await,
    };
    debug!(id, request = request.kind_name(), "request");
    let reply = match request {
        Message::Register { name, presence } => {
            handlers::register::handle(state, id, name, presence).await
        }
        Message::Lookup { name } => handlers::lookup::handle(state, id, name),
        Message::Call {
            to,
            candidates,
            hide_addresses,
        } => handlers::call::handle(state, id, to, candidates, hide_addresses).await,
        Message::Approve { fingerprints } => handlers::approve::handle(state, id, fingerprints),
        other => {
            let reason = format!("unexpected message {} as a request", other.kind_name());
            return refuse(state, conn, &mut send, &reason).await;
        }
    };
    if let Message::Error { kind, .. } = &reply {
        state.metrics.error(*kind);
    }
    // A peer that grants no credit must not park this task.
    match tokio::time::timeout(
        state.limits.reply_timeout,
        write_frame(&mut send, &reply, max),
    )
    .await
    {
        Ok(_) => {
            let _ = send.finish();
        }
        Err(_) => {
            debug!(
                id,
                "reply not taken within {:?}; resetting the stream", state.limits.reply_timeout
            );
            let _ = send.reset(0u32.into());
        }
    }
}

/// Ends a request stream whose request did not arrive in time, with an
/// error frame; the connection stays up.
async fn give_up(
    state: &State,
    id: SessionId,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) {
    debug!(id, "request not received in time; ending the stream");
    state.metrics.error(ErrorKind::Protocol);
    let msg = Message::error(
        ErrorKind::Protocol,
        format!(
            "request not received within {:?}",
            state.limits.request_timeout
        ),
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        write_frame(send, &msg, state.limits.max_frame),
    )
    .await;
    let _ = send.finish();
    let _ = recv.stop(0u32.into());
}

/// Tells the peer what it did wrong, then closes its connection.
async fn refuse(
    state: &State,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: &str,
) {
    warn!(remote = %conn.remote_address(), "closing connection: {reason}");
    state.metrics.frames_refused.inc();
    state.metrics.error(ErrorKind::Protocol);
    let msg = Message::error(ErrorKind::Protocol, reason);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        write_frame(send, &msg, state.limits.max_frame),
    )
    .await;
    let _ = send.finish();
    // Let the error frame arrive before the connection goes (close discards unsent data).
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    conn.close(close::PROTOCOL.into(), reason.as_bytes());
}
