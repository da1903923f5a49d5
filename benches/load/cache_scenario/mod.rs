//! The cache scenario: GetMe while authd's session cache holds many live
//! sessions, first alone and then with a stream of account changes that
//! evict entries, in the same run.
//!
//! 1. Empty the cache of whatever earlier scenarios put there (see
//!    `observe::empty_the_cache`), so the population fits its bound.
//! 2. Create the population (`population`): N accounts and sessions by SQL,
//!    an access token for each through Refresh.
//! 3. Warm the cache with one GetMe per session. A sample of probe sessions
//!    then shows how many the cache really holds (`observe::count_cached`).
//! 4. A second GetMe per session the load will use, so that the load meets
//!    a steady state (authd also remembers verified tokens, in a memory of
//!    its own with its own bound).
//! 5. Load: `--concurrency` tasks call GetMe round-robin over those sessions
//!    for `--duration`; then the same again while `changes::run` changes
//!    other accounts of the population `--cache-changes` times a second.
//!
//! Only the gRPC API and SQL are used, so the scenario measures any cache
//! that is kept honest by the `authd_user_changed` notifications.

mod changes;
mod observe;
pub mod population;

use std::sync::Arc;
use std::time::{Duration, Instant};

use authd::pb::auth::v1::auth_service_client::AuthServiceClient;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::transport::Channel;

use crate::client::{call_each, connect, get_me};
use crate::procfs::CpuWindow;
use crate::seeding::Shared;
use crate::stats::{Row, Stats};
use population::LiveSession;

pub struct Settings {
    pub sessions: usize,
    pub changes_per_sec: u32,
    pub duration: Duration,
    pub concurrency: usize,
}

/// Two table rows (without and with changes) and the lines that explain them.
pub struct Outcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

