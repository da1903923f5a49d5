//! Latencies and errors of one scenario, and the numbers of its table row.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::procfs::CpuUse;

/// Latencies (µs) of successful calls and counts of failed ones.
#[derive(Default)]
pub struct Stats {
    pub latencies_us: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    pub fn record(&mut self, started: Instant, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                let us = started.elapsed().as_micros();
                self.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Err(label) => self.error(label),
        }
    }

    pub fn error(&mut self, label: String) {
        *self.errors.entry(label).or_default() += 1;
    }

    pub fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// One line of the results table.
pub struct Row {
    pub name: String,
    pub calls_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub ok: usize,
    pub errors: BTreeMap<String, u64>,
    pub cpu: Option<CpuUse>,
}

impl Row {
    pub fn from_stats(name: String, mut stats: Stats, elapsed: Duration) -> Self {
        stats.latencies_us.sort_unstable();
        let pct = |p: f64| percentile_ms(&stats.latencies_us, p);
        Row {
            name,
            calls_per_sec: stats.latencies_us.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            ok: stats.latencies_us.len(),
            errors: stats.errors,
            cpu: None,
        }
    }

    /// authd's CPU per successful call, in µs.
    pub fn authd_us_per_call(&self) -> Option<f64> {
        let ticks = self.cpu.as_ref()?.server?;
        (self.ok > 0).then(|| ticks as f64 * crate::procfs::TICK_US / self.ok as f64)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Nearest-rank percentile `p` (0–1) of sorted microseconds, in ms; NaN
/// when there are none.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64) * p).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}
