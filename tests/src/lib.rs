//! Support for the whole-system tests and the benchmarks.
//!
//! - [`inproc`]: a real server and real peers inside the test process, and a
//!   raw protocol client for hostile input.
pub mod inproc;
