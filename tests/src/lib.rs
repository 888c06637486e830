//! Support for the whole-system tests and the benchmarks.
//!
//! - [`inproc`]: a real server and real peers inside the test process, and a
//!   raw protocol client for hostile input.
//! - [`proc`]: the real `rendezvous` and `peer` binaries as child processes,
//!   followed through their `--json` events.
//! - [`lab`]: the NAT lab — network namespaces, nftables NATs and delayed
//!   links — in which the binaries run as they would across the internet
//!   (guide: `tests/LAB.md`). Its helper programs are this crate's binaries:
//!   `nfq-delay` (link delay through NFQUEUE), `lab-udp` (plain-UDP probe
//!   that checks the NATs) and `lab-bench` (setup time per topology).
//! - [`dial`]: dialing a listening peer directly with a chosen key.
//! - [`fake_server`]: a rendezvous server that registers one `listen` and
//!   then says whatever the test wants.
//! - [`relay_tap`]: a raw client whose socket also sends and taps relay
//!   frames (the relay tests).
//! - [`postgres`]: a private PostgreSQL on loopback (initdb in a temp dir),
//!   stopped and started again for outage tests.
//! - [`stall`]: a UDP relay that stalls QUIC handshakes and counts how many
//!   the other side answers.
//! - [`tcp_services`]: an HTTP/1.0 file server, an echo server and their
//!   clients, the targets of the forwarding tests and bench.
//! - [`tunnel_client`]: raw tunnels to the server's TCP side, and a quinn
//!   endpoint over one (the server's TCP side without the peer crate).
pub mod dial;
pub mod fake_server;
pub mod inproc;
pub mod lab;
pub mod nats;
pub mod pair;
pub mod postgres;
pub mod proc;
pub mod relay_tap;
pub mod stall;
pub mod tcp_services;
pub mod tunnel_client;
