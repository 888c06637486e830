//! Connecting a [`ServerLink`]: one round over the nodes of `--server`
//! ([`ServerList`] decides the order), each node with the UDP/TCP
//! fallback of [`crate::fallback`] and its own
//! [`crate::Timing::server_connect_timeout`].

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::error::close;
use tokio::sync::broadcast;
use tracing::debug;

use super::ServerLink;
use crate::config::{PeerConfig, Transport, TransportMode};
use crate::endpoint::{is_key_rejected_locally, is_version_mismatch, Socket};
use crate::error::{Error, Result};
use crate::fallback::{self, Boxed};
use crate::server_list::{Node, ServerList};
use crate::tcp;
use crate::Event;

fn lock(nodes: &Mutex<ServerList>) -> std::sync::MutexGuard<'_, ServerList> {
    nodes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Each entry's addresses (empty when it did not resolve within
/// `within`), and what went wrong with those that did not.
async fn resolve_all(entries: &[String], within: Duration) -> (Vec<Vec<SocketAddr>>, Vec<String>) {
    let tasks: Vec<_> = entries
        .iter()
        .cloned()
        .map(|entry| {
            tokio::spawn(async move {
                match tokio::time::timeout(within, tokio::net::lookup_host(entry.as_str())).await {
                    Ok(Ok(addrs)) => Ok(addrs.collect::<Vec<_>>()),
                    Ok(Err(e)) => Err(format!("{entry}: cannot resolve: {e}")),
                    Err(_) => Err(format!(
                        "{entry}: no DNS answer within {} s",
                        within.as_secs_f32()
                    )),
                }
            })
        })
        .collect();
    let mut resolved = Vec::with_capacity(tasks.len());
    let mut failures = Vec::new();
    for (task, entry) in tasks.into_iter().zip(entries) {
        match task.await {
            Ok(Ok(addrs)) if addrs.is_empty() => {
                failures.push(format!("{entry}: the name has no address"));
                resolved.push(addrs);
            }
            Ok(Ok(addrs)) => resolved.push(addrs),
            Ok(Err(why)) => {
                failures.push(why);
                resolved.push(vec![]);
            }
            Err(e) => {
                failures.push(format!("{entry}: resolving failed: {e}"));
                resolved.push(vec![]);
            }
        }
    }
    (resolved, failures)
}

impl ServerLink {
    /// Connects and authenticates a node of the server list (pinned
    /// fingerprint: every node of a cluster has the one key), trying the
    /// nodes in the order of [`ServerList::round`] and staying on the first
    /// that answers. Each node gets the transport [`PeerConfig::transport`]
    /// asks for (see [`crate::fallback`] for `auto`) within
    /// [`crate::Timing::server_connect_timeout`]. A link on the TCP tunnel
    /// gets its watcher ([`crate::link_watch`]); `events` hears of its move
    /// back to UDP. With one node its error is the answer; with several,
    /// a wrong key or version anywhere beats "unreachable".
    pub(crate) async fn connect(
        socket: &Socket,
        config: &PeerConfig,
        nodes: &Mutex<ServerList>,
        events: &broadcast::Sender<Event>,
    ) -> Result<Self> {
        let entries = lock(nodes).entries().to_vec();
        let ipv4 = socket.local_addr()?.is_ipv4();
        let (resolved, mut failures) =
            resolve_all(&entries, config.timing.server_connect_timeout).await;
        let round = lock(nodes).round(&resolved, ipv4);
        if round.is_empty() {
            return Err(Error::ServerUnreachable {
                server: config.server.clone(),
                reason: failures.join("; "),
            });
        }
        let single = round.len() == 1 && failures.is_empty();
        let mut definitive = None;
        for node in &round {
            match Self::connect_node(socket, config, node, events).await {
                Ok(link) => {
                    lock(nodes).connected(node);
                    return Ok(link);
                }
                Err(e) if single => return Err(e),
                Err(e) => {
                    debug!(node = %node.name(), "server node did not answer: {e}");
                    failures.push(format!("{}: {}", node.name(), reason(&e)));
                    if fallback::is_definitive(&e) && definitive.is_none() {
                        definitive = Some(e);
                    }
                }
            }
        }
        Err(definitive.unwrap_or_else(|| Error::ServerUnreachable {
            server: config.server.clone(),
            reason: format!("no node answered ({})", failures.join("; ")),
        }))
    }

