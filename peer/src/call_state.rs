//! The caller's side of a call as a state machine without I/O.
//!
//! ```text
//! Requesting --answer--> Dialing --handshake done--> Connected
//!      |                    |  \--no path / deadline--> Err(Unreachable)
//!      \--error answer / key changed--> Err(..)
//! ```
//!
//! The caller dials once, at the call's virtual address; underneath, the
//! handshake races every vetted candidate and the relay
//! ([`crate::path`]).
//!
//! Each transition consumes the state and returns the next one, so an old
//! state cannot be used by mistake. The driver in [`crate::peer`] feeds it the
//! server's answer and each dial attempt's outcome.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::candidates::targets;
use common::{ErrorKind, Fingerprint, Message, RelayTicket};

use crate::error::Error;
use crate::known_peers::Check;
use crate::path::PathMode;

/// Why one candidate did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The address answered with another key (a stranger at that address).
    WrongKey,
    /// No answer in time.
    Timeout,
    /// Anything else, in words.
    Other(String),
}

/// Where this peer stands, for vetting the callee's candidates
/// ([`common::candidates::targets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vantage {
    /// The server link's remote address (loopback: loopback candidates are fine).
    pub server: SocketAddr,
    /// Our address as the server observed it at registration; the callee's
    /// local candidates are used only if its observed address is our network.
    pub observed: Option<SocketAddr>,
}

/// A call in progress.
#[derive(Debug)]
pub enum CallState {
    /// Waiting for the server's answer.
    Requesting {
        /// Callee.
        to: String,
        /// When the request was sent.
        sent_at: Instant,
        /// `--path`.
        mode: PathMode,
    },
    /// Dialing the callee's candidates.
    Dialing {
        /// Callee.
        to: String,
        /// When the request was sent.
        sent_at: Instant,
        /// The key to pin.
        fingerprint: Fingerprint,
        /// The callee's vetted candidates (none in relay mode).
        pending: Vec<SocketAddr>,
        /// The server's call id (in every probe).
        call_id: u64,
        /// The per-call probe key.
        probe_key: [u8; 32],
        /// Our relay ticket, if the call may use the relay.
        relay: Option<RelayTicket>,
        /// `--path`.
        mode: PathMode,
    },
    /// An authenticated connection is up.
    Connected {
        /// Callee.
        to: String,
        /// Its key.
        fingerprint: Fingerprint,
        /// The address dialed (the call's virtual address).
        remote: SocketAddr,
        /// From request to authenticated connection.
        setup: Duration,
    },
}

impl CallState {
    /// A request just sent at `now`.
    pub fn start(to: &str, now: Instant) -> Self {
        Self::start_with(to, now, PathMode::Auto)
    }

    /// Like [`CallState::start`], with `--path`.
    pub fn start_with(to: &str, now: Instant, mode: PathMode) -> Self {
        Self::Requesting {
            to: to.to_owned(),
            sent_at: now,
            mode,
        }
    }

    /// The server answered. `known` is what known_peers says about the
    /// callee's key; `accept_new_key` overrides a change. The candidates
    /// are vetted by [`common::candidates::targets`] from our `at`: at most
    /// 1 observed + 8 local, no loopback first unless the server is on
    /// loopback, locals only if the callee is on our network; so a lying
    /// server cannot make this peer dial thousands of hosts, or hosts of
    /// its own LAN.
    pub fn on_answer(
        self,
        answer: Message,
        known: impl FnOnce(&Fingerprint) -> Check,
        accept_new_key: bool,
        at: Vantage,
    ) -> Result<Self, Error> {
        let Self::Requesting { to, sent_at, mode } = self else {
            return Err(Error::Protocol("call answer in the wrong state".into()));
        };
        match answer {
            Message::CallAccepted {
                fingerprint,
                candidates,
                call_id,
                probe_key,
                relay,
            } => {
                if let Check::Changed(old) = known(&fingerprint) {
                    if !accept_new_key {
                        return Err(Error::KeyChanged {
                            name: to,
                            old: old.to_string(),
                            new: fingerprint.to_string(),
                            file: Default::default(),
                        });
                    }
                }
                let relay = relay.filter(|_| mode != PathMode::Direct);
                let pending = match mode {
                    PathMode::Relay => vec![],
                    _ => targets(&candidates, at.server, at.observed),
                };
                if pending.is_empty() && relay.is_none() {
                    let tried = match mode {
                        PathMode::Relay => "--path relay, and the server runs no relay".to_owned(),
                        _ => format!(
                            "the server gave no address to try (of {} given, none acceptable) and no relay",
                            candidates.len()
                        ),
                    };
                    return Err(Error::Unreachable { name: to, tried });
                }
                Ok(Self::Dialing {
                    to,
                    sent_at,
                    fingerprint,
                    pending,
                    call_id,
                    probe_key,
                    relay,
                    mode,
                })
            }
            Message::Error { kind, message } => Err(Error::Server { kind, message }),
            other => Err(Error::Protocol(format!(
                "server answered a call with {}",
                other.kind_name()
            ))),
        }
    }

