//! The link to the rendezvous server: connect, ask, and receive call offers.
//!
//! Each request is one bidirectional stream (see [`common::messages`]); call
//! offers arrive on streams the server opens. Failures map onto the error
//! kinds of the command-line contract: a wrong `--server-fingerprint` is
//! `bad_fingerprint`, another protocol version `version_mismatch`, no answer
//! `server_unreachable`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::error::close;
use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{ErrorKind, Fingerprint, Message};

use tokio::sync::broadcast;

use crate::config::{PeerConfig, Transport, TransportMode};
use crate::endpoint::{is_key_rejected_locally, is_version_mismatch, Socket};
use crate::error::{Error, Result};
use crate::fallback::{self, Boxed};
use crate::tcp;
use crate::Event;

/// An authenticated connection to the server.
#[derive(Debug, Clone)]
pub(crate) struct ServerLink {
    pub(crate) conn: quinn::Connection,
    /// How long connecting took.
    pub(crate) connect_time: Duration,
    server: String,
    timeout: Duration,
    /// Whether it runs over the TCP tunnel now (shared by its clones and
    /// its watcher, which moves it back to UDP).
    transport: Arc<AtomicBool>,
    /// Held by every clone the owner has (not the watcher's): when the last
    /// one goes, the watcher ends, so a dropped link is not kept alive.
    _owned: Option<Arc<tokio::sync::watch::Sender<()>>>,
}

/// What a registration told us.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) observed_addr: SocketAddr,
}

async fn resolve(server: &str, local: SocketAddr) -> Result<SocketAddr> {
    let unreachable = |reason: String| Error::ServerUnreachable {
        server: server.to_owned(),
        reason,
    };
    let addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| unreachable(format!("cannot resolve: {e}")))?;
    let addrs: Vec<SocketAddr> = addrs.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| unreachable("the name has no address".into()))
}

