//! The rendezvous server: peers register a name, look each other up, and ask
//! to be introduced; the server brokers consent-first calls and steps aside.
//!
//! It carries no call data of its own: its relay (same process, same UDP
//! port, on by default) forwards only the end-to-end encrypted packets of
//! calls the callee accepted, between their two parties, and it never gives
//! out an address before the callee accepted a call.
//!
//! # Layout
//!
//! - [`config`]: every limit and timing, with defaults.
//! - [`server`]: the QUIC driver (bind, admit connections, shut down).
//! - `connection`: one connection's task (handshake, dispatch request streams).
//! - `handlers/`: one file per request (`register`, `lookup`, `call`, `approve`),
//!   and `remote` (both halves of a call between nodes);
//!   thin drivers around the sans-IO decisions.
//! - [`broker`]: the call brokering as a sans-IO state machine (checks,
//!   offer, answer, relay, introductions), driven by `handlers/call`.
//! - `state`: what every task shares (limits, registry, rates, metrics, relay).
//! - [`error`]: [`ServerError`], why the server could not start.
//! - [`registry`]: sessions and presence (pure, unit-tested).
//! - [`presence`]: presence beyond this node (the [`presence::Presence`]
//!   trait: one node's [`presence::LocalPresence`], a cluster's).
//! - [`cluster`]: several nodes over NATS: the presence directory, sealed
//!   bus messages, calls between nodes.
//! - [`store`]: durable name → key bindings behind the async [`store::NameStore`]
//!   trait: embedded redb (default) or PostgreSQL (shared by several nodes).
//! - [`ratelimit`]: per-source token buckets (pure).
//! - [`relay`]: the relay's allocation table and per-datagram checks (pure),
//!   and its driver (the shared table, allocation, expiry).
//! - `checks`: what a UDP check request gets (pure): plain or mapping
//!   answer, within a per-socket rate budget.
//! - [`mapping`]: the mapping check port (a second UDP socket answering
//!   checks, so peers can tell a symmetric NAT from a cone).
//! - [`socket`]: the socket quinn sees: UDP with relay frames and UDP checks
//!   taken out, and the TCP peers' tunnels at virtual addresses.
//! - [`tcp`]: the TCP listener (TLS + WebSocket tunnels) and its peers.
//! - [`offers`]: call offers per (source, callee), per callee and per contact (pure).
//! - [`metrics`]: counters and their Prometheus text.
//! - [`http`]: the tiny `/metrics` endpoint.
//! - `transport`: the QUIC endpoint (TLS, transport limits, stateless resets, socket buffers).
//! - [`admission`]: who may start a handshake (quotas, QUIC Retry).
//! - `cids`: keyed connection IDs a restarted server recognises.
//! - `counted`: a connection's counts, handed back however its task ends.
//! - [`watchers`]: who watches whom (`peer watch`), names → watch streams (pure).
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rendezvous::{Config, Server};
//! let server = Server::bind(Config::new("0.0.0.0:7700".parse()?, "/var/lib/rendezvous".into()))?;
//! println!("fingerprint: {}", server.fingerprint());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod broker;
mod checks;
mod cids;
pub mod cluster;
pub mod config;
mod connection;
mod counted;
pub mod error;
mod handlers;
pub mod http;
pub mod mapping;
pub mod metrics;
pub mod offers;
pub mod presence;
pub mod ratelimit;
pub mod registry;
pub mod relay;
mod replies;
pub mod server;
pub mod socket;
mod state;
pub mod store;
pub mod tcp;
mod transport;
pub mod watchers;

pub use config::{Config, Limits, MappingPort, Rate, RateError, StoreChoice};
pub use error::ServerError;
pub use server::{load_identity, load_identity_file, MetricsHandle, Server, Tables};
