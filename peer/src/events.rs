//! Status events, as the `--json` lines of `CLI.md`.
//!
//! The library sends the events it alone knows about (registration, lost and
//! restored server, incoming calls, connections) on a broadcast channel
//! ([`crate::Peer::events`]); the CLI adds its own (pong, lookup, call_ended)
//! and prints them all. Field names are part of the command-line contract.
//!
//! Names, reasons, messages and paths in events may come from the network
//! (a server, a caller, a sender). Both printed forms are safe for a
//! terminal: [`Event::human`] escapes control and bidi characters as
//! `\u{..}`; [`Event::json_line`] has serde's escapes for C0 controls and
//! `\uXXXX` ones for DEL, C1 controls (U+009B is an 8-bit CSI) and bidi
//! controls, so the parsed values are unchanged.

use serde::Serialize;

/// One status event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The name is ours on the server.
    Registered {
        /// The name.
        name: String,
        /// Our fingerprint.
        fingerprint: String,
        /// The address the server sees us at.
        observed_addr: String,
        /// `udp`, or `tcp` (the TLS tunnel: UDP got no answer).
        transport: String,
    },
    /// The server link moved to another transport (back to `udp` once UDP
    /// works again), without ending calls.
    TransportChanged {
        /// The server.
        server: String,
        /// `udp` or `tcp`.
        transport: String,
    },
    /// Someone calls; sent before the policy decides.
    IncomingCall {
        /// The caller's name.
        from: String,
        /// The caller's key.
        fingerprint: String,
    },
    /// A call was refused by our policy.
    CallRefused {
        /// The caller's name.
        from: String,
        /// Why.
        reason: String,
    },
    /// An authenticated peer connection is up.
    Connected {
        /// The other side's name.
        peer: String,
        /// The other side's key.
        fingerprint: String,
        /// `direct` or `relay`.
        path: String,
        /// The address the connection uses.
        remote_addr: String,
        /// From sending the call request (caller) or receiving the offer
        /// (callee) to the authenticated connection, in milliseconds.
        setup_ms: f64,
        /// Time spent first reaching the server (caller; 0 if already connected).
        server_ms: f64,
    },
    /// The path of a call changed.
    PathChanged {
        /// The other side's name.
        peer: String,
        /// `direct` or `relay`.
        path: String,
        /// The new address (the relay's on a relayed call).
        remote_addr: String,
        /// Why: `upgrade` (a direct path opened), `lower_rtt`, `failed`
        /// (the old path stopped answering), `birthday` (a birthday attempt
        /// found one through a symmetric NAT).
        reason: String,
    },
    /// A birthday attempt on a relayed call (a symmetric NAT on one side,
    /// a cone on the other) ended.
    Birthday {
        /// The other side's name.
        peer: String,
        /// `direct` (the call moved) or `relay` (it stays there until the
        /// next attempt, minutes later).
        outcome: String,
        /// This side's part: `open` (the symmetric side: extra sockets) or
        /// `spray` (the cone side: pings to guessed ports).
        role: String,
        /// Pings sent to guessed ports.
        probes: u32,
        /// Extra sockets opened.
        sockets: u32,
        /// From the attempt's start to its end, in milliseconds.
        elapsed_ms: f64,
    },
    /// Something the user should know (e.g. that a call depends on the relay).
    Notice {
        /// What, for a person.
        message: String,
    },
    /// A ping was answered.
    Pong {
        /// The other side's name.
        peer: String,
        /// Sequence number.
        seq: u64,
        /// Round trip in milliseconds.
        rtt_ms: f64,
        /// `direct` or `relay`.
        path: String,
        /// The address the connection uses.
        remote_addr: String,
    },
    /// Answer of a lookup.
    Lookup {
        /// The name.
        name: String,
        /// Whether a `listen` holds it now.
        online: bool,
        /// The key it is bound to.
        fingerprint: String,
    },
    /// A watched name's presence (`peer watch`): its state now, then each
    /// change.
    Presence {
        /// The name.
        name: String,
        /// Whether a visible `listen` holds it now.
        online: bool,
        /// The key it is bound to; `null`: no one has registered it.
        fingerprint: Option<String>,
    },
    /// A call ended.
    CallEnded {
        /// The other side's name.
        peer: String,
        /// Bytes we sent.
        bytes_sent: u64,
        /// Bytes we received.
        bytes_received: u64,
    },
    /// A file was stored (listen --receive-dir).
    FileReceived {
        /// The other side's name.
        peer: String,
        /// Where it was stored.
        path: String,
        /// Its size.
        bytes: u64,
    },
    /// `peer forward` listens on its TCP address.
    Forwarding {
        /// The TCP address it accepts connections on.
        local_addr: String,
        /// The name it forwards them to.
        peer: String,
    },
    /// `peer forward` closed a TCP connection without serving it.
    ForwardFailed {
        /// The name it forwards to.
        peer: String,
        /// The TCP client's address.
        client: String,
        /// `busy` (too many at once), `target_refused` (the listener's
        /// target refused or did not answer), `no_call` (the call cannot
        /// be made), `call_lost`, `not_forwarding` (not a `--forward-to`).
        reason: String,
        /// Details for a person.
        message: String,
    },
    /// The server link was lost; reconnecting.
    RendezvousLost {
        /// The server.
        server: String,
    },
    /// The server link is back and the name registered again.
    RendezvousRestored {
        /// The server.
        server: String,
    },
    /// Something failed.
    Error {
        /// One of the kinds in `CLI.md`.
        kind: String,
        /// Details for a person.
        message: String,
    },
}

impl Event {
    /// The event for an error.
    pub fn error(e: &crate::Error) -> Self {
        Self::Error {
            kind: e.kind().as_str().to_owned(),
            message: e.to_string(),
        }
    }

