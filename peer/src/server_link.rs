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
use std::time::Duration;

use common::error::close;
use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{ErrorKind, Fingerprint, Message};

use crate::config::Transport;
use crate::error::{Error, Result};
use crate::server_list::Node;

#[path = "server_connect.rs"]
mod connect;

/// An authenticated connection to the server.
#[derive(Debug, Clone)]
pub(crate) struct ServerLink {
    pub(crate) conn: quinn::Connection,
    /// How long connecting took.
    pub(crate) connect_time: Duration,
    /// How errors and events name its node ([`Node::name`]).
    server: String,
    /// The node of the server list it is connected to.
    node: Node,
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

impl ServerLink {
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
        Ok(self.request_first(msg).await?.0)
    }

    /// Sends `msg` on a new stream and waits for its first answer; more may
    /// follow on the stream ([`Self::next_answer`]), as for `CallAs`.
    pub(crate) async fn request_first(
        &self,
        msg: &Message,
    ) -> Result<(Message, quinn::RecvStream)> {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| self.lost(e))?;
            write_frame(&mut send, msg, MAX_FRAME)
                .await
                .map_err(|e| self.stream_error(e))?;
            let _ = send.finish();
            let first = read_frame::<Message, _>(&mut recv, MAX_FRAME)
                .await
                .map_err(|e| self.stream_error(e))?;
            Ok((first, recv))
        };
        self.within(msg.kind_name(), exchange).await
    }

    /// The next answer on a request's stream.
    pub(crate) async fn next_answer(
        &self,
        request: &str,
        recv: &mut quinn::RecvStream,
    ) -> Result<Message> {
        let read = async {
            read_frame::<Message, _>(recv, MAX_FRAME)
                .await
                .map_err(|e| self.stream_error(e))
        };
        self.within(request, read).await
    }

    /// `exchange`, or `server_unreachable` when the server takes longer
    /// than the request timeout.
    async fn within<T>(
        &self,
        request: &str,
        exchange: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::ServerUnreachable {
                server: self.server.clone(),
                reason: format!("no answer to {request} within {} s", self.timeout.as_secs()),
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
        self.register_as(name, presence, false).await
    }

    /// [`ServerLink::register`]; a presence that is `invisible` is
    /// callable but shown offline to lookups and watchers.
    pub(crate) async fn register_as(
        &self,
        name: &str,
        presence: bool,
        invisible: bool,
    ) -> Result<Registration> {
        let name = name.to_owned();
        let msg = match (presence, invisible) {
            (true, true) => Message::RegisterInvisible { name },
            _ => Message::Register { name, presence },
        };
        let reply = self.request(&msg).await?;
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

    /// The node's name ([`Node::name`]: its entry in the server list,
    /// and its address when the entry is a DNS name).
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// The node of the server list it is connected to.
    pub(crate) fn node(&self) -> &Node {
        &self.node
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
