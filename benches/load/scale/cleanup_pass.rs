//! Refresh on the seeded database without, then during, a clean-up pass
//! that deletes the seed's ended sessions (nine in ten of its sessions,
//! with their refresh tokens, and the rest of its day-old backlog).
//!
//! The pass is run on demand by another replica on the same database
//! (`AUTHD_CLEANUP_INTERVAL=10s`: its first attempt comes 5 to 10 s after
//! its start, and no second pass within 10 s of the first one's end, by
//! when the replica is stopped); the two measured servers never run one
//! (`AUTHD_CLEANUP_INTERVAL=0`). The pass's start, end and rows deleted are
//! read from `maintenance_runs`, where every pass is recorded, and its rows
//! and batches per table from the replica's metrics. The Refresh load runs
//! for `--duration` before the pass, in one-second slices from the moment
//! the pass is seen to start for `--cleanup-window` (or until it ends), and
//! for `--duration` after it. A pass still running `--cleanup-max` after
//! its start is stopped (between two batches) and reported with its rate.
//!
//! A pass deletes what the seed left to delete, so it is measured once per
//! copy of the seed: the scale run always serves a fresh copy, and runs
//! this after the paired scenarios.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::report;
use crate::scale::cluster::{Kept, SEEDED};
use crate::scale::paired::Side;
use crate::scenarios::{self, Mix, MixRun, Op};
use crate::server::{free_port, start_authd, stop_server, wait_until_serving};
use crate::stats::Row;

/// The clean-up interval of the replica that runs the pass.
const CLEANER_INTERVAL: &str = "10s";
/// The load is driven in slices this long, checking the pass in between.
const SLICE: Duration = Duration::from_secs(1);
/// The pass must start this soon after its replica is SERVING.
const START_WITHIN: Duration = Duration::from_secs(60);
/// How often a pass still running after the load is reported on.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

pub struct Settings {
    /// The Refresh load before and after the pass.
    pub duration: Duration,
    /// The Refresh load during the pass, from its start (less if it ends
    /// sooner); the pass then goes on alone.
    pub window: Duration,
    /// A pass still running this long after its start is stopped.
    pub max_pass: Duration,
    pub server_env: Vec<(String, String)>,
}

pub struct Outcome {
    pub errors: u64,
    pub notes: Vec<String>,
}

/// The pass as `maintenance_runs` recorded it.
struct PassRecord {
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    deleted: i64,
}

