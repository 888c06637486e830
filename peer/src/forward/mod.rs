//! TCP port forwarding over a call: `peer forward LOCAL_ADDR NAME` at one
//! end, `peer listen --forward-to HOST:PORT` at the other (like `ssh -L`).
//!
//! The flow of one forwarded TCP connection:
//!
//! 1. `forward` accepts a TCP connection on LOCAL_ADDR and admits it if
//!    fewer than [`ForwardConfig::max_connections`] are open (else it is
//!    closed at once with a `forward_failed` event, reason `busy`).
//! 2. It opens one stream of its one call to NAME (calling first if no
//!    call is up, with [`Redial`] backoff) with the purpose
//!    [`PeerMessage::Forward`].
//! 3. The listener connects to its one target (never one the caller
//!    names: no open proxy) and answers [`PeerMessage::Forwarded`]; or,
//!    when the target refuses or does not answer within
//!    [`ForwardConfig::connect_timeout`], resets the stream with
//!    [`FORWARD_REFUSED`] (`forward` closes the TCP connection with a
//!    `forward_failed` event, reason `target_refused`).
//! 4. Both sides [`bridge`] the stream and the TCP connection until both
//!    directions are done (FIN ↔ finish, each way on its own).
//!
//! No answer within [`ForwardConfig::answer_timeout`] means the call is
//! lost (a killed listener is otherwise noticed only at the idle timeout):
//! `forward` drops it and tries the connection once more on a new call
//! ([`verdict`]).
//!
//! A `--forward-to` listener also serves [`PeerMessage::Pipe`] streams the
//! same way, without the answer frame: `peer call NAME` then acts like
//! `nc` to the target.
//!
//! This module owns the bridging and the forward side's call; the CLI
//! (`cli/forward.rs`, `cli/listen.rs`) only parses flags and prints events.

mod bridge;
mod client;
mod redial;
mod turns;

use std::time::Duration;

use common::framing::{write_frame, MAX_FRAME};
use common::PeerMessage;
use tokio::net::TcpStream;

pub use bridge::bridge;
pub use client::Forwarder;
pub use redial::{verdict, Opening, Redial, Verdict};
pub use turns::{Turns, Writer, QUANTUM};

use crate::error::{Error, Result};
use crate::{Call, CallOptions};

/// Stream reset code: the listener's target refused the connection or
/// could not be reached.
pub const FORWARD_REFUSED: u32 = 0x10;
/// Stream reset code: one end of a bridged connection failed (a TCP reset,
/// a stream reset); the other end is cut too.
pub const FORWARD_ABORTED: u32 = 0x11;

/// Most streams at once on one forwarded call, both ends' default.
pub const MAX_STREAMS: u32 = 128;

/// A forwarded call's connection-wide receive window (64 MiB): each stream
/// may hold 8 MiB its reader has not taken, so up to seven stalled TCP
/// clients leave the others room to move.
pub const CALL_RECEIVE_WINDOW: u32 = 64 << 20;

/// Limits and timing of forwarding.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Most TCP connections forwarded at once (default [`MAX_STREAMS`]);
    /// one more is closed at once with a `busy` event.
    pub max_connections: usize,
    /// How long the listener may take to answer a new stream (default
    /// 5 s); past it the call counts as lost.
    pub answer_timeout: Duration,
    /// How long the listener waits for its target to accept (default 4 s,
    /// under `answer_timeout`: a slow target is a refusal, not a lost call).
    pub connect_timeout: Duration,
    /// Backoff between failed calls: first wait (default 250 ms).
    pub redial_min: Duration,
    /// Backoff between failed calls: longest wait (default 4 s, so a
    /// restarted listener is reached again well within 20 s).
    pub redial_max: Duration,
    /// Options of each call.
    pub call: CallOptions,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            max_connections: MAX_STREAMS as usize,
            answer_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(4),
            redial_min: Duration::from_millis(250),
            redial_max: Duration::from_secs(4),
            call: CallOptions::default(),
        }
    }
}

/// Gives a call the connection window forwarding needs
/// ([`CALL_RECEIVE_WINDOW`]) and returns the [`Turns`] its bridged streams
/// share; both ends call it once per call.
pub fn prepare_call(call: &Call) -> Turns {
    call.connection
        .set_receive_window(CALL_RECEIVE_WINDOW.into());
    Turns::default()
}

/// The listener's side of one stream: connects to `target` and bridges.
/// A [`PeerMessage::Forward`] stream gets the [`PeerMessage::Forwarded`]
/// answer first; a [`PeerMessage::Pipe`] stream none. When the target
/// refuses or does not accept within `connect_timeout`, the stream is
/// reset (and stopped) with [`FORWARD_REFUSED`] and the error returned.
pub async fn serve_target(
    purpose: &PeerMessage,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    target: &str,
    connect_timeout: Duration,
    turns: &Turns,
) -> Result<(u64, u64)> {
    let context = || format!("connecting to the forward target {target}");
    let connected = tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await;
    let tcp = match connected {
        Ok(Ok(tcp)) => tcp,
        failed => {
            let _ = send.reset(FORWARD_REFUSED.into());
            let _ = recv.stop(FORWARD_REFUSED.into());
            let source = match failed {
                Ok(Err(e)) => e,
                _ => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", connect_timeout.as_secs_f32()),
                ),
            };
            return Err(Error::io(context(), source));
        }
    };
    if matches!(purpose, PeerMessage::Forward) {
        write_frame(&mut send, &PeerMessage::Forwarded, MAX_FRAME)
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
    }
    bridge(send, recv, tcp, turns).await
}
