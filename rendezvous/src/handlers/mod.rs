//! One file per request: parse → apply → reply.
//!
//! Each handler takes the shared state and the requesting session and returns
//! the reply frame; the connection driver (`connection`) writes it. The
//! decisions live in sans-IO types (the registry, the store, the rate
//! limiters, [`crate::broker`]); a handler gathers their facts and performs
//! what they decide.

// An early return's `Err` is the reply itself (a `Message`, ~140 bytes since
// it carries relay tickets): the cold path, once per request; boxing it
// would only add an allocation.
#![allow(clippy::result_large_err)]

pub(crate) mod approve;
pub(crate) mod call;
pub(crate) mod lookup;
pub(crate) mod register;
pub(crate) mod remote;
pub(crate) mod watch;

pub(crate) use crate::replies::{check_name, rate_limited, store_failed};
