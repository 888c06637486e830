//! `Watch`: a name's presence now and every change, pushed (`peer watch`).
//!
//! ```text
//! peer → server   Watch { names }                 (again on the stream to add names)
//! server → peer   Presence { name, online, fingerprint }   per name: its state now
//!                 Watching { count }              the frame is in force
//!             or  Error { kind: rate_limited | too_many_names | invalid_name
//!                              | unavailable, .. }   nothing added; the stream stays
//! server → peer   Presence { .. }                 each change, as it happens
//! ```
//!
//! No registration needed (as for a lookup), and no more than a lookup
//! tells: online and the key, never an address. Each name costs one
//! lookup of the source's lookup rate; a connection watches at most
//! [`MAX_WATCHED`] names. The stream's states wait in its bounded buffer
//! ([`crate::watchers`]); a watcher that takes no state for
//! [`crate::Limits::reply_timeout`] loses its stream (reset), never
//! holding up anyone else. The watch ends with its stream or connection.

use std::collections::HashSet;
use std::sync::Arc;

use common::framing::{read_frame, write_frame, FrameError};
use common::messages::{MAX_WATCHED, MAX_WATCH_BATCH};
use common::{ErrorKind, Fingerprint, Message};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::registry::SessionId;
use crate::state::{lock, State};
use crate::watchers::{Visible, WatchError, WatchId};

/// Serves one watch stream, whose first frame was `Watch { names }`,
/// until the stream or the connection goes.
pub(crate) async fn serve(
    state: &Arc<State>,
    session: SessionId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    names: Vec<String>,
) {
    let notify = Arc::new(Notify::new());
    let watch = lock(&state.watchers).open(session, notify.clone());
    let _closing = Closing { state, watch };
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let max = state.limits.max_request_frame;
    // One read at a time, kept across the loop's turns: a frame half read
    // when a state change wins the `select!` is not lost.
    let mut next = Box::pin(next_frame(recv, max));
    let mut batch = Some(names);
    let mut reading = true;
    loop {
        if let Some(names) = batch.take() {
            let reply = match add(state, session, watch, names).await {
                Ok(count) => Message::Watching { count },
                Err(reply) => reply,
            };
            if let Message::Error { kind, .. } = &reply {
                state.metrics.error(*kind);
            }
            // The batch's states first, then the word that it is in force.
            if !flush(state, &mut send, watch).await || !write(state, &mut send, &reply).await {
                return;
            }
            continue;
        }
        tokio::select! {
            (recv, frame) = &mut next, if reading => {
                next = Box::pin(next_frame(recv, max));
                match frame {
                    Ok(Message::Watch { names }) => batch = Some(names),
                    // The peer sent all it will: keep pushing.
                    Err(FrameError::Closed) => reading = false,
                    Err(FrameError::Io(e)) => {
                        debug!(session, "watch stream ended: {e}");
                        return;
                    }
                    Ok(other) => {
                        let reason = format!("unexpected message {} on a watch stream", other.kind_name());
                        return refuse(state, &mut send, reason).await;
                    }
                    Err(e) => return refuse(state, &mut send, format!("bad watch frame: {e}")).await,
                }
            }
            _ = notify.notified() => {
                if !flush(state, &mut send, watch).await {
                    return;
                }
            }
            _ = &mut stopped => return,
        }
    }
}

/// The next frame of the watch stream, and the stream back for the next.
async fn next_frame(
    mut recv: quinn::RecvStream,
    max: usize,
) -> (quinn::RecvStream, Result<Message, FrameError>) {
    let frame = read_frame::<Message, _>(&mut recv, max).await;
    (recv, frame)
}

/// Ends the watch however its task ends (return, cancellation, panic).
struct Closing<'a> {
    state: &'a State,
    watch: WatchId,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        lock(&self.state.watchers).close(self.watch);
    }
}

