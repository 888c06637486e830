//! Support for the whole-system tests and the benchmarks.
//!
//! - [`inproc`]: a real server and real peers inside the test process, and a
//!   raw protocol client for hostile input.
//! - [`proc`]: the real `rendezvous` and `peer` binaries as child processes,
//!   followed through their `--json` events.
//! - [`lab`]: the NAT lab — network namespaces, nftables NATs and delayed
//!   links — in which the binaries run as they would across the internet.
pub mod inproc;
pub mod lab;
pub mod proc;