impl ServerLink {
    /// Connects and authenticates the server (pinned fingerprint), over
    /// the transport [`PeerConfig::transport`] asks for (see
    /// [`crate::fallback`] for `auto`), all within
    /// [`crate::Timing::server_connect_timeout`]. A link on the TCP tunnel
    /// gets its watcher ([`crate::link_watch`]); `events` hears of its move
    /// back to UDP.
    pub(crate) async fn connect(
        socket: &Socket,
        config: &PeerConfig,
        events: &broadcast::Sender<Event>,
    ) -> Result<Self> {
        let server = config.server.clone();
        let started = Instant::now();
        let addr = resolve(&server, socket.local_addr()?).await?;
        // Before the handshake: its packets must reach quinn even while a
        // call holds stray Initials off.
        socket.router.add_server(addr);
        let timeout = config.timing.server_connect_timeout;
        let mut tcp_error = None;
        let mut installed = None;
        let attempt = connect_over(socket, config, addr, &mut tcp_error, &mut installed);
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::ServerUnreachable {
                server: server.clone(),
                reason: format!(
                    "no answer within {} s{}",
                    timeout.as_secs_f32(),
                    tcp_error
                        .map(|e| format!(" (over TCP: {e})"))
                        .unwrap_or_default()
                ),
            }),
        };
        let tunnel = match &result {
            Ok((_, Transport::Tcp)) => socket.udp.tunnel.live(addr),
            _ => None,
        };
        let (conn, transport) = match (result, &tunnel) {
            (Ok((conn, Transport::Tcp)), None) => {
                conn.close(close::DONE.into(), b"tunnel lost");
                Err(Error::ServerUnreachable {
                    server: server.clone(),
                    reason: "the TCP tunnel closed during the handshake".into(),
                })
            }
            (result, _) => result,
        }
        .inspect_err(|_| {
            if let Some(id) = installed {
                socket.udp.tunnel.remove(Some(id));
            }
        })?;
        let (owned, dropped) = tokio::sync::watch::channel(());
        let link = Self {
            conn,
            connect_time: started.elapsed(),
            server,
            timeout: config.timing.request_timeout,
            transport: Arc::new(AtomicBool::new(transport == Transport::Tcp)),
            _owned: Some(Arc::new(owned)),
        };
        if let Some((id, tunnel)) = tunnel {
            crate::link_watch::spawn(crate::link_watch::Watch {
                link: Self {
                    _owned: None,
                    ..link.clone()
                },
                dropped,
                udp: socket.udp.clone(),
                addr,
                tunnel,
                id,
                retry: (config.transport == TransportMode::Auto)
                    .then_some(config.timing.udp_retry_interval),
                events: events.clone(),
                poke_name: config.name.clone().unwrap_or_else(|| "a".into()),
            });
        }
        Ok(link)
    }

    /// The transport the link runs over now.
    pub(crate) fn transport(&self) -> Transport {
        if self.transport.load(Ordering::Relaxed) {
            Transport::Tcp
        } else {
            Transport::Udp
        }
    }

    /// Notes that the link moved to `transport`.
    pub(crate) fn set_transport(&self, transport: Transport) {
        self.transport
            .store(transport == Transport::Tcp, Ordering::Relaxed);
    }

    /// Sends `msg` on a new stream and waits for the one answer.
    pub(crate) async fn request(&self, msg: &Message) -> Result<Message> {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| self.lost(e))?;
            write_frame(&mut send, msg, MAX_FRAME)
                .await
                .map_err(|e| self.stream_error(e))?;
            let _ = send.finish();
            read_frame::<Message, _>(&mut recv, MAX_FRAME)
                .await
                .map_err(|e| self.stream_error(e))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::ServerUnreachable {
                server: self.server.clone(),
                reason: format!(
                    "no answer to {} within {} s",
                    msg.kind_name(),
                    self.timeout.as_secs()
                ),
            }),
        }
    }

    fn stream_error(&self, e: common::framing::FrameError) -> Error {
        match self.conn.close_reason() {
            Some(reason) => self.lost(reason),
            None => Error::Protocol(format!("server stream: {e}")),
        }
    }

    /// The error for a lost connection.
    pub(crate) fn lost(&self, e: quinn::ConnectionError) -> Error {
        match &e {
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == close::REPLACED.into() =>
            {
                Error::Replaced
            }
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == close::PROTOCOL.into() =>
            {
                Error::Protocol(format!(
                    "the server closed the connection: {}",
                    String::from_utf8_lossy(&c.reason)
                ))
            }
            _ => Error::ServerUnreachable {
                server: self.server.clone(),
                reason: format!("connection lost: {e}"),
            },
        }
    }

    /// Claims `name` for our key; with `presence`, this link makes us callable.
    pub(crate) async fn register(&self, name: &str, presence: bool) -> Result<Registration> {
        let reply = self
            .request(&Message::Register {
                name: name.to_owned(),
                presence,
            })
            .await?;
        match reply {
            Message::Registered {
                fingerprint,
                observed_addr,
                ..
            } => Ok(Registration {
                fingerprint,
                observed_addr,
            }),
            other => Err(unexpected(other, "Register")),
        }
    }

    /// The next call offer (a stream the server opened).
    pub(crate) async fn next_offer(&self) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        self.conn.accept_bi().await.map_err(|e| self.lost(e))
    }

    /// When the server closed this link because it is shutting down: the
    /// time over which to spread the first reconnection
    /// ([`close::reconnect_spread`]).
    pub(crate) fn shutdown_spread(&self) -> Option<Duration> {
        match self.conn.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == close::SHUTDOWN.into() =>
            {
                Some(close::reconnect_spread(&c.reason))
            }
            _ => None,
        }
    }

    /// The server's address as configured.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }
}

