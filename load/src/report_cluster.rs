//! The results of a cluster run: a markdown table for people (with ratios
//! to a 1-node run given by `--baseline`), JSON for programs.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::bus::BusSample;
use crate::plan::{self, Where};

/// One measured phase.
pub(crate) struct Phase {
    /// What it measured, e.g. `calls, cross-node`.
    pub(crate) name: String,
    /// Operations completed.
    pub(crate) ok: usize,
    /// Operations that failed (or lookups that said offline).
    pub(crate) failed: usize,
    /// How long it took.
    pub(crate) took: Duration,
    /// CPU seconds each node spent meanwhile.
    pub(crate) node_cpu: Vec<f64>,
    /// What the bus did meanwhile (when watched).
    pub(crate) bus: BusSample,
}

impl Phase {
    /// A phase's numbers.
    pub(crate) fn new(
        name: &str,
        ok: usize,
        failed: usize,
        took: Duration,
        node_cpu: Vec<f64>,
        bus: BusSample,
    ) -> Self {
        Self {
            name: name.to_owned(),
            ok,
            failed,
            took,
            node_cpu,
            bus,
        }
    }

    /// The bus per operation: core-µs, messages in, messages out.
    fn bus_per_op(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        let per = |v: Option<f64>| v.map(|v| v / self.ok.max(1) as f64);
        let cpu = self.bus.cpu.map(|c| plan::core_us_per_op(c, self.ok));
        (cpu, per(self.bus.msgs_in), per(self.bus.msgs_out))
    }

    fn bus_cell(&self) -> String {
        let (cpu, msgs_in, msgs_out) = self.bus_per_op();
        let f = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        format!(
            "{} µs, {} in / {} out",
            f(cpu, 0),
            f(msgs_in, 2),
            f(msgs_out, 2)
        )
    }

    fn per_second(&self) -> f64 {
        self.ok as f64 / self.took.as_secs_f64().max(1e-9)
    }

    /// Core-µs per operation, node by node.
    fn us_per_op(&self) -> Vec<f64> {
        self.node_cpu
            .iter()
            .map(|c| plan::core_us_per_op(*c, self.ok))
            .collect()
    }
}

/// Brokering times of one kind: (kind, median and p95, accepted, failed).
pub(crate) type Brokering = (Where, Option<(Duration, Duration)>, usize, usize);

/// Everything one cluster run measured.
pub(crate) struct ClusterReport {
    /// Nodes started.
    pub(crate) nodes: usize,
    /// Peers asked for.
    pub(crate) peers: usize,
    /// Where names were kept.
    pub(crate) store: &'static str,
    /// The throughput phases.
    pub(crate) phases: Vec<Phase>,
    /// Brokering times, one call at a time.
    pub(crate) brokering: Vec<Brokering>,
    /// `rendezvous_cluster_calls_total` of each node at the end.
    pub(crate) cluster_calls: Vec<f64>,
}

/// The phase of a 1-node run to compare `name` with: there every call and
/// lookup is same-node.
pub(crate) fn baseline_name(name: &str) -> String {
    name.replace(Where::Cross.label(), Where::Same.label())
}

/// The largest per-node core-µs per operation of `name` in a report's JSON.
fn busiest_node_us(json: &Value, name: &str) -> Option<f64> {
    json["phases"].as_array()?.iter().find_map(|p| {
        (p["name"] == name).then(|| {
            p["node_core_us_per_op"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_f64).fold(0.0, f64::max))
        })?
    })
}

/// `cross − same` of (median, p95), when both were measured.
pub(crate) fn cross_minus_same(b: &[Brokering]) -> Option<(f64, f64)> {
    let get = |at: Where| b.iter().find(|x| x.0 == at).and_then(|x| x.1);
    let (same, cross) = (get(Where::Same)?, get(Where::Cross)?);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Some((ms(cross.0) - ms(same.0), ms(cross.1) - ms(same.1)))
}