pub async fn run(
    addr: &str,
    db: &PgConnectOptions,
    shared: &Shared,
    settings: &Settings,
    server_pid: Option<u32>,
) -> Outcome {
    let setup_started = Instant::now();
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.clone())
        .await
        .unwrap_or_else(|e| panic!("cache scenario: connecting to authd's database failed: {e}"));
    // Checks and eviction tracking get a connection of their own, so they
    // do not queue behind the load's calls.
    let control = connect(addr, 1).await.remove(0);
    let mut control_client = AuthServiceClient::new(control.clone());
    let channels = &shared.channels;
    let n = settings.sessions;

    // Unique per run of the scenario, so `--scenarios cache,cache` works.
    let batch = format!(
        "{}-{}",
        shared.run_id,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let (mut sentinel, _) = population::create(
        &db,
        channels,
        &format!("cache-{batch}-sentinel"),
        population::NO_PASSWORD,
        1,
        1,
    )
    .await;
    let announced = observe::empty_the_cache(&db, &mut control_client, &sentinel.remove(0)).await;
    let emptied = setup_started.elapsed();

    let (sessions, timings) = population::create(
        &db,
        channels,
        &format!("cache-{batch}-pop"),
        population::NO_PASSWORD,
        n,
        settings.concurrency,
    )
    .await;
    let groups = Groups::split(sessions, settings);

    let t = Instant::now();
    let mut warm_order = groups.changing.clone();
    warm_order.push(groups.closing.clone());
    warm_order.extend(groups.probes.iter().cloned());
    warm_order.extend(groups.hot.iter().cloned());
    get_me_each(channels, &warm_order, settings.concurrency, "warm-up").await;
    drop(warm_order);
    let warm_up = t.elapsed();
    let cached = observe::count_cached(&db, &mut control_client, &groups.probes).await;
    let t = Instant::now();
    get_me_each(channels, &groups.hot, settings.concurrency, "second pass").await;
    let second_pass = t.elapsed();
    // The bulk insert and a Refresh per session wake autovacuum; better now
    // than during the measurement.
    let t = Instant::now();
    let vacuum = sqlx::query("VACUUM (ANALYZE) users, sessions, refresh_tokens")
        .execute(&db)
        .await
        .map_or_else(
            |e| format!("failed: {e}"),
            |_| format!("{:.1} s", t.elapsed().as_secs_f64()),
        );
    let setup = setup_started.elapsed();

    let hot = Arc::new(groups.hot);
    let quiet = get_me_load(channels, &hot, settings, server_pid, "cache".to_owned()).await;

    let deadline = Instant::now() + settings.duration;
    let stream = tokio::spawn(changes::run(
        db.clone(),
        control.clone(),
        groups.changing.clone(),
        groups.closing.clone(),
        settings.changes_per_sec,
        deadline,
    ));
    let name = format!("cache + {} changes/s", settings.changes_per_sec);
    let mut busy = get_me_load(channels, &hot, settings, server_pid, name).await;
    let stream = stream.await.expect("account change stream panicked");
    for (label, count) in &stream.errors {
        *busy.errors.entry(label.clone()).or_default() += count;
    }

    let secs = |d: Duration| d.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut notes = vec![
        format!(
            "cache: set up {n} sessions in {:.1} s: emptied the cache by announcing {announced} account(s) changed \
             ({:.1} s), inserted accounts and sessions with SQL ({:.1} s), one Refresh each for an access token \
             ({:.1} s), one GetMe each ({:.1} s), a second GetMe for each of the {} the load uses ({:.1} s), \
             VACUUM ANALYZE ({vacuum})",
            secs(setup),
            secs(emptied),
            secs(timings.sql),
            secs(timings.refresh),
            secs(warm_up),
            hot.len(),
            secs(second_pass),
        ),
        format!(
            "cache: {cached} of {} probe sessions were answered from the cache after their rows lapsed \
             (a sample of the {n}: what authd holds after one GetMe each)",
            groups.probes.len()
        ),
        format!(
            "cache: GetMe with {} account changes/s / without: {:.0} / {:.0} = {:.2}  (p50 {:.2} → {:.2} ms, \
             p99 {:.2} → {:.2} ms)",
            settings.changes_per_sec,
            busy.calls_per_sec,
            quiet.calls_per_sec,
            busy.calls_per_sec / quiet.calls_per_sec,
            quiet.p50_ms,
            busy.p50_ms,
            quiet.p99_ms,
            busy.p99_ms,
        ),
    ];
    let mut lags = stream.eviction_lags.clone();
    lags.sort_unstable();
    let lag_at = |p: f64| {
        lags.get(((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len().max(1)) - 1)
            .map_or_else(|| "n/a".to_owned(), |d| format!("{:.1} ms", ms(*d)))
    };
    notes.push(format!(
        "cache: {} account changes in {:.1} s ({:.0}/s, to {} distinct accounts); \
         eviction seen (commit → GetMe refused) for {} tracked changes: p50 {}, p90 {}, max {}; \
         for a change made once the stream stopped: {}",
        stream.changed,
        secs(stream.elapsed),
        stream.changed as f64 / secs(stream.elapsed),
        groups.changing.len().min(stream.changed),
        lags.len(),
        lag_at(0.5),
        lag_at(0.9),
        lag_at(1.0),
        stream
            .drain
            .map_or_else(|| "n/a".to_owned(), |d| format!("{:.1} ms", ms(d))),
    ));
    Outcome {
        rows: vec![quiet, busy],
        notes,
    }
}

/// What each session of the population is for.
struct Groups {
    /// Accounts the change stream changes: cached, never used by the load.
    changing: Vec<LiveSession>,
    /// Changed once after the stream, to see how far behind the cache is.
    closing: LiveSession,
    /// Let lapse to see whether the cache holds them; used for nothing else.
    probes: Vec<LiveSession>,
    /// The sessions the load calls GetMe for.
    hot: Vec<LiveSession>,
}

impl Groups {
    fn split(mut sessions: Vec<LiveSession>, settings: &Settings) -> Self {
        let n = sessions.len();
        // Enough that every change evicts a session (with a tenth to
        // spare), but never more than a tenth of the population.
        let wanted = f64::from(settings.changes_per_sec) * settings.duration.as_secs_f64() * 1.1;
        let changing = (wanted.ceil() as usize).clamp(1, n / 10);
        let probes = (n / 100).clamp(1, 1000);
        let mut rest = sessions.split_off(changing);
        let changing_sessions = sessions;
        let closing = rest.remove(0);
        let hot = rest.split_off(probes);
        Groups {
            changing: changing_sessions,
            closing,
            probes: rest,
            hot,
        }
    }
}

/// One GetMe per session; all must succeed, or there is nothing to measure.
async fn get_me_each(channels: &[Channel], sessions: &[LiveSession], concurrency: usize, step: &str) {
    let answers = call_each(
        channels,
        sessions,
        concurrency,
        |mut client, session| async move { get_me(&mut client, &session.authorization).await },
    )
    .await;
    let mut failed = Stats::default();
    for answer in answers {
        if let Err(label) = answer {
            failed.error(label);
        }
    }
    assert!(
        failed.errors.is_empty(),
        "cache scenario, {step}: GetMe failed: {:?}",
        failed.errors
    );
}

/// `concurrency` tasks calling GetMe for `duration`, each going round the
/// sessions `task`, `task + concurrency`, …, so no two share a session.
async fn get_me_load(
    channels: &[Channel],
    hot: &Arc<Vec<LiveSession>>,
    settings: &Settings,
    server_pid: Option<u32>,
    name: String,
) -> Row {
    let window = CpuWindow::open(server_pid);
    let started = window.started();
    let deadline = started + settings.duration;
    let mut handles = Vec::with_capacity(settings.concurrency);
    for task in 0..settings.concurrency {
        let hot = Arc::clone(hot);
        let mut client = AuthServiceClient::new(channels[task % channels.len()].clone());
        let stride = settings.concurrency;
        handles.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut next = task;
            while Instant::now() < deadline {
                if next >= hot.len() {
                    next = task % hot.len();
                }
                let session = &hot[next];
                next += stride;
                let t = Instant::now();
                let outcome = get_me(&mut client, &session.authorization).await;
                stats.record(t, outcome);
            }
            (stats, Instant::now())
        }));
    }
    let mut all = Stats::default();
    let mut finished = started;
    for handle in handles {
        let (stats, done) = handle.await.expect("cache load task panicked");
        all.merge(stats);
        finished = finished.max(done);
    }
    let mut row = Row::from_stats(name, all, finished - started);
    row.cpu = Some(window.close());
    row
}