pub async fn run(cluster: &Kept, side: &mut Side, dir: &Path, settings: &Settings) -> Outcome {
    let mut notes = Vec::new();
    let mut errors = 0u64;
    let mix = Mix {
        name: "refresh",
        ops: vec![(Op::Refresh, 100)],
    };
    let mut db = cluster.connect(SEEDED).await;
    let counts_before = counts(&mut db).await;

    let quiet = scenarios::drive(
        &mix,
        &mut side.states,
        &side.shared,
        settings.duration,
        side.server.pid,
    )
    .await;
    let quiet = rename(scenarios::rows(&mix, quiet), "refresh, seeded, no clean-up");

    // The replica that runs the pass.
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut env = settings.server_env.clone();
    env.retain(|(k, _)| k != "AUTHD_CLEANUP_INTERVAL" && k != "AUTHD_METRICS_LISTEN");
    env.push(("AUTHD_CLEANUP_INTERVAL".into(), CLEANER_INTERVAL.into()));
    env.push(("AUTHD_METRICS_LISTEN".into(), metrics_addr.clone()));
    let launched = Utc::now();
    let mut cleaner = start_authd(&cluster.pg, SEEDED, dir, &env);
    wait_until_serving(&mut cleaner).await;

    let waiting = Instant::now();
    let started = loop {
        match latest_pass(&mut db).await {
            Some(p) if p.started_at >= launched - chrono::Duration::seconds(1) => break Some(p),
            _ if waiting.elapsed() > START_WITHIN => break None,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let Some(pass) = started else {
        stop_server(&mut cleaner).await;
        let line = format!(
            "cleanup: no clean-up pass started within {} s of its replica being SERVING",
            START_WITHIN.as_secs()
        );
        println!("{line}");
        return Outcome {
            errors: 1,
            notes: vec![line],
        };
    };
    let load_started = Instant::now();
    let mut during: Option<MixRun> = None;
    let mut record = pass;
    while record.finished_at.is_none() && load_started.elapsed() < settings.window {
        let slice = scenarios::drive(&mix, &mut side.states, &side.shared, SLICE, side.server.pid).await;
        during = Some(match during.take() {
            Some(earlier) => earlier.merge(slice),
            None => slice,
        });
        record = next_record(&mut db, record).await;
    }
    let load_for = load_started.elapsed();
    // The rest of the pass without load, reported once a minute.
    let mut reported = Instant::now();
    let running_for = |record: &PassRecord| (Utc::now() - record.started_at).to_std().unwrap_or_default();
    while record.finished_at.is_none() && running_for(&record) < settings.max_pass {
        tokio::time::sleep(Duration::from_millis(500)).await;
        record = next_record(&mut db, record).await;
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            let so_far: f64 = cleanup_metrics(&metrics_addr).await.iter().map(|t| t.1).sum();
            println!(
                "cleanup: the pass has run for {:.0} s and deleted {so_far:.0} rows so far",
                running_for(&record).as_secs_f64()
            );
        }
    }
    let per_table = cleanup_metrics(&metrics_addr).await;
    let ran_for = running_for(&record);
    // A pass still running ends between two batches.
    stop_server(&mut cleaner).await;
    let counts_after = counts(&mut db).await;
    let ended_left = ended_sessions(&mut db).await;
    // The same load again, on what the pass left.
    let after = scenarios::drive(
        &mix,
        &mut side.states,
        &side.shared,
        settings.duration,
        side.server.pid,
    )
    .await;
    let after = rename(scenarios::rows(&mix, after), "refresh, seeded, after the pass");

    let Some(during) = during else {
        unreachable!("the load runs at least one slice")
    };
    let during = rename(
        scenarios::rows(&mix, during),
        "refresh, seeded, during the clean-up pass",
    );
    println!();
    report::table_header();
    for row in [&quiet, &during, &after] {
        report::table_row(row);
        errors += row.error_count();
    }
    let deleted: f64 = per_table.iter().map(|t| t.1).sum();
    for (label, reference) in [("before", &quiet), ("after", &after)] {
        notes.push(format!(
            "cleanup: Refresh during the pass ÷ {label} it: calls/s {:.0} / {:.0} = {:.2}; \
             p50 {:.2} / {:.2} ms = {:.2}; p99 {:.2} / {:.2} ms = {:.2}",
            during.calls_per_sec,
            reference.calls_per_sec,
            during.calls_per_sec / reference.calls_per_sec,
            during.p50_ms,
            reference.p50_ms,
            during.p50_ms / reference.p50_ms,
            during.p99_ms,
            reference.p99_ms,
            during.p99_ms / reference.p99_ms,
        ));
    }
    let tables = per_table
        .iter()
        .filter(|(_, rows, _)| *rows > 0.0)
        .map(|(t, rows, batches)| format!("{t} {rows:.0} in {batches:.0} batches"))
        .collect::<Vec<_>>()
        .join(", ");
    match record.finished_at {
        Some(finished) => notes.push(format!(
            "cleanup: the pass took {:.1} s (maintenance_runs) and deleted {} rows ({tables}); \
             the Refresh load ran for the first {:.1} s of it",
            (finished - record.started_at).num_milliseconds() as f64 / 1000.0,
            record.deleted,
            load_for.as_secs_f64(),
        )),
        None => {
            let rate = deleted / ran_for.as_secs_f64().max(1e-9);
            notes.push(format!(
                "cleanup: the pass did NOT finish within --cleanup-max ({:.0} s) and was stopped: {deleted:.0} rows \
                 deleted ({tables}), {rate:.0} rows/s; {ended_left} sessions that ended more than a day ago are \
                 left (at that rate with their tokens, about {:.0} min more); the Refresh load ran for the first \
                 {:.1} s of it",
                ran_for.as_secs_f64(),
                2.0 * ended_left as f64 / rate.max(1e-9) / 60.0,
                load_for.as_secs_f64(),
            ));
        }
    }
    notes.push(format!(
        "cleanup: rows before → after the pass: {}",
        counts_before
            .iter()
            .zip(&counts_after)
            .map(|((t, b), (_, a))| format!("{t} {b} → {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for note in &notes {
        println!("{note}");
    }
    Outcome { errors, notes }
}

fn rename(mut rows: Vec<Row>, name: &str) -> Row {
    let mut row = rows.remove(0);
    row.name = name.to_owned();
    row
}

/// The latest pass of the clean-up, if any was recorded (none either when
/// the schema has no `maintenance_runs`).
async fn latest_pass(db: &mut sqlx::PgConnection) -> Option<PassRecord> {
    let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>, i64)> = sqlx::query_as(
        "SELECT started_at, finished_at, deleted FROM maintenance_runs WHERE task = 'cleanup'",
    )
    .fetch_optional(db)
    .await
    .unwrap_or_else(|e| {
        eprintln!("cleanup: reading maintenance_runs: {e}");
        None
    });
    row.map(|(started_at, finished_at, deleted)| PassRecord {
        started_at,
        finished_at,
        deleted,
    })
}

/// The pass's record now; a record of a later pass (which the interval
/// should rule out) is not taken for it.
async fn next_record(db: &mut sqlx::PgConnection, record: PassRecord) -> PassRecord {
    match latest_pass(db).await {
        Some(p) if p.started_at == record.started_at => p,
        Some(_) => {
            eprintln!("cleanup: a second pass started before the first was seen to finish");
            PassRecord {
                finished_at: Some(Utc::now()),
                ..record
            }
        }
        None => record,
    }
}

/// Sessions that ended more than a day ago (the clean-up's retention of
/// them), which a finished pass leaves none of.
async fn ended_sessions(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM sessions
          WHERE LEAST(COALESCE(revoked_at, 'infinity'), idle_expires_at, absolute_expires_at)
                < now() - interval '1 day'",
    )
    .fetch_one(db)
    .await
    .unwrap_or(-1)
}

/// Rows of the tables the pass deletes from.
async fn counts(db: &mut sqlx::PgConnection) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in [
        "sessions",
        "refresh_tokens",
        "login_throttle",
        "password_reset_tokens",
        "email_verification_tokens",
        "email_outbox",
        "revocation_events",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *db)
            .await
            .unwrap_or(-1);
        counts.push((table, n));
    }
    counts
}

/// Per table: rows deleted and batches, from the replica's `/metrics`.
async fn cleanup_metrics(addr: &str) -> Vec<(String, f64, f64)> {
    let text = match http_get(addr, "/metrics").await {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cleanup: reading {addr}/metrics failed: {e}");
            return Vec::new();
        }
    };
    let sample = |line: &str, series: &str| -> Option<(String, f64)> {
        let (name, rest) = line.split_once('{')?;
        if !name.ends_with(series) {
            return None;
        }
        let (labels, value) = rest.split_once('}')?;
        let table = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("table=\""))?
            .trim_end_matches('"')
            .to_owned();
        Some((table, value.split_whitespace().next()?.parse().ok()?))
    };
    let mut tables: Vec<(String, f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((table, rows)) = sample(line, "cleanup_deleted_rows_total") {
            tables.push((table, rows, 0.0));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((table, batches)) = sample(line, "cleanup_batches_total")
            && let Some(t) = tables.iter_mut().find(|t| t.0 == table)
        {
            t.2 = batches;
        }
    }
    tables.sort_by(|a, b| b.1.total_cmp(&a.1));
    tables
}

/// A bare HTTP/1.0 GET (no chunked body); the body.
async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, body)| body.to_owned()))
}