impl ClusterReport {
    /// The JSON form.
    pub(crate) fn json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        json!({
            "nodes": self.nodes,
            "peers": self.peers,
            "store": self.store,
            "phases": self.phases.iter().map(|p| json!({
                "name": p.name,
                "ok": p.ok,
                "failed": p.failed,
                "secs": p.took.as_secs_f64(),
                "per_second": p.per_second(),
                "node_cpu_secs": p.node_cpu,
                "node_core_us_per_op": p.us_per_op(),
                "bus_core_us_per_op": p.bus_per_op().0,
                "bus_msgs_in_per_op": p.bus_per_op().1,
                "bus_msgs_out_per_op": p.bus_per_op().2,
            })).collect::<Vec<_>>(),
            "brokering": self.brokering.iter().map(|(at, t, ok, failed)| json!({
                "where": at.label(),
                "median_ms": t.map(|t| ms(t.0)),
                "p95_ms": t.map(|t| ms(t.1)),
                "accepted": ok,
                "failed": failed,
            })).collect::<Vec<_>>(),
            "brokering_cross_minus_same_ms": cross_minus_same(&self.brokering)
                .map(|(m, p)| json!({"median": m, "p95": p})),
            "cluster_calls_total": self.cluster_calls,
        })
    }

    /// The markdown table; `baseline` is the JSON of a 1-node run.
    pub(crate) fn table(&self, baseline: Option<&Value>) -> String {
        let mut out = format!(
            "{} node(s), {} peers, store: {}\n\n| phase | per second | failed | node CPU, core-µs per op | busiest node vs 1 node | NATS per op: CPU, messages |\n|---|---|---|---|---|---|\n",
            self.nodes, self.peers, self.store
        );
        for p in &self.phases {
            let us = p.us_per_op();
            let per_node: Vec<String> = us
                .iter()
                .enumerate()
                .map(|(k, u)| format!("n{} {u:.0}", k + 1))
                .collect();
            let busiest = us.iter().copied().fold(0.0, f64::max);
            let vs = baseline
                .and_then(|b| busiest_node_us(b, &baseline_name(&p.name)))
                .filter(|b| *b > 0.0)
                .map_or("-".into(), |b| {
                    format!("{:.2}× ({busiest:.0} / {b:.0})", busiest / b)
                });
            out += &format!(
                "| {} | {:.0} | {} | {} (sum {:.0}) | {vs} | {} |\n",
                p.name,
                p.per_second(),
                p.failed,
                per_node.join(", "),
                us.iter().sum::<f64>(),
                p.bus_cell()
            );
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for (at, t, ok, failed) in &self.brokering {
            let cell = t.map_or("-".into(), |(m, p)| {
                format!("median {:.2} ms, p95 {:.2} ms", ms(m), ms(p))
            });
            out += &format!(
                "| brokering, {} (Call → CallAccepted, one at a time) | {cell} | {failed} | {ok} calls | | |\n",
                at.label()
            );
        }
        if let Some((m, p)) = cross_minus_same(&self.brokering) {
            let verdict = if m <= 2.0 { "met" } else { "NOT met" };
            out += &format!(
                "| brokering, cross − same | median {m:+.2} ms, p95 {p:+.2} ms | | goal ≤ 2 ms: {verdict} | | |\n"
            );
        }
        let calls: Vec<String> = self
            .cluster_calls
            .iter()
            .map(|c| format!("{c:.0}"))
            .collect();
        out += &format!(
            "\nrendezvous_cluster_calls_total by node: {}\n",
            calls.join(", ")
        );
        out
    }

    /// Prints the table and writes the JSON (`json_out`), comparing with
    /// the 1-node run in `baseline` when given.
    pub(crate) fn emit(&self, json_out: Option<&Path>, baseline: Option<&Path>) -> Result<()> {
        let base = match baseline {
            Some(path) => {
                let text = std::fs::read(path)
                    .with_context(|| format!("--baseline {}", path.display()))?;
                Some(serde_json::from_slice::<Value>(&text).with_context(|| {
                    format!(
                        "--baseline {}: not the JSON of a cluster run",
                        path.display()
                    )
                })?)
            }
            None => None,
        };
        println!("\n{}", self.table(base.as_ref()));
        if let Some(path) = json_out {
            std::fs::write(path, serde_json::to_vec_pretty(&self.json())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ClusterReport {
        let ms = Duration::from_millis;
        ClusterReport {
            nodes: 2,
            peers: 4,
            store: "embedded (one per node)",
            phases: vec![Phase::new(
                "calls, cross-node",
                1000,
                0,
                ms(500),
                vec![0.1, 0.2],
                BusSample {
                    cpu: Some(0.05),
                    msgs_in: Some(4000.0),
                    msgs_out: None,
                },
            )],
            brokering: vec![
                (Where::Same, Some((ms(2), ms(4))), 10, 0),
                (Where::Cross, Some((ms(3), ms(7))), 10, 0),
            ],
            cluster_calls: vec![5.0, 6.0],
        }
    }

    #[test]
    fn cross_phases_compare_with_same_node_ones_of_one_node() {
        assert_eq!(baseline_name("calls, cross-node"), "calls, same-node");
        assert_eq!(
            baseline_name("registrations (ramp)"),
            "registrations (ramp)"
        );
    }

    #[test]
    fn cross_minus_same_needs_both() {
        let r = report();
        let (m, p) = cross_minus_same(&r.brokering).expect("both");
        assert!((m - 1.0).abs() < 1e-9 && (p - 3.0).abs() < 1e-9);
        assert_eq!(cross_minus_same(&r.brokering[..1]), None);
    }

    #[test]
    fn table_shows_per_node_cpu_and_the_ratio_to_one_node() {
        let r = report();
        let base =
            json!({"phases": [{"name": "calls, same-node", "node_core_us_per_op": [400.0]}]});
        let t = r.table(Some(&base));
        // 0.1 s and 0.2 s over 1000 calls: 100 and 200 core-µs each.
        assert!(t.contains("| calls, cross-node | 2000 | 0 | n1 100, n2 200 (sum 300) | 0.50× (200 / 400) | 50 µs, 4.00 in / - out |"), "{t}");
        assert!(t.contains("median +1.00 ms, p95 +3.00 ms"), "{t}");
        assert!(t.contains("goal ≤ 2 ms: met"), "{t}");
        let j = r.json();
        assert_eq!(busiest_node_us(&j, "calls, cross-node"), Some(200.0));
        assert_eq!(j["brokering_cross_minus_same_ms"]["median"], 1.0);
        assert!(r.table(None).contains("| - |"));
    }
}
