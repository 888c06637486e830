//! Presence of other names, pushed by the server (`peer watch`).
//!
//! A [`Watcher`] keeps its own connection to the server (no name needed,
//! as for a lookup) with one stream that asks for the names
//! ([`common::messages::MAX_WATCH_BATCH`] per frame) and then hears every
//! change. When the server is lost it says so (`rendezvous_lost`), moves to
//! the next listed node, watches again (`rendezvous_restored`) and hears
//! each name's state again. Each state is also a [`Event::Presence`] on
//! [`Peer::events`].

use std::collections::HashSet;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::messages::{MAX_WATCHED, MAX_WATCH_BATCH};
use common::{validate_name, ErrorKind, Fingerprint, Message};
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::{Error, Result};
use crate::events::Event;
use crate::peer::Peer;
use crate::server_link::ServerLink;

/// A watched name's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// The name.
    pub name: String,
    /// Whether a visible `listen` holds it now.
    pub online: bool,
    /// The key it is bound to; `None`: no one has registered it.
    pub fingerprint: Option<Fingerprint>,
}

/// The states of watched names, as they come ([`Peer::watch`]). Dropping
/// it ends the watch. Read it ([`Watcher::next`]) even if you use the
/// `presence` events instead: it holds at most [`MAX_WATCHED`] unread
/// states, and a full one holds the watch up (the server then drops the
/// stream, and the watch starts again).
#[derive(Debug)]
pub struct Watcher {
    rx: mpsc::Receiver<Result<PresenceUpdate>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// The next state; `Err` when the watch ended on an error it cannot
    /// recover from (the server refused it). Server losses are retried.
    pub async fn next(&mut self) -> Option<Result<PresenceUpdate>> {
        self.rx.recv().await
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    /// Watches `names`: each one's state now, then every change, pushed by
    /// the server, until the [`Watcher`] is dropped. At most
    /// [`MAX_WATCHED`] names.
    pub fn watch(&self, names: Vec<String>) -> Result<Watcher> {
        let mut seen = HashSet::new();
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .collect();
        if names.is_empty() {
            return Err(Error::Usage("name at least one name to watch".into()));
        }
        if names.len() > MAX_WATCHED {
            return Err(Error::Usage(format!(
                "at most {MAX_WATCHED} names can be watched at once"
            )));
        }
        for name in &names {
            validate_name(name)?;
        }
        let (tx, rx) = mpsc::channel(MAX_WATCHED);
        let task = tokio::spawn(watch_loop(self.clone(), names, tx));
        Ok(Watcher { rx, task })
    }
}

type Tx = mpsc::Sender<Result<PresenceUpdate>>;

/// A watch that ran this long before failing starts the backoff afresh.
const LONG_WATCH: Duration = Duration::from_secs(10);

async fn watch_loop(peer: Peer, names: Vec<String>, tx: Tx) {
    let max = peer.inner.config.timing.reconnect_max;
    let mut wait = Duration::from_millis(200);
    let mut lost = false;
    loop {
        let inner = &peer.inner;
        let link =
            match ServerLink::connect(&inner.socket, &inner.config, &inner.nodes, &inner.events)
                .await
            {
                Ok(link) => link,
                Err(e) if e.is_transient() => {
                    peer.emit(Event::error(&e));
                    tokio::time::sleep(wait.mul_f64(rand::random::<f64>() * 0.5 + 0.75)).await;
                    wait = (wait * 2).min(max);
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
        inner.socket.set_server(link.conn.remote_address());
        if lost {
            peer.emit(Event::RendezvousRestored {
                server: link.server().to_owned(),
            });
        }
        let started = tokio::time::Instant::now();
        let ended = watch_on(&peer, &link, &names, &tx).await;
        if tx.is_closed() {
            return;
        }
        if !ended.is_transient() {
            let _ = tx.send(Err(ended)).await;
            return;
        }
        debug!(server = link.server(), "watch lost: {ended}");
        if link.conn.close_reason().is_some() {
            // The node is gone: the next round starts at the next one.
            inner
                .nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .lost(link.node());
            peer.emit(Event::RendezvousLost {
                server: link.server().to_owned(),
            });
            lost = true;
        } else {
            // The node is there but the watch failed (its store is down, a
            // stream reset): say so, and ask again after the backoff.
            peer.emit(Event::error(&ended));
            link.conn
                .close(common::error::close::DONE.into(), b"watch again");
        }
        // A watch that failed soon after it started waits before the next
        // (jittered, doubling up to `reconnect_max`); one that ran a while
        // starts the backoff afresh.
        if started.elapsed() > LONG_WATCH {
            wait = Duration::from_millis(200);
        } else {
            tokio::time::sleep(wait.mul_f64(rand::random::<f64>() * 0.5 + 0.75)).await;
            wait = (wait * 2).min(max);
        }
    }
}

/// Watches `names` on `link` until it fails; the error says why.
async fn watch_on(peer: &Peer, link: &ServerLink, names: &[String], tx: &Tx) -> Error {
    let (mut send, mut recv) = match link.conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return link.lost(e),
    };
    let watched: HashSet<&str> = names.iter().map(String::as_str).collect();
    for batch in names.chunks(MAX_WATCH_BATCH) {
        if let Err(e) = ask(peer, link, (&mut send, &mut recv), batch, &watched, tx).await {
            return e;
        }
    }
    loop {
        let frame = tokio::select! {
            f = read_frame::<Message, _>(&mut recv, MAX_FRAME) => f,
            _ = tx.closed() => return Error::Usage("the watcher was dropped".into()),
        };
        match frame {
            Ok(msg) => {
                if let Err(e) = deliver(peer, msg, &watched, tx).await {
                    return e;
                }
            }
            Err(e) => return stream_lost(link, &e),
        }
    }
}

/// Sends one batch and reads up to its `Watching`; a rate-limited batch is
/// sent again a second later (a few times).
async fn ask(
    peer: &Peer,
    link: &ServerLink,
    (send, recv): (&mut quinn::SendStream, &mut quinn::RecvStream),
    batch: &[String],
    watched: &HashSet<&str>,
    tx: &Tx,
) -> Result<()> {
    let mut tries = 0;
    loop {
        let msg = Message::Watch {
            names: batch.to_vec(),
        };
        if let Err(e) = write_frame(send, &msg, MAX_FRAME).await {
            return Err(stream_lost(link, &e));
        }
        loop {
            let frame = tokio::time::timeout(
                peer.inner
                    .config
                    .timing
                    .server_connect_timeout
                    .max(Duration::from_secs(5)),
                read_frame::<Message, _>(recv, MAX_FRAME),
            )
            .await
            .map_err(|_| Error::ServerUnreachable {
                server: link.server().to_owned(),
                reason: "no answer to Watch".into(),
            })?;
            match frame.map_err(|e| stream_lost(link, &e))? {
                Message::Watching { .. } => return Ok(()),
                Message::Error {
                    kind: ErrorKind::RateLimited,
                    message,
                } if tries < 10 => {
                    tries += 1;
                    debug!("watch rate-limited ({message}); asking again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
                other => deliver(peer, other, watched, tx).await?,
            }
        }
    }
}

/// One frame after the `Watch`: a state goes out; anything else is the end.
async fn deliver(peer: &Peer, msg: Message, watched: &HashSet<&str>, tx: &Tx) -> Result<()> {
    match msg {
        Message::Presence {
            name,
            online,
            fingerprint,
        } if watched.contains(name.as_str()) => {
            peer.emit(Event::Presence {
                name: name.clone(),
                online,
                fingerprint: fingerprint.map(|f| f.to_string()),
            });
            let update = PresenceUpdate {
                name,
                online,
                fingerprint,
            };
            tx.send(Ok(update))
                .await
                .map_err(|_| Error::Usage("the watcher was dropped".into()))
        }
        Message::Presence { .. } => Err(Error::Protocol(
            "the server told the presence of a name not watched".into(),
        )),
        Message::Watching { .. } => Ok(()),
        Message::Error { kind, message } => Err(Error::Server { kind, message }),
        other => Err(crate::server_link::unexpected(other, "Watch")),
    }
}

fn stream_lost(link: &ServerLink, e: &common::framing::FrameError) -> Error {
    match link.conn.close_reason() {
        Some(reason) => link.lost(reason),
        None => Error::ServerUnreachable {
            server: link.server().to_owned(),
            reason: format!("the watch stream ended: {e}"),
        },
    }
}
