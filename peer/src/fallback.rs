//! The happy-eyeballs race of `--transport auto` (issue 11): QUIC over UDP
//! first; when it is not up after [`crate::Timing::tcp_fallback_after`],
//! the TCP tunnel is opened beside it; if UDP completes first, the tunnel
//! attempt is dropped. Once the tunnel is installed, the first attempt is
//! given up (its packets would now go through the tunnel, from another
//! address than its handshake started at, which the server's QUIC does not
//! follow mid-handshake) and a fresh QUIC connect runs over the tunnel.
//! The server link only lets the race open the tunnel while nothing came
//! back over UDP (see `server_link`): a server that answers there, however
//! slowly, keeps the handshake on UDP.
//!
//! Generic over the attempts, so the timing is tested without a network:
//! the server link passes its real QUIC and tunnel futures.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::Transport;

/// Whether an error ends the race at once: the server is there but wrong
/// (another key, another version); no other transport fixes that.
pub(crate) fn is_definitive(e: &Error) -> bool {
    matches!(
        e,
        Error::BadServerFingerprint { .. } | Error::VersionMismatch { .. }
    )
}

/// Awaits the future in `slot`, or never when there is none.
async fn maybe<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

pub(crate) type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Runs the race (see the module docs): `udp` is the first QUIC attempt;
/// after `after` (or at once if `udp` fails first) `open` opens the
/// tunnel; `over_tunnel` installs it and returns a fresh QUIC attempt.
/// If `udp` completes before the tunnel is installed, the tunnel attempt
/// is dropped. The transport says whether the tunnel was installed when
/// the winner completed. The last TCP failure is left in `tcp_error` (the
/// caller's timeout message names it). Fails only when every attempt
/// failed, or at once on a [definitive](is_definitive) error.
pub(crate) async fn race<'a, C: 'a, T: 'a>(
    udp: Boxed<'a, C>,
    after: Duration,
    open: impl FnOnce() -> Boxed<'a, T>,
    over_tunnel: impl FnOnce(T) -> Boxed<'a, C>,
    tcp_error: &mut Option<String>,
) -> Result<(C, Transport)> {
    let mut udp = Some(udp);
    let mut open = Some(open);
    let mut over_tunnel = Some(over_tunnel);
    let mut opening: Option<Boxed<'a, T>> = None;
    let mut fresh: Option<Boxed<'a, C>> = None;
    let mut udp_error: Option<Error> = None;
    // A definitive error over TCP while UDP still tries (a proxy that
    // inspects TLS shows another key): UDP may still work; it is the
    // answer only if UDP fails too.
    let mut tcp_definitive: Option<Error> = None;
    let timer = tokio::time::sleep(after);
    tokio::pin!(timer);
    loop {
        if udp.is_none() && opening.is_none() && open.is_some() {
            opening = open.take().map(|f| f());
        }
        if udp.is_none() && opening.is_none() && fresh.is_none() {
            return Err(match tcp_definitive {
                Some(e) => e,
                None => both_failed(udp_error, tcp_error),
            });
        }
        let installed = over_tunnel.is_none();
        tokio::select! {
            r = maybe(&mut udp) => match r {
                Ok(c) => {
                    let transport = if installed { Transport::Tcp } else { Transport::Udp };
                    return Ok((c, transport));
                }
                Err(e) if is_definitive(&e) => return Err(e),
                Err(e) => {
                    udp = None;
                    udp_error = Some(e);
                }
            },
            () = &mut timer, if open.is_some() => {
                opening = open.take().map(|f| f());
            }
            r = maybe(&mut opening) => {
                opening = None;
                match r {
                    Ok(t) => {
                        fresh = over_tunnel.take().map(|f| f(t));
                        // Given up: see the module docs.
                        udp = None;
                    }
                    Err(e) if is_definitive(&e) && udp.is_none() => return Err(e),
                    Err(e) => {
                        *tcp_error = Some(e.to_string());
                        if is_definitive(&e) {
                            tcp_definitive = Some(e);
                        }
                    }
                }
            }
            r = maybe(&mut fresh) => match r {
                Ok(c) => return Ok((c, Transport::Tcp)),
                Err(e) if is_definitive(&e) => return Err(e),
                Err(e) => {
                    fresh = None;
                    *tcp_error = Some(e.to_string());
                }
            },
        }
    }
}

/// The error when both transports failed: the UDP one, with the TCP
/// failure added to its reason.
fn both_failed(udp: Option<Error>, tcp: &Option<String>) -> Error {
    match (udp, tcp) {
        (Some(Error::ServerUnreachable { server, reason }), Some(tcp)) => {
            Error::ServerUnreachable {
                server,
                reason: format!("{reason}; over TCP: {tcp}"),
            }
        }
        (Some(e), _) => e,
        (None, tcp) => Error::Protocol(format!(
            "the server link failed over TCP: {}",
            tcp.as_deref().unwrap_or("no reason")
        )),
    }
}

#[cfg(test)]
#[path = "fallback_tests.rs"]
mod tests;
