//! What every task of the server shares: limits, the name store, the
//! registry, the rate limiters, the metrics and the relay.
//!
//! The connection drivers ([`crate::server`]) create it; the request
//! handlers and the connection bookkeeping read and change it under its
//! locks. It depends on none of them, so the modules form a DAG:
//! `server` → `handlers` → `state`.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{oneshot, Notify};

use crate::admission::Sources;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::presence::LocalPresence;
use crate::ratelimit::RateLimiter;
use crate::registry::{Registry, SessionId};
use crate::relay::driver::Relay;
use crate::store::NameStore;
use crate::watchers::Watchers;

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
    /// The TCP peers; `None` when TCP is off.
    pub(crate) tcp: Option<Arc<crate::tcp::TcpPeers>>,
    /// The cluster this node joined ([`crate::Server::join`]); unset on a
    /// single node.
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Offers from other nodes whose callee accepted: the offer's stream,
    /// waiting for the caller's node's `Dial`, by (node, call id).
    pub(crate) remote_dials: Mutex<std::collections::HashMap<(String, u64), quinn::SendStream>>,
    /// Offers from other nodes seen lately, by (node, call id): a replayed
    /// bus message rings nobody twice.
    pub(crate) seen_offers: Mutex<crate::handlers::remote::SeenOffers>,
    /// Who watches whom (`peer watch`); locked after the registry, before
    /// the cluster's books.
    pub(crate) watchers: Mutex<Watchers<Arc<Notify>>>,
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
            tcp: None,
            cluster: std::sync::OnceLock::new(),
            remote_dials: Mutex::default(),
            seen_offers: Mutex::default(),
            watchers: Mutex::default(),
        }
    }

    /// The key of `name` if it is online here or at another node: the
    /// session (or the node) registered it after the store confirmed the
    /// binding, and bindings never change, so this needs no store read
    /// (lookups and calls of online names work while the store is down).
    pub(crate) fn online_owner(&self, name: &str) -> Option<common::Fingerprint> {
        let local = lock(&self.registry)
            .present(name)
            .map(|(_, s)| s.fingerprint);
        local.or_else(|| Some(self.presence().find(name)?.online.fingerprint))
    }

    /// The key `name` shows online with to lookups and watchers, if it is
    /// online here or at another node (`registry` is the locked registry).
    pub(crate) fn visible_owner(
        &self,
        registry: &Registry<quinn::Connection>,
        name: &str,
    ) -> Option<common::Fingerprint> {
        // An invisible listen here hides the name, whatever other nodes say.
        if let Some((_, session)) = registry.present(name) {
            return (!session.invisible).then_some(session.fingerprint);
        }
        let found = self.presence().find(name)?;
        (!found.online.invisible).then_some(found.online.fingerprint)
    }

    /// Tells the watchers of `names` their states now (after the registry
    /// or the cluster's directory changed); `None`: every watched name (a
    /// resync, a node's lease ran out). Only changes are pushed.
    pub(crate) fn touch(&self, registry: &Registry<quinn::Connection>, names: Option<&[String]>) {
        let mut watchers = lock(&self.watchers);
        let all;
        let names = match names {
            Some(names) => names,
            None => {
                all = watchers.watched();
                &all
            }
        };
        let mut wake = Vec::new();
        for name in names {
            if !watchers.is_watched(name) {
                continue;
            }
            wake.extend(watchers.update(name, self.visible_owner(registry, name)));
        }
        drop(watchers);
        for notify in wake {
            notify.notify_one();
        }
    }

    /// Presence beyond this node: the cluster's, or [`LocalPresence`] on
    /// a single node.
    pub(crate) fn presence(&self) -> &dyn crate::presence::Presence {
        match self.cluster.get() {
            Some(cluster) => cluster.as_ref(),
            None => &LocalPresence,
        }
    }

    /// The cluster, when this node is one of several.
    pub(crate) fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
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
        if let Some(tcp) = &self.tcp {
            self.metrics.set_tcp(&tcp.stats, tcp.open_count());
        }
        {
            let watchers = lock(&self.watchers);
            self.metrics
                .set_watch(watchers.subscriptions(), watchers.watches());
        }
        if let Some(cluster) = self.cluster() {
            let (nodes, names) = cluster.counts();
            self.metrics.set_cluster(nodes, names, cluster.refused());
        }
        self.metrics.render(&registry)
    }

    /// The IP that per-source limits count `addr` under: a TCP peer's
    /// real IP for its virtual address.
    pub(crate) fn source_ip(&self, addr: std::net::SocketAddr) -> IpAddr {
        match &self.tcp {
            Some(tcp) => tcp.real_ip(addr),
            None => common::candidates::canonical(addr).ip(),
        }
    }

    /// Where a peer really is: a TCP peer's real address for its virtual
    /// one, `addr` otherwise.
    pub(crate) fn real_addr(&self, addr: std::net::SocketAddr) -> std::net::SocketAddr {
        self.tcp
            .as_ref()
            .and_then(|tcp| tcp.real(addr))
            .unwrap_or(addr)
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