    /// [`ServerLink::connect`] to one node.
    async fn connect_node(
        socket: &Socket,
        config: &PeerConfig,
        node: &Node,
        events: &broadcast::Sender<Event>,
    ) -> Result<Self> {
        let server = node.name();
        let addr = node.addr;
        let started = Instant::now();
        // Before the handshake: its packets must reach quinn even while a
        // call holds stray Initials off.
        socket.router.add_server(addr);
        let timeout = config.timing.server_connect_timeout;
        let mut tcp_error = None;
        let mut installed = None;
        let attempt = connect_over(socket, config, node, &mut tcp_error, &mut installed);
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
        if transport == Transport::Udp {
            // What the NAT does with a mapping (a relayed call's birthday
            // attempt needs it), asked beside the link's first requests.
            tokio::spawn(crate::mapping::detect(
                socket.udp.clone(),
                socket.router.clone(),
                addr,
            ));
        }
        let (owned, dropped) = tokio::sync::watch::channel(());
        let link = Self {
            conn,
            connect_time: started.elapsed(),
            server,
            node: node.clone(),
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
}

/// An error's words without the "cannot reach …" frame (the round's
/// message names each node itself).
fn reason(e: &Error) -> String {
    match e {
        Error::ServerUnreachable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The QUIC handshake to `node` over whatever the socket sends it
/// through, with the contract's error kinds.
fn dial<'a>(
    socket: &'a Socket,
    config: &'a PeerConfig,
    node: &'a Node,
) -> Boxed<'a, quinn::Connection> {
    Box::pin(async move {
        let server = node.name();
        let unreachable = |reason: String| Error::ServerUnreachable {
            server: server.clone(),
            reason,
        };
        let client_config =
            socket.server_client_config(config.server_fingerprint, &config.server_alpn)?;
        let connecting = socket
            .endpoint
            .connect_with(client_config, node.addr, common::tls::SERVER_NAME)
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

/// Opens the TCP tunnel to `node` (bounded by the connect timeout around it).
fn open_tunnel<'a>(config: &'a PeerConfig, node: &'a Node) -> Boxed<'a, tcp::Opened> {
    Box::pin(async move {
        let target = tcp::Target {
            server: &node.entry,
            addr: node.addr,
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
    node: &Node,
    tcp_error: &mut Option<String>,
    installed: &mut Option<u64>,
) -> Result<(quinn::Connection, Transport)> {
    let mode = config.transport;
    let addr = node.addr;
    let tunnel = &socket.udp.tunnel;
    if mode != TransportMode::Udp && tunnel.live(addr).is_some() {
        return Ok((dial(socket, config, node).await?, Transport::Tcp));
    }
    match mode {
        TransportMode::Udp => Ok((dial(socket, config, node).await?, Transport::Udp)),
        TransportMode::Tcp => {
            let opened = open_tunnel(config, node).await?;
            *installed = Some(tunnel.install(addr, opened.tunnel, opened.inbox));
            Ok((dial(socket, config, node).await?, Transport::Tcp))
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
                    let opened = open_tunnel(config, node).await?;
                    if heard() {
                        opened.tunnel.close();
                        return Err(Error::ServerUnreachable {
                            server: node.name(),
                            reason: "UDP answered meanwhile".into(),
                        });
                    }
                    Ok(opened)
                })
            };
            let over_tunnel = |opened: tcp::Opened| {
                *installed = Some(tunnel.install(addr, opened.tunnel, opened.inbox));
                tracing::info!(server = %node.name(), "no answer over UDP: the server link goes over TCP");
                dial(socket, config, node)
            };
            let won = fallback::race(
                dial(socket, config, node),
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