    /// The dial of the call's virtual address `remote` finished at `now`.
    pub fn on_dialed(
        self,
        remote: SocketAddr,
        outcome: Result<(), AttemptFailure>,
        now: Instant,
    ) -> Result<Self, Error> {
        let Self::Dialing {
            to,
            sent_at,
            fingerprint,
            pending,
            relay,
            ..
        } = self
        else {
            return Ok(self);
        };
        match outcome {
            Ok(()) => Ok(Self::Connected {
                to,
                fingerprint,
                remote,
                setup: now.duration_since(sent_at),
            }),
            Err(why) => Err(unreachable(to, &pending, relay.is_some(), Some(why))),
        }
    }

    /// The deadline passed before a connection: the error to report.
    pub fn on_deadline(self) -> Error {
        match self {
            Self::Dialing {
                to, pending, relay, ..
            } => unreachable(to, &pending, relay.is_some(), None),
            Self::Requesting { to, .. } => Error::Server {
                kind: ErrorKind::Unreachable,
                message: format!("{to} did not answer in time"),
            },
            Self::Connected { to, .. } => {
                Error::Protocol(format!("deadline after the call to {to} connected"))
            }
        }
    }
}

/// The error of a call that found no path: what was tried, and how the
/// last attempt ended.
fn unreachable(
    name: String,
    pending: &[SocketAddr],
    relay: bool,
    why: Option<AttemptFailure>,
) -> Error {
    let mut parts: Vec<String> = pending.iter().map(|a| format!("{a}")).collect();
    if relay {
        parts.push("the relay".into());
    }
    let how = match why {
        Some(AttemptFailure::WrongKey) => {
            format!("an address answered with another key (not {name}): a key did not match")
        }
        Some(AttemptFailure::Other(s)) => s,
        Some(AttemptFailure::Timeout) | None => "no answer".into(),
    };
    Error::Unreachable {
        name,
        tried: format!("no path authenticated (tried {}): {how}", parts.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::candidates::MAX_LOCAL_CANDIDATES;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    const SERVER: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        7700,
    );

    /// A public server, and we are behind the callee's NAT (198.51.100.1).
    const AT: Vantage = Vantage {
        server: SERVER,
        observed: Some(SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)),
            9,
        )),
    };

    fn accepted(cands: &[&str]) -> Message {
        Message::CallAccepted {
            call_id: 1,
            fingerprint: Fingerprint([7; 32]),
            candidates: cands.iter().map(|c| a(c)).collect(),
            probe_key: [1; 32],
            relay: None,
        }
    }

    #[test]
    fn the_dial_connects_or_says_what_was_tried() {
        let t0 = Instant::now();
        let v = a("240.0.0.1:1");
        let dialing = || {
            CallState::start("alice", t0)
                .on_answer(
                    accepted(&["198.51.100.1:1", "192.168.1.2:1"]),
                    |_| Check::New,
                    false,
                    AT,
                )
                .expect("dialing")
        };
        match dialing().on_dialed(v, Ok(()), t0 + Duration::from_millis(120)) {
            Ok(CallState::Connected { remote, setup, .. }) => {
                assert_eq!(remote, v);
                assert_eq!(setup, Duration::from_millis(120));
            }
            other => panic!("{other:?}"),
        }
        let err = dialing()
            .on_dialed(v, Err(AttemptFailure::WrongKey), t0)
            .expect_err("unreachable");
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        let msg = err.to_string();
        assert!(
            msg.contains("192.168.1.2:1")
                && msg.contains("198.51.100.1:1")
                && msg.contains("another key"),
            "{msg}"
        );
    }

    #[test]
    fn path_modes_pick_what_may_be_tried() {
        let t0 = Instant::now();
        let ticket = RelayTicket {
            call_id: 5,
            secret: [2; 32],
        };
        let with_relay = Message::CallAccepted {
            call_id: 1,
            fingerprint: Fingerprint([7; 32]),
            candidates: vec![a("198.51.100.1:1")],
            probe_key: [1; 32],
            relay: Some(ticket),
        };
        let answer = |mode, msg: Message| {
            CallState::start_with("alice", t0, mode).on_answer(msg, |_| Check::New, false, AT)
        };
        match answer(PathMode::Relay, with_relay.clone()) {
            Ok(CallState::Dialing { pending, relay, .. }) => {
                assert!(pending.is_empty(), "relay mode never dials the callee");
                assert_eq!(relay, Some(ticket));
            }
            other => panic!("{other:?}"),
        }
        match answer(PathMode::Direct, with_relay) {
            Ok(CallState::Dialing { pending, relay, .. }) => {
                assert_eq!(pending.len(), 1);
                assert_eq!(relay, None, "direct mode never uses the relay");
            }
            other => panic!("{other:?}"),
        }
        let err = answer(PathMode::Relay, accepted(&["198.51.100.1:1"])).expect_err("no relay");
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        // No candidate at all is fine when there is a relay.
        let only_relay = Message::CallAccepted {
            call_id: 1,
            fingerprint: Fingerprint([7; 32]),
            candidates: vec![],
            probe_key: [1; 32],
            relay: Some(ticket),
        };
        assert!(answer(PathMode::Auto, only_relay.clone()).is_ok());
        assert!(answer(PathMode::Direct, only_relay).is_err());
    }

    #[test]
    fn deadline_while_dialing_lists_silent_candidates() {
        let t0 = Instant::now();
        let s = CallState::start("alice", t0)
            .on_answer(accepted(&["198.51.100.1:1"]), |_| Check::Known, false, AT)
            .expect("dialing");
        let err = s.on_deadline();
        assert!(
            err.to_string().contains("198.51.100.1:1") && err.to_string().contains("no answer"),
            "{err}"
        );
    }

    #[test]
    fn server_errors_and_changed_keys() {
        let t0 = Instant::now();
        let err = CallState::start("alice", t0)
            .on_answer(
                Message::error(ErrorKind::Offline, "alice is not online"),
                |_| Check::New,
                false,
                AT,
            )
            .expect_err("offline");
        assert_eq!(err.kind(), ErrorKind::Offline);
        let changed = |_: &Fingerprint| Check::Changed(Fingerprint([1; 32]));
        let err = CallState::start("alice", t0)
            .on_answer(accepted(&["198.51.100.1:1"]), changed, false, AT)
            .expect_err("changed");
        assert_eq!(err.kind(), ErrorKind::KeyChanged);
        assert!(CallState::start("alice", t0)
            .on_answer(accepted(&["198.51.100.1:1"]), changed, true, AT)
            .is_ok());
        let err = CallState::start("alice", t0)
            .on_answer(
                Message::Lookup { name: "x".into() },
                |_| Check::New,
                false,
                AT,
            )
            .expect_err("odd");
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn a_lying_server_cannot_make_the_caller_dial_thousands_or_loopback() {
        let t0 = Instant::now();
        let mut flood: Vec<SocketAddr> = vec![a("198.51.100.1:22")];
        flood.extend(
            (0..9_000u32)
                .map(|i| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9))),
        );
        flood.extend((0..100u8).map(|i| SocketAddr::from(([224, 0, 0, i], 9))));
        let answer = Message::CallAccepted {
            call_id: 1,
            fingerprint: Fingerprint([7; 32]),
            candidates: flood,
            probe_key: [1; 32],
            relay: None,
        };
        let s = CallState::start("alice", t0)
            .on_answer(answer, |_| Check::New, false, AT)
            .expect("dialing");
        let CallState::Dialing { pending, .. } = s else {
            panic!("{s:?}");
        };
        assert_eq!(pending.len(), 1 + MAX_LOCAL_CANDIDATES, "{pending:?}");
        assert!(pending[1..]
            .iter()
            .all(|p| common::candidates::is_local_candidate(*p)));
        // Only a loopback first slot: nothing to dial over a public server...
        let err = CallState::start("alice", t0)
            .on_answer(
                accepted(&["127.0.0.1:5", "192.168.1.2:5"]),
                |_| Check::New,
                false,
                AT,
            )
            .expect_err("nothing acceptable");
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        // ...but fine when the server link itself is on loopback (tests).
        let lo = Vantage {
            server: a("127.0.0.1:7700"),
            observed: Some(a("127.0.0.1:6000")),
        };
        let s = CallState::start("alice", t0)
            .on_answer(accepted(&["127.0.0.1:5"]), |_| Check::New, false, lo)
            .expect("loopback server, loopback callee");
        assert!(
            matches!(s, CallState::Dialing { ref pending, .. } if pending == &[a("127.0.0.1:5")])
        );
    }

    #[test]
    fn the_callee_s_local_candidates_are_dialed_only_on_our_network() {
        let t0 = Instant::now();
        let lying = accepted(&[
            "203.0.113.9:4000",
            "192.168.1.1:22",
            "192.168.1.2:22",
            "10.0.0.1:22",
        ]);
        let pending = |at: Vantage, answer: Message| match CallState::start("alice", t0)
            .on_answer(answer, |_| Check::New, false, at)
            .expect("dialing")
        {
            CallState::Dialing { pending, .. } => pending,
            other => panic!("{other:?}"),
        };
        // The callee is elsewhere: only its observed address.
        assert_eq!(pending(AT, lying.clone()), vec![a("203.0.113.9:4000")]);
        // We never learnt our own observed address: the same.
        let unknown = Vantage {
            server: SERVER,
            observed: None,
        };
        assert_eq!(pending(unknown, lying), vec![a("203.0.113.9:4000")]);
        // Behind one NAT (one public IPv4): the LAN addresses too.
        let same = accepted(&["198.51.100.1:4000", "192.168.1.2:4000"]);
        assert_eq!(pending(AT, same).len(), 2);
        // Both observed at 127.0.0.1 (tests on one machine): one network.
        let lo = Vantage {
            server: a("127.0.0.1:7700"),
            observed: Some(a("127.0.0.1:6000")),
        };
        let local = accepted(&["127.0.0.1:5000", "192.168.1.2:5000"]);
        assert_eq!(
            pending(lo, local),
            vec![a("127.0.0.1:5000"), a("192.168.1.2:5000")]
        );
    }
}
