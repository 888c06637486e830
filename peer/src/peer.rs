//! The [`Peer`] handle: one identity, one socket, one server; lookup and call.
//!
//! Listening lives in `listener`. The caller's decisions are in
//! [`crate::call_state`]; this file drives them: ask the server, start the
//! call's path task (probes to every vetted candidate and the relay), dial
//! the call's virtual address once: the handshake races every path.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::relay_frame::Party;
use common::{validate_name, ErrorKind, Fingerprint, Identity, Message};
use tokio::sync::{broadcast, Mutex};
use tracing::debug;

use crate::call::{Call, PathStatus};
use crate::call_state::{AttemptFailure, CallState, Vantage};
use crate::config::PeerConfig;
use crate::endpoint::{is_key_rejected_locally, remote_fingerprint, Socket};
use crate::error::{Error, Result};
use crate::known_peers::{Check, KnownPeers};
use crate::path::PathMode;
use crate::path_task::{PathHandle, TaskContext};
use crate::router::CallSpec;
use crate::server_link::{unexpected, Registration, ServerLink};
use crate::shared::Inner;
use crate::Event;

/// How long [`Peer::shutdown`] lets the connections send their closes.
const CLOSE_LINGER: Duration = Duration::from_millis(10);

/// How long a connected call waits for its path table's first choice
/// before `connected` names the path its packets came in on.
const SETTLE_WAIT: Duration = Duration::from_millis(300);

/// How often a call dials again after a stranger's key answered at one of
/// its addresses (each time without that address).
const MAX_REDIALS: usize = 4;

/// The answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupInfo {
    /// The name.
    pub name: String,
    /// Whether a `listen` holds it now.
    pub online: bool,
    /// The key it is bound to.
    pub fingerprint: Fingerprint,
}

/// Options of one call.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Give up after this long without an authenticated connection (default 10 s).
    pub timeout: Duration,
    /// Accept (and record) a changed key for a known name.
    pub accept_new_key: bool,
    /// `--path`: which paths the call may take. [`PathMode::Relay`] also
    /// keeps our addresses from the callee.
    pub path: PathMode,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            accept_new_key: false,
            path: PathMode::Auto,
        }
    }
}

/// A peer: call others by name, or listen for calls. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), peer::Error> {
/// use peer::{Peer, PeerConfig, CallOptions};
/// let fp = "0".repeat(64).parse().expect("the server's fingerprint");
/// let mut config = PeerConfig::new("rendezvous.example.org:7700", fp);
/// config.name = Some("bob".into());
/// let bob = Peer::new(config).await?;
/// let call = bob.call("alice", CallOptions::default()).await?;
/// println!("{} via {} at {}", call.peer, call.path().as_str(), call.remote_addr());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Peer {
    pub(crate) inner: Arc<Inner>,
}

