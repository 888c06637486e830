//! The QUIC driver: binds the endpoint, admits connections
//! ([`crate::admission`]) and hands each one to its task in `connection`,
//! which dispatches every request stream to its handler (`handlers/`).
//!
//! Everything the drivers decide lives in sans-IO types
//! ([`crate::registry`], [`crate::store`], [`crate::ratelimit`],
//! [`crate::admission`], [`crate::broker`]); this file only moves bytes and
//! enforces timeouts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::error::close;
use common::{Fingerprint, Identity};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::admission::Admission;
use crate::checks::Checker;
use crate::config::{Config, StoreChoice};
use crate::connection::serve_connection;
use crate::counted::Counted;
use crate::error::ServerError;
use crate::relay::driver::{self, Relay};
use crate::relay::RelayConfig;
use crate::state::{lock, State};
use crate::store::{NameStore, RedbStore};
use crate::tcp::TcpPeers;
use crate::transport::{bind_sockets, make_endpoint};

/// A running rendezvous server.
pub struct Server {
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    fingerprint: Fingerprint,
    /// The TCP listener and its TLS, when TCP is on.
    tcp: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    /// The cluster bus key's secret, derived from the server key.
    bus_secret: [u8; 32],
    /// The mapping check port's socket until [`Server::run`] serves it;
    /// `None` when there is none.
    mapping: Option<std::net::UdpSocket>,
    /// Where the mapping check port is bound.
    mapping_addr: Option<SocketAddr>,
}

/// The server's key file inside its data dir.
pub fn key_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("server.key")
}

/// Loads (or creates) the server identity kept in `data_dir`.
pub fn load_identity(data_dir: &std::path::Path) -> Result<Identity, ServerError> {
    load_identity_file(&key_path(data_dir))
}

/// Loads (or creates, mode 0600 in a 0700 folder) the server identity at
/// `path` (`--identity FILE`).
pub fn load_identity_file(path: &std::path::Path) -> Result<Identity, ServerError> {
    Ok(Identity::load_or_create(path)?)
}

fn create_data_dir(config: &Config) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })
}

impl Server {
    /// Opens the data dir (key + name store) and binds the UDP socket.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        create_data_dir(&config)?;
        if config.store != StoreChoice::Embedded {
            return Err(ServerError::Config(
                "a PostgreSQL name store is connected first (PgStore::connect), then given to Server::with_store".into(),
            ));
        }
        let store = Arc::new(RedbStore::open(&config.data_dir.join("names.redb"))?);
        Self::with_store(config, store)
    }

    /// Like [`Server::bind`], with another name store (`config.store` is
    /// not looked at).
    pub fn with_store(config: Config, store: Arc<dyn NameStore>) -> Result<Self, ServerError> {
        create_data_dir(&config)?;
        let identity = load_identity_file(&config.key_path())?;
        let limits = config.limits.clone();
        let relay = config.relay.clone().map(|c| Arc::new(Relay::new(c)));
        let tcp_peers = config.tcp.clone().map(TcpPeers::new);
        // Bindings never change: the ones seen are answered without the store.
        let store: Arc<dyn NameStore> = Arc::new(crate::store::CachedStore::new(store));
        let mut state = State::new(limits, store);
        state.relay = relay.clone();
        state.tcp = tcp_peers.clone();
        let state = Arc::new(state);
        let (udp, tcp_listener) = bind_sockets(&config)?;
        let mapping = crate::mapping::bind(config.listen, config.mapping_port)?;
        let mapping_addr = mapping.as_ref().and_then(|s| s.local_addr().ok());
        let checks = Checker::new(Instant::now(), mapping_addr.map_or(0, |a| a.port()));
        let checks = (checks, state.metrics.mapping_checks(false));
        let endpoint = make_endpoint(&identity, &config, udp, relay.clone(), tcp_peers, checks)?;
        let tcp = match tcp_listener {
            Some(listener) => {
                let tls = common::tls::tunnel_server_config(&identity)
                    .map_err(|e| ServerError::Config(e.to_string()))?;
                if let Ok(addr) = listener.local_addr() {
                    info!(%addr, "TCP on (TLS + WebSocket) for peers without UDP");
                }
                Some((listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
            }
            None => {
                info!("TCP off");
                None
            }
        };
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
        Ok(Self {
            endpoint,
            state,
            fingerprint: identity.fingerprint(),
            tcp,
            bus_secret: identity.derive_secret("rdv cluster bus v1"),
            mapping,
            mapping_addr,
        })
    }

    /// Joins a cluster of nodes over its bus (DESIGN §7; `--bus`): names
    /// online here are announced to the other nodes, and calls to names
    /// online there go to them. Call once, before [`Server::run`]; every
    /// node of one cluster must share this server's key.
    pub async fn join(&self, config: crate::cluster::ClusterConfig) -> Result<(), ServerError> {
        let (cluster, incoming) = crate::cluster::Cluster::connect(config, self.bus_secret).await?;
        self.state
            .cluster
            .set(cluster.clone())
            .map_err(|_| ServerError::Config("this server already joined a cluster".into()))?;
        // Watchers here see names at the other nodes come and go.
        let state = Arc::downgrade(&self.state);
        cluster.on_change(move |names| {
            if let Some(state) = state.upgrade() {
                let registry = crate::state::lock(&state.registry);
                state.touch(&registry, names);
            }
        });
        tokio::spawn(crate::handlers::remote::serve(
            self.state.clone(),
            cluster,
            incoming,
        ));
        Ok(())
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The server's fingerprint, for `--server-fingerprint`.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The TCP listener's address; `None` when TCP is off.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where the mapping check port listens (UDP); `None` when it is off
    /// or (by default) could not be bound ([`crate::Config::mapping_port`]).
    pub fn mapping_addr(&self) -> Option<SocketAddr> {
        self.mapping_addr
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
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let sweeper = tokio::spawn(sweep_rates(self.state.clone()));
        let tcp = self.start_tcp();
        let mapping = self.mapping.take().and_then(|socket| {
            crate::mapping::start(socket, self.state.metrics.mapping_checks(true))
        });
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
        if let Some(tcp) = tcp {
            tcp.abort();
        }
        if let Some(expiry) = expiry {
            expiry.abort();
        }
        if let Some(mapping) = mapping {
            mapping.end().await;
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
        if let Some(tcp) = &self.state.tcp {
            tcp.close_all();
        }
    }

    /// Starts accepting tunnels, when TCP is on.
    fn start_tcp(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let (listener, acceptor) = self.tcp.take()?;
        let peers = self.state.tcp.clone()?;
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => Some(tokio::spawn(crate::tcp::serve(listener, peers, acceptor))),
            Err(e) => {
                warn!("TCP listener not started: {e}");
                None
            }
        }
    }

    fn admit(&self, incoming: quinn::Incoming) {
        let ip = self.state.source_ip(incoming.remote_address());
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
