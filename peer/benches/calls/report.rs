//! Rows of the result table, percentiles, and the markdown printout.

use std::time::Duration;

use crate::Settings;

pub const MIB: u64 = 1 << 20;

/// One line of the table.
pub struct Row {
    metric: String,
    value: String,
    goal: String,
    met: Option<bool>,
}

impl Row {
    /// A figure without a goal.
    pub fn info(metric: impl Into<String>, value: String) -> Self {
        Self {
            metric: metric.into(),
            value,
            goal: String::new(),
            met: None,
        }
    }

    /// Median and p95 of `samples`, in milliseconds.
    pub fn latency(metric: impl Into<String>, samples: Vec<Duration>) -> Self {
        let (median, p95) = percentiles(samples);
        Self::info(metric, format!("median {median:.2} ms, p95 {p95:.2} ms"))
    }

    /// `rate ÷ base` against a goal of at least `goal`.
    pub fn ratio(metric: impl Into<String>, rate: f64, base: f64, goal: f64) -> Self {
        let ratio = rate / base;
        Self {
            metric: metric.into(),
            value: format!("{} = {ratio:.2}×", mib_s(rate)),
            goal: format!("≥ {goal}"),
            met: Some(ratio >= goal),
        }
    }

    /// `value` (printed with `unit`) against a goal of at most `goal`.
    pub fn at_most(metric: impl Into<String>, value: f64, goal: f64, unit: &str) -> Self {
        Self {
            metric: metric.into(),
            value: format!("{value:.2}{unit}"),
            goal: format!("≤ {goal}{unit}"),
            met: Some(value <= goal),
        }
    }

    /// A goal that could not be measured.
    pub fn failed(metric: impl Into<String>, value: String, goal: &str) -> Self {
        Self {
            metric: metric.into(),
            value,
            goal: goal.to_owned(),
            met: Some(false),
        }
    }
}

/// Bytes per second as `N MiB/s`.
pub fn mib_s(rate: f64) -> String {
    format!("{:.0} MiB/s", rate / MIB as f64)
}

/// Median and 95th percentile (nearest rank), in milliseconds.
pub fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = samples.len();
    let p95 = ((n as f64 * 0.95).ceil() as usize).clamp(1, n) - 1;
    (ms(samples[n / 2]), ms(samples[p95]))
}

pub fn print_table(rows: &[Row], settings: Settings) {
    println!(
        "\nloopback, one run; bulk: best of {} × {} MiB one way per contender\n",
        settings.runs,
        settings.bulk / MIB
    );
    println!("| metric | value | goal | met? |\n|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        println!("| {} | {} | {} | {} |", r.metric, r.value, r.goal, met);
    }
}