impl Peer {
    /// Loads (or creates) the identity and binds the socket. Does not contact the server yet.
    pub async fn new(config: PeerConfig) -> Result<Self> {
        if let Some(name) = &config.name {
            validate_name(name)?;
        }
        let nodes =
            crate::ServerList::parse(&config.server).map_err(|e| Error::Usage(e.to_string()))?;
        let identity = Arc::new(Identity::load_or_create(&config.identity)?);
        let socket = Socket::bind(
            config.bind,
            identity.clone(),
            config.timing.clone(),
            &config.limits,
        )?;
        let (events, _) = broadcast::channel(1024);
        let known = KnownPeers::new(config.known_peers.clone());
        let inner = Arc::new(Inner {
            config,
            identity,
            nodes: std::sync::Mutex::new(nodes),
            socket,
            events,
            known,
            link: Mutex::new(None),
            registering: Mutex::new(()),
            call_as_unsupported: Default::default(),
            approve_unsupported: Default::default(),
            standing_unsupported: Default::default(),
            incoming: std::sync::Mutex::new(None),
        });
        tokio::spawn(crate::accept::accept_loop(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// This peer's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// What this peer's NAT does with a mapping, as the server's two check
    /// ports showed it (`Unknown` until they answered, or with a server
    /// that has no second port). A relayed call between a `Symmetric` and
    /// a `Cone` side makes a birthday attempt.
    pub fn nat_mapping(&self) -> crate::Mapping {
        self.inner.socket.router.mapping()
    }

    /// Status events (registration, connections, lost server, ...).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.inner.events.send(event);
    }

    /// The one-shot link, connecting (and registering, if `register`) on first use.
    /// Returns the link and how long connecting took now (zero if it was up).
    async fn link(&self, register: bool) -> Result<(ServerLink, Duration)> {
        let mut slot = self.inner.link.lock().await;
        if let Some((link, registered)) = slot.as_ref() {
            if link.conn.close_reason().is_none() && (*registered || !register) {
                return Ok((link.clone(), Duration::ZERO));
            }
            if link.conn.close_reason().is_some() {
                // Its node went away: start the next round after it.
                let mut nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
                nodes.lost(link.node());
            }
        }
        let inner = &self.inner;
        let link =
            ServerLink::connect(&inner.socket, &inner.config, &inner.nodes, &inner.events).await?;
        self.inner.socket.set_server(link.conn.remote_address());
        let took = link.connect_time;
        if register {
            let name = self.name()?;
            let reg = link.register(&name, false).await?;
            self.on_registered(&link, name, &reg);
        }
        *slot = Some((link.clone(), register));
        Ok((link, took))
    }

    /// The one-shot link for a call: the current one, registered or not, or
    /// a new one, not registered (the call registers with `CallAs`).
    /// Returns the link, how long connecting took now, and whether it is
    /// registered.
    async fn call_link(&self) -> Result<(ServerLink, Duration, bool)> {
        {
            let slot = self.inner.link.lock().await;
            if let Some((link, registered)) = slot.as_ref() {
                if link.conn.close_reason().is_none() {
                    return Ok((link.clone(), Duration::ZERO, *registered));
                }
            }
        }
        let (link, took) = self.link(false).await?;
        let registered = self.is_registered(&link).await;
        Ok((link, took, registered))
    }

    /// `link` is registered as `name`: note the address the server sees,
    /// say so, and let the next one-shot request on it skip registering.
    fn on_registered(&self, link: &ServerLink, name: String, reg: &Registration) {
        self.inner.socket.set_observed(reg.observed_addr);
        self.emit(Event::Registered {
            name,
            fingerprint: reg.fingerprint.to_string(),
            observed_addr: reg.observed_addr.to_string(),
            transport: link.transport().as_str().to_owned(),
        });
    }

    /// Marks the current one-shot link registered, if it is still `link`.
    async fn mark_registered(&self, link: &ServerLink) {
        if let Some((current, registered)) = self.inner.link.lock().await.as_mut() {
            if current.conn.stable_id() == link.conn.stable_id() {
                *registered = true;
            }
        }
    }

    /// Asks the server for the call: `Call` on a registered link, else
    /// `CallAs` (registering in the same request). `Ok(None)`: the server
    /// is older than `CallAs` (it refused it as a bad request).
    async fn ask(
        &self,
        link: &ServerLink,
        to: &str,
        candidates: Vec<SocketAddr>,
        hide_addresses: bool,
        registered: bool,
    ) -> Result<Option<Message>> {
        let plain = |candidates| Message::Call {
            to: to.to_owned(),
            candidates,
            hide_addresses,
        };
        if registered {
            return Ok(Some(link.request(&plain(candidates)).await?));
        }
        let name = self.name()?;
        // One registration in flight per link (the server refuses a second):
        // a call made meanwhile waits for it, then needs only `Call`.
        let registering = self.inner.registering.lock().await;
        if self.inner.call_as_unsupported.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if self.is_registered(link).await {
            drop(registering);
            return Ok(Some(link.request(&plain(candidates)).await?));
        }
        let call = Message::CallAs {
            from: name.clone(),
            to: to.to_owned(),
            candidates,
            hide_addresses,
        };
        let (first, mut answers) = link.request_first(&call).await?;
        match first {
            Message::Registered {
                fingerprint,
                observed_addr,
                ..
            } => {
                let reg = Registration {
                    fingerprint,
                    observed_addr,
                };
                self.on_registered(link, name, &reg);
                self.mark_registered(link).await;
                drop(registering);
                Ok(Some(link.next_answer("CallAs", &mut answers).await?))
            }
            // A server older than `CallAs` cannot decode it.
            Message::Error {
                kind: ErrorKind::Protocol,
                message,
            } if message.starts_with("bad request") => {
                self.inner
                    .call_as_unsupported
                    .store(true, Ordering::Relaxed);
                Ok(None)
            }
            first => Err(unexpected(first, "CallAs")),
        }
    }

    /// Whether the current one-shot link is `link` and registered.
    async fn is_registered(&self, link: &ServerLink) -> bool {
        self.inner
            .link
            .lock()
            .await
            .as_ref()
            .is_some_and(|(l, r)| *r && l.conn.stable_id() == link.conn.stable_id())
    }

    pub(crate) fn name(&self) -> Result<String> {
        self.inner.config.name.clone().ok_or_else(|| {
            Error::Usage("a name is needed: pass --name NAME (or set PEER_NAME)".into())
        })
    }

    /// Whether `name` is online and its key. Never an address.
    pub async fn lookup(&self, name: &str) -> Result<LookupInfo> {
        validate_name(name)?;
        let (link, _) = self.link(false).await?;
        match link
            .request(&Message::Lookup {
                name: name.to_owned(),
            })
            .await?
        {
            Message::LookupResult {
                name: answered,
                online,
                fingerprint,
            } if answered == name => Ok(LookupInfo {
                name: answered,
                online,
                fingerprint,
            }),
            Message::LookupResult { .. } => Err(Error::Protocol(format!(
                "the server answered a lookup of {name} about another name"
            ))),
            other => Err(unexpected(other, "Lookup")),
        }
    }

    /// Calls `to` by name: consent through the server, then a direct,
    /// mutually authenticated connection.
    pub async fn call(&self, to: &str, options: CallOptions) -> Result<Call> {
        validate_name(to)?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + options.timeout);
        let attempt = async {
            let (link, server_time, registered) =
                if self.inner.call_as_unsupported.load(Ordering::Relaxed) {
                    let (link, took) = self.link(true).await?;
                    (link, took, true)
                } else {
                    self.call_link().await?
                };
            let mut call = match self
                .call_over(&link, to, &options, deadline, registered)
                .await?
            {
                Some(call) => call,
                None => {
                    debug!("the server does not know CallAs: registering first");
                    let (link, _) = self.link(true).await?;
                    self.call_over(&link, to, &options, deadline, true)
                        .await?
                        .ok_or_else(|| Error::Protocol("the server refused a Call".into()))?
                }
            };
            call.server_time = server_time;
            Ok::<_, Error>(call)
        };
        let call = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Unreachable {
                    name: to.to_owned(),
                    tried: format!("no answer within {} s", options.timeout.as_secs_f32()),
                })
            }
        };
        self.emit(call.connected_event());
        Ok(call)
    }

    async fn call_over(
        &self,
        link: &ServerLink,
        to: &str,
        options: &CallOptions,
        deadline: tokio::time::Instant,
        registered: bool,
    ) -> Result<Option<Call>> {
        // Read known_peers before asking: a file that cannot be read or has
        // a bad line stops the call (fail closed), never makes `to` "new".
        let known = &self.inner.known;
        let recorded = known.get(to)?;
        let hide = options.path == PathMode::Relay;
        let candidates = if hide {
            vec![]
        } else {
            self.inner.socket.local_candidates()
        };
        let state = CallState::start_with(to, Instant::now(), options.path);
        let Some(answer) = self.ask(link, to, candidates, hide, registered).await? else {
            return Ok(None);
        };
        let server = link.conn.remote_address();
        let state = state
            .on_answer(
                answer,
                |fp| Check::of(recorded, fp),
                options.accept_new_key,
                Vantage {
                    server,
                    observed: self.inner.socket.observed(),
                },
            )
            .map_err(|e| match e {
                Error::KeyChanged { name, old, new, .. } => Error::KeyChanged {
                    name,
                    old,
                    new,
                    file: known.path().to_owned(),
                },
                e => e,
            })?;
        let CallState::Dialing {
            fingerprint,
            pending,
            call_id,
            probe_key,
            relay,
            mode,
            ..
        } = &state
        else {
            return Err(Error::Protocol("call state".into()));
        };
        let fingerprint = *fingerprint;
        let spec = CallSpec {
            call_id: *call_id,
            party: Party::Caller,
            probe_key: *probe_key,
            relay: relay.map(|t| (server, t)),
            candidates: pending.clone(),
            mode: *mode,
            loopback_ok: server.ip().is_loopback(),
        };
        let within = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut handle = crate::path_task::start(&self.path_context(), spec, to.to_owned(), within);
        let config = self
            .inner
            .socket
            .peer_client_config(fingerprint, Some(link.conn.rtt()))?;
        let target = handle.virtual_addr;
        let outcome = match self.dial_call(&handle, config, deadline).await {
            Some(outcome) => outcome,
            None => return Err(state.on_deadline()),
        };
        debug!(ok = outcome.is_ok(), "dial finished");
        let (result, conn) = match outcome {
            Ok(conn) => (Ok(()), Some(conn)),
            Err(why) => (Err(why), None),
        };
        let state = state.on_dialed(target, result, Instant::now())?;
        let (CallState::Connected { setup, .. }, Some(conn)) = (&state, conn) else {
            return Err(Error::Protocol("call state".into()));
        };
        handle.attach(conn.clone());
        // Only over what the check saw: another process may have
        // pinned another key for `to` since (then `key_changed`).
        if let Err(e) = known.record_if_async(to, recorded, &fingerprint).await {
            conn.close(common::error::close::DONE.into(), b"key not recorded");
            return Err(e);
        }
        let settled = handle.settled(&self.inner.socket.router, SETTLE_WAIT).await;
        let paths = handle.call_paths(&self.inner.socket.router, settled);
        Ok(Some(Call::new(
            conn,
            to.to_owned(),
            fingerprint,
            *setup,
            paths,
        )))
    }

    /// Dials the call's virtual address until the handshake is done, the
    /// path task gives up, or `deadline` (then `None`). A stranger at one
    /// candidate (another machine on a LAN address) fails the handshake
    /// with its key: that address is forgotten and the others are dialed
    /// again, [`MAX_REDIALS`] times at most; if nothing else answers, the
    /// stranger is what is reported.
    async fn dial_call(
        &self,
        handle: &PathHandle,
        config: quinn::ClientConfig,
        deadline: tokio::time::Instant,
    ) -> Option<Result<quinn::Connection, AttemptFailure>> {
        let target = handle.virtual_addr;
        let router = &self.inner.socket.router;
        let endpoint = &self.inner.socket.endpoint;
        let mut strangers = 0u32;
        let dial = async {
            let mut outcome = dial_one(endpoint, config.clone(), target).await;
            for _ in 0..MAX_REDIALS {
                let Err(AttemptFailure::WrongKey) = outcome else {
                    break;
                };
                strangers += 1;
                let Some(stranger) = router.forget_last(target) else {
                    break;
                };
                let left = router.targets(target);
                if left.is_none_or(|t| t.direct.is_empty() && !t.relay) {
                    break;
                }
                debug!(%stranger, "another key answered there; dialing the other paths");
                router.redial(target);
                outcome = dial_one(endpoint, config.clone(), target).await;
            }
            outcome
        };
        let mut status = handle.status.clone();
        let gave_up = async move {
            if status
                .wait_for(|s| matches!(s, PathStatus::GaveUp(_)))
                .await
                .is_err()
            {
                std::future::pending::<()>().await;
            }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout_at(deadline, dial) => r.ok(),
            () = gave_up => Some(Err(AttemptFailure::Timeout)),
        };
        match outcome {
            Some(Err(AttemptFailure::Timeout)) | None if strangers > 0 => {
                Some(Err(AttemptFailure::WrongKey))
            }
            other => other,
        }
    }

    /// What a call's path task needs.
    pub(crate) fn path_context(&self) -> TaskContext {
        TaskContext {
            router: self.inner.socket.router.clone(),
            socket: self.inner.socket.udp.clone(),
            events: self.inner.events.clone(),
            config: self.inner.config.paths.clone(),
        }
    }

    /// Closes every connection and lets each send its close, without
    /// waiting out the draining period (3 PTOs: ~300 ms at 40 ms round
    /// trips, for nothing the user needs; the other side drains on its
    /// own). Nothing is lost by not waiting: a stream's data is
    /// acknowledged before [`crate::app::pipe`] returns, and the other side
    /// still reads what it received after the close.
    pub async fn shutdown(&self) {
        self.inner
            .socket
            .endpoint
            .close(common::error::close::DONE.into(), b"bye");
        // Each connection's driver sends its CONNECTION_CLOSE the next time
        // it runs, which is at once: this only lets them run.
        let _ = tokio::time::timeout(CLOSE_LINGER, self.inner.socket.endpoint.wait_idle()).await;
        self.inner.socket.udp.tunnel.remove(None);
    }
}

async fn dial_one(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, AttemptFailure> {
    let connecting = endpoint
        .connect_with(config, addr, common::tls::SERVER_NAME)
        .map_err(|e| AttemptFailure::Other(e.to_string()))?;
    match connecting.await {
        Ok(conn) => match remote_fingerprint(&conn) {
            Some(_) => Ok(conn),
            None => Err(AttemptFailure::WrongKey),
        },
        Err(e) if is_key_rejected_locally(&e) => Err(AttemptFailure::WrongKey),
        Err(quinn::ConnectionError::TimedOut) => Err(AttemptFailure::Timeout),
        Err(e) => Err(AttemptFailure::Other(e.to_string())),
    }
}
