//! Support for the whole-system tests and the benchmarks.
//!
//! - [`inproc`]: a real server and real peers inside the test process, and a
//!   raw protocol client for hostile input.
//! - [`proc`]: the real `rendezvous` and `peer` binaries as child processes,
//!   followed through their `--json` events.
pub mod inproc;
pub mod proc;
