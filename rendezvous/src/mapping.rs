//! The mapping check port: a second UDP socket that answers UDP checks
//! only, so a peer can learn whether its NAT's mapping depends on the
//! destination (RFC 4787; issue 15's "know which side is hard").
//!
//! ```text
//! peer socket S ── mapping request ──▶ server main port      (answer: seen A, other port P)
//! peer socket S ── mapping request ──▶ server IP : P         (answer: seen B, other port 0)
//! A == B: one public port for every destination (cone); A != B: symmetric
//! ```
//!
//! Where it listens is [`MappingPort`] (`--mapping-port PORT|off`): by
//! default the listen port + 1 on the listen IP, best effort (a port taken
//! is a warning and no second port: mapping answers then name port 0); an
//! explicit port must bind or the server does not start. The main socket
//! names this port in its mapping answers ([`crate::socket`]); this socket
//! names none.
//!
//! It owns the binding ([`bind`]) and the small task answering on it
//! ([`start`], ended with the server); what each datagram gets is decided by a
//! [`crate::checks::Checker`] (its own rate budget), without I/O. It reads
//! into a bounded buffer, answers nothing but well-formed requests, never
//! more bytes than the request held, and never panics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing::{debug, info, warn};

use crate::checks::Checker;
use crate::error::ServerError;

/// Bytes read of one datagram: a request is 40; anything longer is cut
/// here (and still gets no more than a 38-byte answer).
const RECV_BUF: usize = 256;

/// Pause after a receive error, so a socket that keeps failing does not
/// spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Where the mapping check port listens ([`crate::Config::mapping_port`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MappingPort {
    /// The listen port + 1 on the listen IP (any free port when the listen
    /// port is 0; none when it is 65535), best effort: when it cannot be
    /// bound the server logs a warning and runs without a second port.
    #[default]
    Auto,
    /// This port on the listen IP (0: any free port); the server does not
    /// start when it cannot be bound.
    Port(u16),
    /// No second port: mapping answers name port 0, and peers behind a NAT
    /// cannot tell symmetric from cone.
    Off,
}

/// Why a `--mapping-port` text is not a [`MappingPort`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a UDP port number (0-65535), auto or off")]
pub struct MappingPortError(pub String);

impl std::str::FromStr for MappingPort {
    type Err = MappingPortError;

    /// `off`, `auto`, or a port number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(MappingPort::Off);
        }
        if t.eq_ignore_ascii_case("auto") {
            return Ok(MappingPort::Auto);
        }
        t.parse()
            .map(MappingPort::Port)
            .map_err(|_| MappingPortError(s.to_owned()))
    }
}

/// What to bind for a [`MappingPort`], given the listen address. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Nothing.
    Off,
    /// Try this address; a failure is a warning.
    Try(SocketAddr),
    /// This address, or the server does not start.
    Must(SocketAddr),
}

/// The binding `choice` asks for next to `listen`.
pub(crate) fn plan(listen: SocketAddr, choice: MappingPort) -> Plan {
    match choice {
        MappingPort::Off => Plan::Off,
        MappingPort::Port(port) => Plan::Must(SocketAddr::new(listen.ip(), port)),
        MappingPort::Auto if listen.port() == 0 => Plan::Try(SocketAddr::new(listen.ip(), 0)),
        MappingPort::Auto => match listen.port().checked_add(1) {
            Some(port) => Plan::Try(SocketAddr::new(listen.ip(), port)),
            None => Plan::Off,
        },
    }
}

/// Binds the mapping check port `choice` asks for next to `listen`:
/// `Ok(None)` when it is off, or (by default) could not be bound (logged).
pub(crate) fn bind(
    listen: SocketAddr,
    choice: MappingPort,
) -> Result<Option<std::net::UdpSocket>, ServerError> {
    let (addr, required) = match plan(listen, choice) {
        Plan::Off => {
            info!("mapping check port off: peers cannot tell a symmetric NAT from a cone");
            return Ok(None);
        }
        Plan::Try(addr) => (addr, false),
        Plan::Must(addr) => (addr, true),
    };
    let bound = std::net::UdpSocket::bind(addr).and_then(|s| {
        s.set_nonblocking(true)?;
        Ok(s)
    });
    match bound {
        Ok(socket) => {
            if let Ok(at) = socket.local_addr() {
                info!(addr = %at, "mapping check port on (UDP; open it in the firewall too)");
            }
            Ok(Some(socket))
        }
        Err(source) if required => Err(ServerError::MappingBind { addr, source }),
        Err(e) => {
            warn!(
                %addr,
                "mapping check port not bound ({e}): running without it, so peers behind symmetric NATs stay on the relay; choose one with --mapping-port PORT, or --mapping-port off"
            );
            Ok(None)
        }
    }
}

