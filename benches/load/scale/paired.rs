//! One call scenario on both servers, in turns: empty, seeded, seeded,
//! empty, seeded, empty, empty, seeded (ABBA BAAB), each for a quarter of
//! `--duration`, so that whatever else the machine does (other tenants,
//! builds), and whatever the order itself does, falls on both sides alike;
//! each side's four quarters are then one row.

use std::sync::Arc;
use std::time::Duration;

use crate::procfs::TICK_US;
use crate::scenarios::{self, Mix, MixRun};
use crate::seeding::{Shared, TaskState};
use crate::server::Server;
use crate::stats::Row;

/// Calls/s seeded ÷ empty at least this, for the token RPCs.
pub const MIN_THROUGHPUT_RATIO: f64 = 0.9;
/// p99 seeded ÷ empty at most this, for the token RPCs.
pub const MAX_P99_RATIO: f64 = 1.5;

/// One authd and the load tasks that drive it.
pub struct Side {
    pub server: Server,
    pub shared: Arc<Shared>,
    pub states: Vec<TaskState>,
}

/// One row of both sides.
pub struct Pair {
    pub name: String,
    pub empty: Row,
    pub seeded: Row,
    /// The token RPCs, which have targets.
    pub targeted: bool,
}

impl Pair {
    pub fn throughput_ratio(&self) -> f64 {
        self.seeded.calls_per_sec / self.empty.calls_per_sec
    }

    pub fn p50_ratio(&self) -> f64 {
        self.seeded.p50_ms / self.empty.p50_ms
    }

    pub fn p99_ratio(&self) -> f64 {
        self.seeded.p99_ms / self.empty.p99_ms
    }

    /// What misses a target, if anything.
    pub fn misses(&self) -> Vec<String> {
        let mut misses = Vec::new();
        if !self.targeted {
            return misses;
        }
        if self.throughput_ratio().is_nan() || self.throughput_ratio() < MIN_THROUGHPUT_RATIO {
            misses.push(format!(
                "calls/s {:.2} < {MIN_THROUGHPUT_RATIO}",
                self.throughput_ratio()
            ));
        }
        if self.p99_ratio().is_nan() || self.p99_ratio() > MAX_P99_RATIO {
            misses.push(format!("p99 {:.2} > {MAX_P99_RATIO}", self.p99_ratio()));
        }
        misses
    }
}

/// The token RPCs: the targets of issue 17 are theirs.
fn targeted(name: &str) -> bool {
    matches!(name, "getme" | "introspect" | "refresh")
}

/// The order of the legs (0: empty, 1: seeded): balanced for position and
/// for what precedes each leg.
pub const ORDER: [usize; 8] = [0, 1, 1, 0, 1, 0, 0, 1];

/// Runs `mix` on `sides` (empty, seeded) in [`ORDER`], each leg a quarter
/// of `duration`.
/// Also returns what preparing the scenario found, and its failures.
pub async fn run(mix: &Mix, sides: &mut [Side; 2], duration: Duration) -> (Vec<Pair>, Vec<String>, u64) {
    let mut notes = Vec::new();
    let mut failed = 0;
    if mix.lists_users() {
        for (label, s) in ["empty", "seeded"].into_iter().zip(sides.iter_mut()) {
            match scenarios::prepare_list_starts(&mut s.states, &s.shared).await {
                Ok((places, took)) => notes.push(format!(
                    "{}, {label}: each task pages from one of {places} places in the list of accounts (found in {:.1} s)",
                    mix.name,
                    took.as_secs_f64()
                )),
                Err(e) => {
                    notes.push(format!("{}, {label}: {e}", mix.name));
                    failed += 1;
                }
            }
        }
    }
    let leg = duration / 4;
    let mut runs: [Option<MixRun>; 2] = [None, None];
    for side in ORDER {
        let s = &mut sides[side];
        let run = scenarios::drive(mix, &mut s.states, &s.shared, leg, s.server.pid).await;
        runs[side] = Some(match runs[side].take() {
            Some(earlier) => earlier.merge(run),
            None => run,
        });
    }
    let [empty, seeded] = runs.map(|r| scenarios::rows(mix, r.expect("both sides ran")));
    let pairs = empty
        .into_iter()
        .zip(seeded)
        .map(|(empty, seeded)| Pair {
            name: empty.name.clone(),
            targeted: targeted(&empty.name),
            empty,
            seeded,
        })
        .collect();
    (pairs, notes, failed)
}

pub fn table_header() {
    println!(
        "Paired runs: E = empty database, S = seeded copy; each side four times for a quarter of the duration, in the order \
         E S S E S E E S. \
         µs/call: CPU time per successful call of authd, and of everything else (PostgreSQL, other tenants).\n"
    );
    println!(
        "| scenario | E calls/s | S calls/s | S÷E | E p50 ms | S p50 ms | E p99 ms | S p99 ms | S÷E p99 | errors E / S | authd µs/call E / S | other µs/call E / S | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|");
}

pub fn table_row(pair: &Pair) {
    let errors = |row: &Row| {
        if row.errors.is_empty() {
            "0".to_owned()
        } else {
            row.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let per_call = |row: &Row, pick: fn(&crate::procfs::CpuUse) -> Option<u64>| match &row.cpu {
        Some(cpu) if row.ok > 0 => pick(cpu).map_or_else(
            || "?".to_owned(),
            |t| format!("{:.0}", t as f64 * TICK_US / row.ok as f64),
        ),
        _ => String::new(),
    };
    let both = |pick: fn(&crate::procfs::CpuUse) -> Option<u64>| {
        let (e, s) = (per_call(&pair.empty, pick), per_call(&pair.seeded, pick));
        if e.is_empty() && s.is_empty() {
            String::new()
        } else {
            format!("{e} / {s}")
        }
    };
    let target = if !pair.targeted {
        "–".to_owned()
    } else {
        let misses = pair.misses();
        if misses.is_empty() {
            format!("met (≥ {MIN_THROUGHPUT_RATIO}, ≤ {MAX_P99_RATIO})")
        } else {
            format!("MISSED: {}", misses.join(", "))
        }
    };
    println!(
        "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} | {} | {} | {} |",
        pair.name,
        pair.empty.calls_per_sec,
        pair.seeded.calls_per_sec,
        pair.throughput_ratio(),
        pair.empty.p50_ms,
        pair.seeded.p50_ms,
        pair.empty.p99_ms,
        pair.seeded.p99_ms,
        pair.p99_ratio(),
        errors(&pair.empty),
        errors(&pair.seeded),
        both(|c| c.server),
        both(|c| c.rest),
        target,
    );
}