/// The QUIC handshake to the server at `addr` over whatever the socket
/// sends it through, with the contract's error kinds.
fn dial<'a>(
    socket: &'a Socket,
    config: &'a PeerConfig,
    addr: SocketAddr,
) -> Boxed<'a, quinn::Connection> {
    Box::pin(async move {
        let server = &config.server;
        let unreachable = |reason: String| Error::ServerUnreachable {
            server: server.clone(),
            reason,
        };
        let client_config =
            socket.server_client_config(config.server_fingerprint, &config.server_alpn)?;
        let connecting = socket
            .endpoint
            .connect_with(client_config, addr, common::tls::SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        match connecting.await {
            Ok(conn) => Ok(conn),
            Err(e) if is_key_rejected_locally(&e) => Err(Error::BadServerFingerprint {
                server: server.clone(),
                expected: config.server_fingerprint.to_string(),
            }),
            Err(e) if is_version_mismatch(&e) => Err(Error::VersionMismatch {
                server: server.clone(),
                version: String::from_utf8_lossy(&config.server_alpn).into_owned(),
            }),
            Err(e) => Err(unreachable(e.to_string())),
        }
    })
}

/// Opens the TCP tunnel to `addr` (bounded by the connect timeout around it).
fn open_tunnel<'a>(config: &'a PeerConfig, addr: SocketAddr) -> Boxed<'a, tcp::Opened> {
    Box::pin(async move {
        let target = tcp::Target {
            server: &config.server,
            addr,
            fingerprint: config.server_fingerprint,
            proxy: config.proxy.as_ref(),
        };
        tcp::open(&target, config.timing.server_connect_timeout).await
    })
}

/// The handshake over the transport `config` asks for; `installed` gets
/// the id of a tunnel this attempt installed (removed again if it fails).
async fn connect_over(
    socket: &Socket,
    config: &PeerConfig,
    addr: SocketAddr,
    tcp_error: &mut Option<String>,
    installed: &mut Option<u64>,
) -> Result<(quinn::Connection, Transport)> {
    let mode = config.transport;
    let tunnel = &socket.udp.tunnel;
    if mode != TransportMode::Udp && tunnel.live(addr).is_some() {
        return Ok((dial(socket, config, addr).await?, Transport::Tcp));
    }
    match mode {
        TransportMode::Udp => Ok((dial(socket, config, addr).await?, Transport::Udp)),
        TransportMode::Tcp => {
            let opened = open_tunnel(config, addr).await?;
            *installed = Some(tunnel.install(addr, opened.tunnel, opened.inbox));
            Ok((dial(socket, config, addr).await?, Transport::Tcp))
        }
        TransportMode::Auto => {
            // A server that answers over UDP at all (a Retry, a slow
            // handshake under load) is reachable there: no TCP then. The
            // race only falls back when UDP heard nothing.
            tunnel.watch_udp(addr);
            let heard = || tunnel.udp_heard();
            let open = || -> Boxed<'_, tcp::Opened> {
                if heard() {
                    return Box::pin(std::future::pending());
                }
                Box::pin(async move {
                    let opened = open_tunnel(config, addr).await?;
                    if heard() {
                        opened.tunnel.close();
                        return Err(Error::ServerUnreachable {
                            server: config.server.clone(),
                            reason: "UDP answered meanwhile".into(),
                        });
                    }
                    Ok(opened)
                })
            };
            let over_tunnel = |opened: tcp::Opened| {
                *installed = Some(tunnel.install(addr, opened.tunnel, opened.inbox));
                tracing::info!(server = %config.server, "no answer over UDP: the server link goes over TCP");
                dial(socket, config, addr)
            };
            let won = fallback::race(
                dial(socket, config, addr),
                config.timing.tcp_fallback_after,
                open,
                over_tunnel,
                tcp_error,
            )
            .await;
            tunnel.unwatch_udp();
            won
        }
    }
}

/// Turns an answer that is not the expected one into an error.
pub(crate) fn unexpected(reply: Message, request: &str) -> Error {
    match reply {
        Message::Error { kind, message } => Error::Server { kind, message },
        other => Error::Server {
            kind: ErrorKind::Protocol,
            message: format!("server answered {request} with {}", other.kind_name()),
        },
    }
}