/// The task answering on the mapping check port ([`start`]): aborted when
/// this is dropped, so the port closes with the server even when its
/// `run` future is dropped half-way.
pub(crate) struct Serving(Option<tokio::task::JoinHandle<()>>);

impl Serving {
    /// Ends the task and waits until it is gone (its socket closed): a
    /// server started next on this port finds it free.
    pub(crate) async fn end(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Starts answering on `socket` (from [`bind`]; inside a Tokio runtime),
/// counting mapping answers in `sent`; `None` (logged) when the runtime
/// refuses the socket.
pub(crate) fn start(socket: std::net::UdpSocket, sent: IntCounter) -> Option<Serving> {
    match tokio::net::UdpSocket::from_std(socket) {
        Ok(socket) => Some(Serving(Some(tokio::spawn(serve(socket, sent))))),
        Err(e) => {
            warn!("mapping check port not started: {e}");
            None
        }
    }
}

/// Answers the UDP checks arriving at `socket` (mapping answers name no
/// other port), counting mapping answers in `sent`, until the task is
/// aborted.
async fn serve(socket: tokio::net::UdpSocket, sent: IntCounter) {
    let mut checker = Checker::new(Instant::now(), 0);
    let mut buf = [0u8; RECV_BUF];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                debug!("mapping check port: receive failed: {e}");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(answer) = checker.handle(Instant::now(), from, &buf[..n.min(RECV_BUF)]) else {
            continue;
        };
        match socket.try_send_to(answer.bytes(), from) {
            Ok(_) if answer.is_mapping() => sent.inc(),
            Ok(_) => {}
            Err(e) => debug!(%from, "mapping check answer not sent: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_the_port_after_the_listen_port_is_tried() {
        let auto = MappingPort::default();
        assert_eq!(auto, MappingPort::Auto);
        assert_eq!(
            plan(addr("0.0.0.0:7700"), auto),
            Plan::Try(addr("0.0.0.0:7701"))
        );
        assert_eq!(
            plan(addr("[::1]:7700"), auto),
            Plan::Try(addr("[::1]:7701"))
        );
        // Listening on any port: the mapping port is any port too.
        assert_eq!(
            plan(addr("127.0.0.1:0"), auto),
            Plan::Try(addr("127.0.0.1:0"))
        );
        // No port above the last one.
        assert_eq!(plan(addr("127.0.0.1:65535"), auto), Plan::Off);
    }

    #[test]
    fn an_explicit_port_must_bind_and_off_binds_nothing() {
        let listen = addr("192.0.2.1:7700");
        assert_eq!(
            plan(listen, MappingPort::Port(9000)),
            Plan::Must(addr("192.0.2.1:9000"))
        );
        assert_eq!(plan(listen, MappingPort::Off), Plan::Off);
    }

    #[test]
    fn the_flag_reads_a_port_auto_or_off() {
        assert_eq!("off".parse(), Ok(MappingPort::Off));
        assert_eq!("OFF".parse(), Ok(MappingPort::Off));
        assert_eq!("auto".parse(), Ok(MappingPort::Auto));
        assert_eq!("7701".parse(), Ok(MappingPort::Port(7701)));
        assert_eq!("0".parse(), Ok(MappingPort::Port(0)));
        for bad in ["65536", "-1", "", "on", "7701/udp", "1.2.3.4:5"] {
            let e = bad.parse::<MappingPort>().expect_err(bad);
            assert!(e.to_string().contains("off"), "{e}");
        }
    }

    #[test]
    fn a_taken_default_port_is_a_warning_and_a_taken_explicit_one_an_error() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let listen = SocketAddr::new(addr("127.0.0.1:0").ip(), port - 1);
        assert!(bind(listen, MappingPort::Auto).unwrap().is_none());
        let err = bind(listen, MappingPort::Port(port)).unwrap_err();
        assert!(matches!(err, ServerError::MappingBind { .. }), "{err}");
        assert!(err.to_string().contains("--mapping-port"), "{err}");
        assert!(bind(listen, MappingPort::Off).unwrap().is_none());
        let free = bind(addr("127.0.0.1:0"), MappingPort::Auto)
            .unwrap()
            .unwrap();
        assert_ne!(free.local_addr().unwrap().port(), 0);
    }
}