    /// One JSON line, safe to print: see the module docs.
    pub fn json_line(&self) -> serde_json::Result<String> {
        let line = serde_json::to_string(self)?;
        Ok(common::text::escape_json_for_terminal(&line).into_owned())
    }

    /// A human-readable line for the plain (non-JSON) output, with remote
    /// text escaped ([`common::escape_for_terminal`]).
    pub fn human(&self) -> String {
        let line = self.human_raw();
        common::escape_for_terminal(&line).into_owned()
    }

    fn human_raw(&self) -> String {
        match self {
            Self::Registered {
                name,
                observed_addr,
                transport,
                ..
            } => format!(
                "registered as {name} over {} (server sees us at {observed_addr})",
                transport.to_uppercase()
            ),
            Self::TransportChanged { server, transport } => format!(
                "the link to {server} is now over {}",
                transport.to_uppercase()
            ),
            Self::IncomingCall { from, fingerprint } => format!(
                "incoming call from {from} ({})",
                fingerprint.get(..16).unwrap_or(fingerprint)
            ),
            Self::CallRefused { from, reason } => format!("refused call from {from}: {reason}"),
            Self::Connected {
                peer,
                path,
                remote_addr,
                setup_ms,
                ..
            } => {
                format!(
                    "connected to {peer} over a {path} path ({remote_addr}) in {setup_ms:.0} ms"
                )
            }
            Self::PathChanged {
                peer,
                path,
                remote_addr,
                reason,
            } => format!("path to {peer} is now {path} ({remote_addr}; {reason})"),
            Self::Birthday {
                peer,
                outcome,
                role,
                probes,
                sockets,
                elapsed_ms,
            } => format!(
                "birthday attempt with {peer} ({role}): {outcome} after {elapsed_ms:.0} ms, {probes} probes, {sockets} sockets"
            ),
            Self::Notice { message } => format!("notice: {message}"),
            Self::Pong {
                peer,
                seq,
                rtt_ms,
                path,
                ..
            } => format!("pong from {peer}: seq={seq} time={rtt_ms:.2} ms path={path}"),
            Self::Lookup {
                name,
                online,
                fingerprint,
            } => {
                format!(
                    "{name} {} {fingerprint}",
                    if *online { "online" } else { "offline" }
                )
            }
            Self::Presence {
                name,
                online,
                fingerprint,
            } => match fingerprint {
                Some(fp) => format!("{name} {} {fp}", if *online { "online" } else { "offline" }),
                None => format!("{name} offline (not registered)"),
            },
            Self::CallEnded {
                peer,
                bytes_sent,
                bytes_received,
            } => {
                format!(
                    "call with {peer} ended ({bytes_sent} bytes sent, {bytes_received} received)"
                )
            }
            Self::FileReceived { peer, path, bytes } => {
                format!("stored {bytes} bytes from {peer} at {path}")
            }
            Self::Forwarding { local_addr, peer } => {
                format!("forwarding TCP connections on {local_addr} to {peer}")
            }
            Self::ForwardFailed {
                client,
                reason,
                message,
                ..
            } => format!("closed the connection from {client} ({reason}): {message}"),
            Self::RendezvousLost { server } => {
                format!("lost the rendezvous server {server}; reconnecting")
            }
            Self::RendezvousRestored { server } => {
                format!("rendezvous server {server} is back; registered again")
            }
            Self::Error { kind, message } => format!("error ({kind}): {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_the_contract() {
        let e = Event::Connected {
            peer: "alice".into(),
            fingerprint: "ab".into(),
            path: "direct".into(),
            remote_addr: "127.0.0.1:5".into(),
            setup_ms: 1.5,
            server_ms: 0.0,
        };
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["event"], "connected");
        for field in ["peer", "fingerprint", "path", "remote_addr", "setup_ms"] {
            assert!(v.get(field).is_some(), "{field}");
        }
        let v = serde_json::to_value(Event::RendezvousLost { server: "s".into() }).expect("json");
        assert_eq!(v["event"], "rendezvous_lost");
    }

    fn hostile_events() -> Vec<Event> {
        let evil = "bob\n\u{1b}[2K\u{202e}txt.exe\u{2066}\u{200f}\u{9b}31m\u{7f}";
        vec![
            Event::IncomingCall {
                from: evil.into(),
                fingerprint: "ab".into(),
            },
            Event::CallRefused {
                from: "eve".into(),
                reason: evil.into(),
            },
            Event::FileReceived {
                peer: "eve".into(),
                path: format!("/inbox/{evil}"),
                bytes: 1,
            },
            Event::Error {
                kind: "rejected".into(),
                message: evil.into(),
            },
            Event::Lookup {
                name: evil.into(),
                online: true,
                fingerprint: "ab".into(),
            },
        ]
    }

    #[test]
    fn human_lines_escape_control_and_bidi_characters() {
        for e in hostile_events() {
            let line = e.human();
            assert!(
                !line.chars().any(common::text::is_unsafe_for_terminal),
                "{line:?}"
            );
            assert!(line.contains("\\u{202e}txt.exe"), "{line}");
            assert!(line.contains("bob\\u{a}\\u{1b}[2K"), "{line}");
        }
    }

    #[test]
    fn json_lines_escape_c1_del_and_bidi_and_keep_the_values() {
        for e in hostile_events() {
            let line = e.json_line().expect("json");
            assert!(
                !line.chars().any(common::text::is_unsafe_for_terminal),
                "{line:?}"
            );
            assert!(line.contains("\\u202etxt.exe"), "{line}");
            assert!(line.contains("\\u009b31m\\u007f"), "{line}");
            let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            assert_eq!(parsed, serde_json::to_value(&e).expect("json"), "{line}");
        }
    }
}
