//! The NATS server under a cluster run, watched from outside: its CPU
//! (`/proc/PID/stat`, with `--bus-pid`) and its message counters (`/varz`
//! of its monitoring port, with `--bus-monitor`), so the report shows what
//! one registration, lookup or call costs the shared bus.

use std::net::SocketAddr;

/// Where to read the bus's figures from.
pub(crate) struct BusWatch {
    /// Its pid.
    pub(crate) pid: Option<u32>,
    /// Its monitoring address (`nats-server -m PORT`).
    pub(crate) monitor: Option<SocketAddr>,
}

/// The bus's figures at one moment, or their change over a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct BusSample {
    /// CPU seconds.
    pub(crate) cpu: Option<f64>,
    /// Messages published to it (`in_msgs`).
    pub(crate) msgs_in: Option<f64>,
    /// Messages it delivered (`out_msgs`).
    pub(crate) msgs_out: Option<f64>,
}

impl BusWatch {
    /// Its figures now (what is unknown or unreadable is `None`).
    pub(crate) fn sample(&self) -> BusSample {
        let varz = self
            .monitor
            .and_then(|a| crate::server::http_get(a, "/varz").ok())
            .and_then(|t| varz_counts(&t));
        BusSample {
            cpu: self.pid.map(crate::server::cpu_secs),
            msgs_in: varz.map(|v| v.0),
            msgs_out: varz.map(|v| v.1),
        }
    }
}

impl BusSample {
    /// The change from `before` to `self`.
    pub(crate) fn since(self, before: Self) -> Self {
        let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        Self {
            cpu: d(self.cpu, before.cpu),
            msgs_in: d(self.msgs_in, before.msgs_in),
            msgs_out: d(self.msgs_out, before.msgs_out),
        }
    }
}

/// `in_msgs` and `out_msgs` from an HTTP answer carrying nats-server's
/// `/varz` JSON.
pub(crate) fn varz_counts(answer: &str) -> Option<(f64, f64)> {
    let body = answer.split_once("\r\n\r\n").map_or(answer, |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some((v["in_msgs"].as_f64()?, v["out_msgs"].as_f64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varz_counters_are_read_from_the_body() {
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"server_id\":\"X\",\"in_msgs\":12,\"out_msgs\":30,\"cpu\":1.5}";
        assert_eq!(varz_counts(answer), Some((12.0, 30.0)));
        assert_eq!(varz_counts("HTTP/1.1 404 Not Found\r\n\r\nnot found"), None);
        assert_eq!(varz_counts("{\"in_msgs\":1}"), None);
    }

    #[test]
    fn a_change_needs_both_ends() {
        let at = |c, i| BusSample {
            cpu: c,
            msgs_in: i,
            msgs_out: None,
        };
        let d = at(Some(3.0), Some(50.0)).since(at(Some(1.0), None));
        assert_eq!(d, at(Some(2.0), None));
    }
}
