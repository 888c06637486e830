//! The link to the rendezvous server: connect, ask, and receive call offers.
//!
//! Each request is one bidirectional stream (see [`common::messages`]); call
//! offers arrive on streams the server opens. Failures map onto the error
//! kinds of the command-line contract: a wrong `--server-fingerprint` is
//! `bad_fingerprint`, another protocol version `version_mismatch`, no answer
//! `server_unreachable`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::error::close;
use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{ErrorKind, Fingerprint, Message};

use crate::config::PeerConfig;
use crate::endpoint::{is_key_rejected_locally, is_version_mismatch, Socket};
use crate::error::{Error, Result};

/// An authenticated connection to the server.
#[derive(Debug, Clone)]
pub(crate) struct ServerLink {
    pub(crate) conn: quinn::Connection,
    /// How long connecting took.
    pub(crate) connect_time: Duration,
    server: String,
    timeout: Duration,
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
    /// Connects and authenticates the server (pinned fingerprint).
    pub(crate) async fn connect(socket: &Socket, config: &PeerConfig) -> Result<Self> {
        let server = config.server.clone();
        let started = Instant::now();
        let addr = resolve(&server, socket.local_addr()?).await?;
        // Before the handshake: its packets must reach quinn even while a
        // call holds stray Initials off.
        socket.router.add_server(addr);
        let client_config =
            socket.server_client_config(config.server_fingerprint, &config.server_alpn)?;
        let unreachable = |reason: String| Error::ServerUnreachable {
            server: server.clone(),
            reason,
        };
        let connecting = socket
            .endpoint
            .connect_with(client_config, addr, common::tls::SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let timeout = config.timing.server_connect_timeout;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    timeout.as_secs_f32()
                )))
            }
            Ok(Err(e)) if is_key_rejected_locally(&e) => {
                return Err(Error::BadServerFingerprint {
                    server,
                    expected: config.server_fingerprint.to_string(),
                });
            }
            Ok(Err(e)) if is_version_mismatch(&e) => {
                return Err(Error::VersionMismatch {
                    server,
                    version: String::from_utf8_lossy(&config.server_alpn).into_owned(),
                });
            }
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(conn)) => conn,
        };
        Ok(Self {
            conn,
            connect_time: started.elapsed(),
            server,
            timeout: config.timing.request_timeout,
        })
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
