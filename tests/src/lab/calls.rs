//! Helpers for lab tests that make calls with the real `peer`: a listener
//! waited until registered, a `peer ping` run, and [`Watch`], which waits
//! for events one after another while keeping every event it passed over,
//! so a test can check the whole story (every `pong`, where the
//! `path_changed` fell) after waiting for its milestones.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::RefCell;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;

use super::{Host, Lab};
use crate::proc::Proc;

/// How long a lab test waits for a process to start, register or exit.
pub const T: Duration = Duration::from_secs(30);

/// The IP part of `IP:PORT`.
pub fn ip_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(ip, _)| ip)
        .unwrap_or(addr)
        .to_owned()
}

impl Lab {
    /// `name listen --echo EXTRA` on `host`, waited until registered;
    /// returns the process and its `registered` event.
    pub fn listen(&self, name: &str, host: &Host, extra: &[&str]) -> (Proc, Value) {
        let mut args = vec!["listen", "--echo"];
        args.extend_from_slice(extra);
        let mut l = self.home(name, host).spawn(name, Some(name), &args);
        let reg = l.wait_for(T, "registered");
        (l, reg)
    }

    /// `who ping callee -c count -i 0.2 EXTRA` from `host`, started.
    pub fn ping(&self, who: &str, host: &Host, callee: &str, count: u32, extra: &[&str]) -> Proc {
        let count = count.to_string();
        let mut args = vec!["ping", callee, "-c", &count, "-i", "0.2"];
        args.extend_from_slice(extra);
        self.home(who, host)
            .spawn(&format!("{who} ping {callee}"), Some(who), &args)
    }
}

/// A process's events, waited for in order and all kept.
pub struct Watch<'a> {
    pub proc: &'a mut Proc,
    /// Every event received so far, in order (also the ones waited for).
    pub seen: Vec<Value>,
}

impl<'a> Watch<'a> {
    pub fn new(proc: &'a mut Proc) -> Self {
        Self { proc, seen: vec![] }
    }

    /// The next event for which `pred` holds, within `timeout`; the events
    /// passed over on the way are kept in [`Watch::seen`].
    pub fn wait(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let seen = RefCell::new(std::mem::take(&mut self.seen));
        let got = self.proc.try_wait_event(timeout, |v| {
            seen.borrow_mut().push(v.clone());
            pred(v)
        });
        self.seen = seen.into_inner();
        got.map_err(|why| format!("{}: {why}\n{}", self.proc.name, self.proc.log()))
    }

    /// [`Watch::wait`] that panics with the process's log.
    pub fn expect(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait(timeout, pred)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Waits (bounded) for the exit; every remaining event joins `seen`.
    pub fn finish(&mut self, timeout: Duration) -> ExitStatus {
        let status = self.proc.wait_exit(timeout);
        self.seen.extend(self.proc.drain_events());
        status
    }

    /// Every kept event named `event`.
    pub fn named(&self, event: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["event"] == event).collect()
    }

    /// The kept events named `event` that came after the first event
    /// equal to `mark`.
    pub fn after(&self, mark: &Value, event: &str) -> Vec<&Value> {
        self.seen
            .iter()
            .skip_while(|v| *v != mark)
            .filter(|v| v["event"] == event)
            .collect()
    }
}

/// Whether `v` is a `pong` with sequence number `seq`.
pub fn is_pong(v: &Value, seq: u64) -> bool {
    v["event"] == "pong" && v["seq"] == seq
}

/// The sequence numbers of `pongs`, sorted.
pub fn seqs(pongs: &[&Value]) -> Vec<u64> {
    let mut s: Vec<u64> = pongs.iter().filter_map(|p| p["seq"].as_u64()).collect();
    s.sort_unstable();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_of_cuts_the_port() {
        assert_eq!(ip_of("198.18.3.2:40000"), "198.18.3.2");
        assert_eq!(ip_of("nothing"), "nothing");
    }

    #[test]
    fn seqs_are_sorted_and_pongs_matched_by_seq() {
        let a = serde_json::json!({"event": "pong", "seq": 2});
        let b = serde_json::json!({"event": "pong", "seq": 0});
        assert_eq!(seqs(&[&a, &b]), vec![0, 2]);
        assert!(is_pong(&a, 2));
        assert!(!is_pong(&a, 0));
    }
}
