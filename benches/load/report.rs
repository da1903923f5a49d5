//! Everything the generator prints about results: the table and the
//! ratios against this run's baselines.

use crate::argon2_baseline::Argon2Baseline;
use crate::burst::BurstResult;
use crate::procfs::{TICK_US, mib};
use crate::stats::Row;

pub fn table_header() {
    println!(
        "CPU columns: share of both cores busy, and CPU time per successful call of authd, of this load generator, and of everything else (PostgreSQL, other tenants); authd's RSS after the scenario.\n"
    );
    println!(
        "| scenario | calls/s | p50 ms | p99 ms | p99.9 ms | ok calls | errors | CPU busy | authd µs/call | loadgen µs/call | other µs/call | authd RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
}

pub fn table_row(row: &Row) {
    let errors = if row.errors.is_empty() {
        "0".to_owned()
    } else {
        row.errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cpu = match &row.cpu {
        Some(c) if row.ok > 0 => {
            let per_call = |ticks: Option<u64>| {
                ticks.map_or_else(
                    || "?".to_owned(),
                    |t| format!("{:.0}", t as f64 * TICK_US / row.ok as f64),
                )
            };
            format!(
                "{:.0}% | {} | {} | {} | {}",
                c.busy_percent,
                per_call(c.server),
                per_call(Some(c.own)),
                per_call(c.rest),
                c.server_rss_kib
                    .map_or_else(|| "?".to_owned(), |k| format!("{:.0}", mib(k)))
            )
        }
        _ => " | | | | ".to_owned(),
    };
    println!(
        "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {cpu} |",
        row.name, row.calls_per_sec, row.p50_ms, row.p99_ms, row.p999_ms, row.ok, errors
    );
}

/// The token RPCs against the health floor, the password RPCs against the
/// argon2 ceiling, and the memory of the Login burst.
pub fn ratios(rows: &[Row], baseline: &Argon2Baseline, burst: Option<&BurstResult>, cores: usize) {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    if let Some(floor) = find("health") {
        for (name, label) in [
            ("getme", "GetMe"),
            ("getuser", "GetUser"),
            ("introspect", "IntrospectToken"),
            ("client-credentials", "ExchangeToken client_credentials"),
            ("exchange", "ExchangeToken token exchange"),
            ("client-credentials-http", "POST /oauth2/token client_credentials"),
            ("exchange-http", "POST /oauth2/token token exchange"),
        ] {
            if let Some(r) = find(name) {
                println!(
                    "{label} / health floor: {:.0} / {:.0} = {:.2}  (p99 {:.2} ms)",
                    r.calls_per_sec,
                    floor.calls_per_sec,
                    r.calls_per_sec / floor.calls_per_sec,
                    r.p99_ms
                );
            }
        }
    }
    let hash_time = baseline.median();
    let ceiling = cores as f64 / hash_time.as_secs_f64();
    println!(
        "argon2 ceiling: {cores} cores ÷ {:.2} ms (median of {} hashes in {} series, series medians {} ms; \
         other processes used {:.0}% of one core meanwhile) = {ceiling:.1} hashes/s",
        hash_time.as_secs_f64() * 1000.0,
        baseline.samples.len(),
        baseline.series_medians.len(),
        baseline
            .series_medians
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join("/"),
        baseline.foreign_ticks as f64 * TICK_US / baseline.measuring.as_secs_f64().max(1e-9) / 1e4,
    );
    let parallel = baseline.parallel_rate();
    println!(
        "argon2 with {cores} threads hashing at once: {parallel:.1} hashes/s (median of {} series) = {:.2} × the ceiling",
        baseline.parallel_rates.len(),
        parallel / ceiling
    );
    for (name, label) in [("login", "Login"), ("register", "Register")] {
        if let Some(r) = find(name) {
            println!(
                "{label} / argon2 ceiling: {:.1} / {ceiling:.1} = {:.2}; / parallel argon2 rate: {:.2}",
                r.calls_per_sec,
                r.calls_per_sec / ceiling,
                r.calls_per_sec / parallel
            );
        }
    }
    if let Some(b) = burst {
        let show = |k: Option<u64>| k.map_or_else(|| "n/a".to_owned(), |k| format!("{:.1} MiB", mib(k)));
        println!(
            "peak RSS during {} concurrent Logins: {} (VmHWM{}), sampled max VmRSS {:.1} MiB; \
             before the burst: VmRSS {}, VmHWM {}; burst took {:.1} s",
            b.logins,
            show(b.hwm_kib),
            if b.hwm_reset {
                ", reset just before the burst"
            } else {
                " over the process lifetime"
            },
            mib(b.sampled_max_kib),
            show(b.rss_before_kib),
            show(b.lifetime_hwm_kib),
            b.wall.as_secs_f64(),
        );
    }
}
