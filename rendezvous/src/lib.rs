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
//! - [`server`]: the QUIC driver (accept, authenticate, dispatch streams).
//! - `handlers/`: one file per request (`register`, `lookup`, `call`, `approve`).
//! - [`registry`]: sessions and presence (pure, unit-tested).
//! - [`store`]: durable name → key bindings behind the [`store::NameStore`] trait.
//! - [`ratelimit`]: per-source token buckets (pure).
//! - [`relay`]: the relay's allocation table and per-datagram checks (pure),
//!   and its drivers: the socket wrapper in front of quinn, the shared table.
//! - `offers`: call offers per (source, callee), per callee and per contact (pure).
//! - [`metrics`]: counters and their Prometheus text.
//! - [`http`]: the tiny `/metrics` endpoint.
//! - `transport`: the QUIC endpoint (TLS, transport limits, stateless resets, socket buffers).
//! - [`admission`]: who may start a handshake (quotas, QUIC Retry).
//! - `cids`: keyed connection IDs a restarted server recognises.
//! - `counted`: a connection's counts, handed back however its task ends.
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
mod cids;
pub mod config;
mod counted;
mod handlers;
pub mod http;
pub mod metrics;
mod offers;
pub mod ratelimit;
pub mod registry;
pub mod relay;
pub mod server;
pub mod store;
mod transport;

pub use config::{Config, Limits, Rate, RateError};
pub use server::{load_identity, MetricsHandle, Server, ServerError, Tables};