/// Adds `names` to `watch`: the checks, the cost, the keys of offline
/// names from the store, then the states now, under the registry lock.
async fn add(
    state: &State,
    session: SessionId,
    watch: WatchId,
    names: Vec<String>,
) -> Result<u32, Message> {
    if names.len() > MAX_WATCH_BATCH {
        return Err(Message::error(
            ErrorKind::TooManyNames,
            format!("at most {MAX_WATCH_BATCH} names per Watch frame; send more frames"),
        ));
    }
    let mut seen = HashSet::new();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect();
    for name in &names {
        super::check_name(name)?;
    }
    // A name this watch has already is neither charged nor read again.
    let names = lock(&state.watchers).unwatched(watch, names);
    let (fresh, observed) = {
        let registry = lock(&state.registry);
        let observed = registry
            .session(session)
            .map(|s| common::candidates::canonical(s.handle.remote_address()));
        (lock(&state.watchers).check(watch, &names), observed)
    };
    let fresh = fresh.map_err(|e| refusal(&e))?;
    if let Some(ip) = observed.map(|a| state.source_ip(a)) {
        let cost = u32::try_from(fresh).unwrap_or(u32::MAX);
        let ok = lock(&state.rates)
            .lookup
            .check_n(ip, cost, std::time::Instant::now());
        if !ok {
            state.metrics.rate_limited.inc();
            return Err(super::rate_limited("lookups (each watched name is one)"));
        }
    }
    let mut keys: Vec<Option<Fingerprint>> = Vec::with_capacity(names.len());
    for name in &names {
        keys.push(match state.online_owner(name) {
            Some(fp) => Some(fp),
            None => state.store.owner(name).await.map_err(|e| {
                warn!("name store failed: {e}");
                super::store_failed(&e)
            })?,
        });
    }
    let (count, wake) = {
        let registry = lock(&state.registry);
        let states = names
            .into_iter()
            .zip(keys)
            .map(|(name, key)| {
                let now = match state.visible_owner(&registry, &name) {
                    Some(fp) => Visible::online(fp),
                    None => Visible::offline(key),
                };
                (name, now)
            })
            .collect();
        let added = lock(&state.watchers).add(watch, states);
        added.map_err(|e| refusal(&e))?
    };
    for notify in wake {
        notify.notify_one();
    }
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

fn refusal(e: &WatchError) -> Message {
    match e {
        WatchError::TooMany { .. } => Message::error(
            ErrorKind::TooManyNames,
            format!("{e} (at most {MAX_WATCHED} per connection)"),
        ),
        WatchError::Closed => Message::error(ErrorKind::Internal, e.to_string()),
    }
}

/// Writes the states queued for `watch`; false when the stream is done
/// (gone, or the watcher took nothing for the reply timeout).
async fn flush(state: &State, send: &mut quinn::SendStream, watch: WatchId) -> bool {
    let pending = lock(&state.watchers).take(watch);
    for (name, visible) in pending {
        let msg = Message::Presence {
            name,
            online: visible.online,
            fingerprint: visible.fingerprint,
        };
        if !write(state, send, &msg).await {
            return false;
        }
    }
    true
}

/// Writes one frame within the reply timeout; false (and the stream reset)
/// when it does not go.
async fn write(state: &State, send: &mut quinn::SendStream, msg: &Message) -> bool {
    let max = state.limits.max_frame;
    match tokio::time::timeout(state.limits.reply_timeout, write_frame(send, msg, max)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!("watch stream write failed: {e}");
            false
        }
        Err(_) => {
            debug!(
                "a watcher took nothing for {:?}: its stream is reset",
                state.limits.reply_timeout
            );
            let _ = send.reset(0u32.into());
            false
        }
    }
}

/// A watch stream that broke the protocol: an error frame, and the stream ends.
async fn refuse(state: &State, send: &mut quinn::SendStream, reason: String) {
    warn!("watch stream refused: {reason}");
    state.metrics.frames_refused.inc();
    state.metrics.error(ErrorKind::Protocol);
    let _ = write(state, send, &Message::error(ErrorKind::Protocol, reason)).await;
    let _ = send.finish();
}
