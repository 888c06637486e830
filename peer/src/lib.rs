//! Call other peers by name through a rendezvous server, then talk to them
//! over a direct, mutually authenticated QUIC connection the server is not part of.
//!
//! A [`Peer`] has one identity (an Ed25519 key; its [`Fingerprint`] is who it
//! is), one UDP socket and one server, pinned by fingerprint.
//!
//! ```no_run
//! # async fn demo() -> Result<(), peer::Error> {
//! use peer::{Peer, PeerConfig, Policy};
//! let server_fp = "0".repeat(64).parse().expect("the fingerprint `rendezvous fingerprint` prints");
//! let mut config = PeerConfig::new("rendezvous.example.org:7700", server_fp);
//! config.name = Some("alice".into());
//! let alice = Peer::new(config).await?;
//! let mut events = alice.events();           // registered, connected, rendezvous_lost, ...
//! let mut listener = alice.listen(Policy::AcceptAll)?;
//! while let Some(call) = listener.accept().await {
//!     let call = call?;                       // Err: name taken, bad fingerprint, replaced
//!     while let Some(Ok((purpose, send, recv))) = call.accept().await {
//!         if purpose == peer::PeerMessage::Pipe {
//!             peer::app::echo(send, recv).await?;
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`peer`](Peer): the handle; lookup and call (drives [`call_state`]).
//! - `listener`: presence with reconnection, call offers; `accept`: letting
//!   in the callers of accepted calls.
//! - [`call_state`] (caller), [`callee_state`], [`policy`]: the decisions, without I/O.
//! - [`path`]: which path (direct candidate or relay) a call takes, without
//!   I/O; `router`: virtual addresses ↔ calls ↔ paths, per datagram;
//!   `path_task`: drives one call's table (probes, switches, events).
//! - `endpoint`: the one socket and its quinn endpoint; `udp`: the socket
//!   wrapper quinn sees (virtual addresses, probes, relay frames).
//! - `server_link`: requests to the rendezvous server; [`server_list`]:
//!   which node of `--server A,B,C` to use, without I/O; `approve`: the
//!   pre-approved callers a `listen` tells the server.
//! - `tcp`, [`proxy`], `udp_tunnel`, `fallback`: the TCP tunnel for
//!   networks without UDP (opening it, HTTP proxies, the socket's side,
//!   the UDP-first race).
//! - [`app`]: pipe, echo, ping and file transfer over a call.
//! - [`forward`]: TCP port forwarding over a call (`peer forward`,
//!   `listen --forward-to`).
//! - [`known_peers`]: contacts' pinned keys.
//! - `watch`: other names' presence, pushed by the server ([`Watcher`]).
//! - [`events`], [`error`], [`config`].

mod accept;
pub mod app;
mod approve;
mod call;
pub mod call_state;
pub mod callee_state;
pub mod config;
mod endpoint;
pub mod error;
pub mod events;
mod fallback;
pub mod forward;
pub mod known_peers;
mod link_watch;
mod listener;
mod mapping;
pub mod path;
mod path_task;
mod peer;
pub mod policy;
pub mod proxy;
mod router;
mod server_link;
pub mod server_list;
mod shared;
pub mod stdio_pipe;
mod tcp;
mod udp;
mod watch;

pub use call::{Call, Path, PathStatus};
pub use common::probe::Mapping;
pub use common::{ErrorKind, Fingerprint, PeerMessage};
pub use config::{default_config_dir, Limits, PeerConfig, Timing, Transport, TransportMode};
pub use endpoint::endpoint_config;
pub use error::{Error, Result};
pub use events::Event;
pub use listener::Listener;
pub use path::BirthdayStats;
pub use peer::{CallOptions, LookupInfo, Peer};
pub use policy::Policy;
pub use proxy::ProxyConfig;
pub use server_list::{ServerList, ServerListError};
/// Most extra sockets birthday attempts keep open at once (all calls).
pub use udp::MAX_EXTRA as MAX_BIRTHDAY_SOCKETS;
pub use watch::{PresenceUpdate, Watcher};
