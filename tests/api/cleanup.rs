//! The clean-up: one replica at a time runs a pass, never at start-up, in
//! batches of at most `AUTHD_CLEANUP_BATCH_SIZE` rows, deleting exactly what
//! the retention rules say and nothing live.
//!
//! Each test seeds its own database with bulk SQL, rows past retention
//! interleaved on the same pages with rows that must stay, and counts both
//! kinds with the rules written out here (a "census"). Statement-level
//! triggers record every DELETE on `sessions` and `refresh_tokens`: how many
//! rows it took and which backend ran it, as PostgreSQL saw it.

use std::time::{Duration, Instant};

use authd::config::Config;
use authd::db::maintenance::CleanupTable;
use authd::jobs::cleanup::LOCK_KEY;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::helpers::*;
use crate::metrics::{scrape, value, with_metrics};

/// Every table the clean-up deletes from (in the order of
/// `CleanupTable::ALL`, which a census checks), with the rule, written out
/// here, that says which of its rows are past retention.
const TABLES: [(CleanupTable, &str); 10] = [
    (
        CleanupTable::Sessions,
        "FROM sessions s WHERE LEAST(COALESCE(s.revoked_at, 'infinity'), s.idle_expires_at, s.absolute_expires_at)
                                < now() - interval '1 day'",
    ),
    (
        CleanupTable::RefreshTokens,
        "FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
         WHERE LEAST(COALESCE(s.revoked_at, 'infinity'), s.idle_expires_at, s.absolute_expires_at)
               < now() - interval '1 day'",
    ),
    (
        CleanupTable::LoginThrottle,
        "FROM login_throttle WHERE last_failure_at < now() - interval '1 day'
                               AND (locked_until IS NULL OR locked_until < now() - interval '1 day')",
    ),
    (
        CleanupTable::ResetTokens,
        "FROM password_reset_tokens WHERE created_at < now() - interval '1 day'
                                      AND expires_at < now() - interval '1 day'",
    ),
    (
        CleanupTable::VerificationTokens,
        "FROM email_verification_tokens WHERE created_at < now() - interval '1 day'
                                          AND expires_at < now() - interval '1 day'",
    ),
    (
        CleanupTable::Outbox,
        "FROM email_outbox WHERE created_at < now() - interval '7 days'
                             AND (sent_at IS NOT NULL OR discarded_at IS NOT NULL)",
    ),
    (
        CleanupTable::RevocationEvents,
        "FROM revocation_events WHERE id <= (SELECT max(id) FROM revocation_events
                                             WHERE occurred_at < now() - interval '24 hours')",
    ),
    (
        CleanupTable::MfaChallenges,
        "FROM mfa_challenges WHERE expires_at < now()",
    ),
    (
        CleanupTable::PendingFactors,
        "FROM factors WHERE confirmed_at IS NULL AND expires_at < now()",
    ),
    (
        CleanupTable::WebauthnCeremonies,
        "FROM webauthn_ceremonies WHERE expires_at < now()",
    ),
];

/// Rows of one table: all of them, and those past retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rows {
    total: i64,
    doomed: i64,
}

/// Every cleaned table's rows, in the order of [`TABLES`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Census(Vec<(&'static str, Rows)>);

impl Census {
    async fn take(db: &PgPool) -> Self {
        assert_eq!(
            TABLES.map(|(table, _)| table),
            CleanupTable::ALL,
            "a table the clean-up deletes from has no rule here"
        );
        let mut tables = Vec::new();
        for (table, doomed) in TABLES {
            let table = table.name();
            let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(db)
                .await
                .unwrap();
            let doomed: i64 = sqlx::query_scalar(&format!("SELECT count(*) {doomed}"))
                .fetch_one(db)
                .await
                .unwrap();
            tables.push((table, Rows { total, doomed }));
        }
        Self(tables)
    }

    /// The census once everything past retention is gone.
    fn cleaned(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(table, rows)| {
                    (
                        *table,
                        Rows {
                            total: rows.total - rows.doomed,
                            doomed: 0,
                        },
                    )
                })
                .collect(),
        )
    }

    fn doomed(&self, table: &str) -> i64 {
        self.0
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, rows)| rows.doomed)
    }

    /// Every table has rows to delete and rows to keep.
    #[track_caller]
    fn assert_mixed(&self) {
        for (table, rows) in &self.0 {
            assert!(
                rows.doomed > 0 && rows.total > rows.doomed,
                "{table}: the seed must have rows to delete and rows to keep: {rows:?}"
            );
        }
    }
}

/// How much to seed; every table gets rows past retention interleaved with
/// rows to keep, of each kind the rules tell apart.
#[derive(Debug, Clone, Copy)]
struct Seed {
    sessions: i64,
    /// Throttle counters, reset and verification tokens, mails each.
    others: i64,
    /// Revocation events past retention, and within it.
    old_events: i64,
    recent_events: i64,
}

const SMALL: Seed = Seed {
    sessions: 800,
    others: 200,
    old_events: 150,
    recent_events: 20,
};

/// A migrated database with `seed` in it, and a pool on it.
async fn seeded(seed: Seed) -> (String, PgPool) {
    let url = fresh_database().await;
    let db = PgPool::connect(&url).await.unwrap();
    authd::db::migrate(&db).await.unwrap();
    let Seed {
        sessions,
        others,
        old_events,
        recent_events,
    } = seed;
    sqlx::raw_sql(&format!(
        "INSERT INTO users (id, email, password_hash, created_at, updated_at)
         SELECT md5('cleanup user ' || u)::uuid, 'cleanup' || u || '@example.com', 'not a hash', now(), now()
           FROM generate_series(1, 20) u;

         -- One kind in eight, on the same pages: live (0, 1), ended less
         -- than a day ago (2: revoked, 3: idle), ended more than a day ago
         -- (4: revoked, 5: idle, 6: absolute expiry, 7: revoked long ago).
         INSERT INTO sessions (id, user_id, created_at, last_used_at, idle_expires_at,
                               absolute_expires_at, revoked_at, revoked_reason)
         SELECT md5('cleanup session ' || i)::uuid, md5('cleanup user ' || (1 + i % 20))::uuid,
                now() - interval '40 days', now() - interval '1 hour',
                CASE i % 8 WHEN 1 THEN now() + interval '1 minute'
                           WHEN 3 THEN now() - interval '12 hours'
                           WHEN 5 THEN now() - interval '2 days'
                           ELSE now() + interval '5 days' END,
                CASE i % 8 WHEN 6 THEN now() - interval '3 days' ELSE now() + interval '20 days' END,
                CASE i % 8 WHEN 2 THEN now() - interval '1 hour'
                           WHEN 4 THEN now() - interval '2 days'
                           WHEN 7 THEN now() - interval '30 days' END,
                CASE WHEN i % 8 IN (2, 4, 7) THEN 'logout' END
           FROM generate_series(1, {sessions}) i;

         -- One to three tokens a session (the older consumed), and 150 for
         -- one session in 97: more than a batch.
         INSERT INTO refresh_tokens (token_hash, session_id, issued_at, consumed_at)
         SELECT sha256(convert_to('cleanup token ' || i || ' ' || k, 'UTF8')),
                md5('cleanup session ' || i)::uuid, now() - interval '3 days',
                CASE WHEN k > 1 THEN now() - interval '3 days' END
           FROM generate_series(1, {sessions}) i,
                generate_series(1, CASE WHEN i % 97 = 0 THEN 150 ELSE 1 + i % 3 END) k;

         -- Untouched for two days (0), also locked until then (1); locked
         -- until tomorrow (2); failed an hour ago (3).
         INSERT INTO login_throttle (key, failures, locked_until, last_failure_at)
         SELECT 'cleanup:' || i, 7,
                CASE i % 4 WHEN 1 THEN now() - interval '2 days' WHEN 2 THEN now() + interval '1 day' END,
                CASE i % 4 WHEN 3 THEN now() - interval '1 hour' ELSE now() - interval '2 days' END
           FROM generate_series(1, {others}) i;

         -- Issued two days ago and expired (0); issued two days ago and
         -- still valid (1); issued ten minutes ago (2).
         INSERT INTO password_reset_tokens (token_hash, user_id, created_at, expires_at)
         SELECT sha256(convert_to('cleanup reset ' || i, 'UTF8')), md5('cleanup user ' || (1 + i % 20))::uuid,
                CASE i % 3 WHEN 2 THEN now() - interval '10 minutes' ELSE now() - interval '2 days' END,
                CASE i % 3 WHEN 0 THEN now() - interval '2 days' + interval '30 minutes'
                           WHEN 1 THEN now() + interval '1 hour'
                           ELSE now() + interval '20 minutes' END
           FROM generate_series(1, {others}) i;
         INSERT INTO email_verification_tokens (token_hash, user_id, purpose, email, created_at, expires_at)
         SELECT sha256(convert_to('cleanup verify ' || i, 'UTF8')), md5('cleanup user ' || (1 + i % 20))::uuid,
                'verify', 'cleanup' || (1 + i % 20) || '@example.com',
                CASE i % 3 WHEN 2 THEN now() - interval '10 minutes' ELSE now() - interval '2 days' END,
                CASE i % 3 WHEN 0 THEN now() - interval '1 day' - interval '1 hour'
                           WHEN 1 THEN now() + interval '1 hour'
                           ELSE now() + interval '1 day' END
           FROM generate_series(1, {others}) i;

         -- Eight days old and sent (0) or discarded (1); eight days old and
         -- still pending, due tomorrow so the mail worker leaves it (2);
         -- sent two days ago (3).
         INSERT INTO email_outbox (id, kind, recipient, subject, body_text, body_html, created_at,
                                   expires_at, next_attempt_at, sent_at, discarded_at)
         SELECT md5('cleanup mail ' || i)::uuid, 'password_changed', 'cleanup@example.com', 'Password changed',
                CASE WHEN i % 4 = 2 THEN 'body' END, CASE WHEN i % 4 = 2 THEN '<p>body</p>' END,
                CASE WHEN i % 4 = 3 THEN now() - interval '2 days' ELSE now() - interval '8 days' END,
                now() + interval '2 days', now() + interval '1 day',
                CASE WHEN i % 4 = 0 THEN now() - interval '8 days'
                     WHEN i % 4 = 3 THEN now() - interval '2 days' END,
                CASE WHEN i % 4 = 1 THEN now() - interval '8 days' END
           FROM generate_series(1, {others}) i;

         -- Login challenges: expired an hour ago (0), used and expired (1),
         -- used and not expired yet (2), live (3).
         INSERT INTO mfa_challenges (token_hash, user_id, security_stamp, throttle_key, created_at,
                                     expires_at, consumed_at)
         SELECT sha256(convert_to('cleanup challenge ' || i, 'UTF8')), md5('cleanup user ' || (1 + i % 20))::uuid,
                0, 'cleanup:challenge', now() - interval '2 hours',
                CASE WHEN i % 4 < 2 THEN now() - interval '1 hour' ELSE now() + interval '1 hour' END,
                CASE WHEN i % 4 IN (1, 2) THEN now() - interval '90 minutes' END
           FROM generate_series(1, {others}) i;

         -- Factors: an enrollment never confirmed and expired (0), one not
         -- expired yet (1), confirmed (2), confirmed after an expiry that
         -- has passed since (3).
         INSERT INTO factors (id, user_id, kind, name, created_at, confirmed_at, expires_at,
                              secret_sealed, secret_key_id)
         SELECT md5('cleanup factor ' || i)::uuid, md5('cleanup user ' || (1 + i % 20))::uuid,
                'totp', 'phone ' || i, now() - interval '2 hours',
                CASE WHEN i % 4 >= 2 THEN now() - interval '110 minutes' END,
                CASE i % 4 WHEN 0 THEN now() - interval '1 hour' WHEN 1 THEN now() + interval '1 hour'
                           WHEN 3 THEN now() - interval '1 hour' END,
                '\\x00'::bytea, 'k1'
           FROM generate_series(1, {others}) i;

         -- Passkey ceremonies never finished, by i % 4: registrations (0, 1),
         -- logins for an account (2) and discoverable ones (3); by i % 8,
         -- expired a minute ago (0-3) or live for four more minutes (4-7).
         INSERT INTO webauthn_ceremonies (challenge, kind, user_id, named, name, state, created_at,
                                          expires_at)
         SELECT sha256(convert_to('cleanup ceremony ' || i, 'UTF8')),
                CASE WHEN i % 4 < 2 THEN 'registration' ELSE 'authentication' END,
                CASE WHEN i % 4 <> 3 THEN md5('cleanup user ' || (1 + i % 20))::uuid END, false,
                CASE WHEN i % 4 < 2 THEN 'key ' || i END, '{{}}'::jsonb,
                now() - interval '6 minutes' + (i % 8 / 4) * interval '5 minutes',
                now() - interval '1 minute' + (i % 8 / 4) * interval '5 minutes'
           FROM generate_series(1, {others}) i;

         SELECT authd_record_revocation('SESSION_ENDED', md5('cleanup user 1')::uuid,
                                        ARRAY[gen_random_uuid()], now())
           FROM generate_series(1, {old_events});
         SELECT authd_record_revocation('SESSION_ENDED', md5('cleanup user 2')::uuid,
                                        ARRAY[gen_random_uuid()], now())
           FROM generate_series(1, {recent_events});
         -- Numbered as a replica would right after the commit.
         SELECT authd_number_events(1000000);
         -- Events are timed by the database when numbered: aged here.
         UPDATE revocation_events
            SET occurred_at = occurred_at - CASE user_id WHEN md5('cleanup user 1')::uuid
                                                         THEN interval '25 hours'
                                                         ELSE interval '1 hour' END;

         -- Every DELETE on the two session tables, as PostgreSQL saw it
         -- (the cascade's empty per-session statements left out).
         CREATE TABLE cleanup_statements (
             tbl text, deleted bigint, backend int, app text, at timestamptz DEFAULT clock_timestamp());
         CREATE FUNCTION log_cleanup_statement() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO cleanup_statements (tbl, deleted, backend, app)
             SELECT TG_TABLE_NAME, count(*), pg_backend_pid(), current_setting('application_name')
               FROM gone
             HAVING TG_TABLE_NAME = 'sessions' OR count(*) > 0;
             RETURN NULL;
         END $$;
         CREATE TRIGGER sessions_statements AFTER DELETE ON sessions
             REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_cleanup_statement();
         CREATE TRIGGER refresh_tokens_statements AFTER DELETE ON refresh_tokens
             REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_cleanup_statement();
         ANALYZE;"
    ))
    .execute(&db)
    .await
    .unwrap();
    (url, db)
}

/// A replica whose clean-up runs every `interval` in batches of `batch`.
fn replica(interval: Duration, batch: u32) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        with_metrics(c);
        c.cleanup_interval = interval;
        c.cleanup_batch_size = batch;
    }
}

/// A sample of one replica's page, 0 when absent.
async fn sample(app: &TestApp, series: &str) -> f64 {
    value(&scrape(app, None).await.body, series).unwrap_or(0.0)
}

fn passes(outcome: &str) -> String {
    format!(r#"authd_cleanup_passes_total{{outcome="{outcome}"}}"#)
}

fn batches(table: &str) -> String {
    format!(r#"authd_cleanup_batches_total{{table="{table}"}}"#)
}

fn deleted(table: &str) -> String {
    format!(r#"authd_cleanup_deleted_rows_total{{table="{table}"}}"#)
}

/// Polls until the replicas together count at least `at_least` of `series`.
async fn wait_for(apps: &[&TestApp], series: &str, at_least: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut sum = 0.0;
        for app in apps {
            sum += sample(app, series).await;
        }
        if sum >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {sum} (expected {at_least}) for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the clean-up's lock on a connection of the test's own, waiting for
/// a running pass to let go of it: no pass runs while it is held.
async fn hold_the_lock(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// The recorded pass: (replica, finished, rows deleted).
async fn recorded_run(db: &PgPool) -> Option<(String, bool, i64)> {
    sqlx::query_as(
        "SELECT replica, finished_at IS NOT NULL, deleted FROM maintenance_runs WHERE task = 'cleanup'",
    )
    .fetch_optional(db)
    .await
    .unwrap()
}

/// The revocation log's counter and floor.
async fn revocation_log(db: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT last_event_id, pruned_through FROM revocation_log")
        .fetch_one(db)
        .await
        .unwrap()
}

/// The DELETE statements the triggers saw on `table`: (rows, backend, application_name).
async fn statements(db: &PgPool, table: &str) -> Vec<(i64, i32, String)> {
    sqlx::query_as("SELECT deleted, backend, app FROM cleanup_statements WHERE tbl = $1 ORDER BY at")
        .bind(table)
        .fetch_all(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_replicas_started_together_run_each_pass_on_one_of_them_and_keep_what_is_live() {
    const BATCH: u32 = 100;
    let (url, db) = seeded(Seed {
        sessions: 4000,
        ..SMALL
    })
    .await;
    let before = Census::take(&db).await;
    before.assert_mixed();
    let (last_event, floor) = revocation_log(&db).await;
    let horizon = floor + SMALL.old_events;
    assert_eq!(last_event, horizon + SMALL.recent_events);

    let (a, b) = tokio::join!(
        spawn_app_on(&url, replica(Duration::from_secs(4), BATCH)),
        spawn_app_on(&url, replica(Duration::from_secs(4), BATCH)),
    );
    wait_for(&[&a, &b], &passes("ran"), 1.0, Duration::from_secs(120)).await;
    // No other pass starts from here on (the next is not due for an
    // interval anyway), so both pages are final.
    let _frozen = hold_the_lock(&url).await;
    let (runner, idle) = if sample(&a, &passes("ran")).await == 1.0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(sample(runner, &passes("ran")).await, 1.0);
    assert_eq!(
        sample(idle, &passes("ran")).await,
        0.0,
        "both replicas ran a pass"
    );
    let mut all_deleted = 0.0;
    for table in CleanupTable::ALL.map(CleanupTable::name) {
        assert_eq!(
            sample(idle, &batches(table)).await,
            0.0,
            "{table}: a batch on the idle replica"
        );
        assert_eq!(sample(idle, &deleted(table)).await, 0.0, "{table}");
        assert!(sample(runner, &batches(table)).await >= 1.0, "{table}");
        let rows = sample(runner, &deleted(table)).await;
        assert_eq!(
            rows,
            before.doomed(table) as f64,
            "{table}: rows the runner deleted"
        );
        all_deleted += rows;
    }
    assert_eq!(
        sample(idle, "authd_cleanup_pass_running").await,
        0.0,
        "the idle replica's clean-up is on"
    );
    assert!(sample(runner, "authd_cleanup_last_pass_duration_seconds").await > 0.0);

    let (replica_name, finished, recorded) = recorded_run(&db).await.expect("the pass is recorded");
    assert!(finished);
    assert!(
        replica_name.ends_with(&format!("/{}", runner.addr)),
        "{replica_name} is not {}",
        runner.addr
    );
    assert_eq!(recorded as f64, all_deleted);

    // PostgreSQL saw every session batch come from one connection: the
    // runner's clean-up connection, which says so in its name.
    let session_batches = statements(&db, "sessions").await;
    assert_eq!(
        session_batches.len() as f64,
        sample(runner, &batches("sessions")).await
    );
    let (_, backend, app) = &session_batches[0];
    assert!(
        format!("authd clean-up {replica_name}").starts_with(app.as_str()) && app.len() > 20,
        "{app}"
    );
    for (rows, other_backend, _) in &session_batches {
        assert_eq!(other_backend, backend, "a pass ran on two connections");
        assert!(*rows <= i64::from(BATCH), "a batch deleted {rows} sessions");
    }
    for (rows, other_backend, _) in statements(&db, "refresh_tokens").await {
        assert_eq!(other_backend, *backend, "a pass ran on two connections");
        assert!(rows <= i64::from(BATCH), "a batch deleted {rows} refresh tokens");
    }

    // Exactly the rows past retention are gone.
    assert_eq!(Census::take(&db).await, before.cleaned());
    // The events left are the tail after the new floor, the counter as it was.
    let (last_after, floor_after) = revocation_log(&db).await;
    assert_eq!((last_after, floor_after), (last_event, horizon));
    let (first, count): (Option<i64>, i64) =
        sqlx::query_as("SELECT min(id), count(*) FROM revocation_events")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(first, Some(horizon + 1));
    assert_eq!(count, last_event - horizon);
}

/// A new or quiet database has no revocation event past retention: there
/// is nothing to prune, and the pass still counts as run, not failed.
#[tokio::test]
async fn a_pass_with_no_revocation_event_past_retention_is_not_a_failure() {
    let app = spawn_app_with(replica(Duration::from_secs(1), 100)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failed = sample(&app, &passes("error")).await;
        assert_eq!(failed, 0.0, "a clean-up pass failed");
        if sample(&app, &passes("ran")).await >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no clean-up pass ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, finished, deleted) = recorded_run(&app.db).await.unwrap();
    assert!(finished);
    assert_eq!(deleted, 0);
}

#[tokio::test]
async fn no_pass_runs_at_start_up() {
    let (url, db) = seeded(SMALL).await;
    let before = Census::take(&db).await;
    // The default interval (10 minutes).
    let app = spawn_app_on(&url, with_metrics).await;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let page = scrape(&app, None).await.body;
        assert_eq!(value(&page, "authd_cleanup_pass_running"), Some(0.0), "{page}");
        for outcome in ["ran", "busy", "recent", "error", "stopped"] {
            assert_eq!(value(&page, &passes(outcome)), Some(0.0), "{outcome}");
        }
        for table in CleanupTable::ALL.map(CleanupTable::name) {
            assert_eq!(value(&page, &batches(table)), Some(0.0), "{table}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(Census::take(&db).await, before);
    assert_eq!(recorded_run(&db).await, None);
    assert!(statements(&db, "sessions").await.is_empty());
}

#[tokio::test]
async fn batches_never_delete_more_than_the_batch_size() {
    const BATCH: u32 = 50;
    let (url, db) = seeded(Seed {
        sessions: 3000,
        ..SMALL
    })
    .await;
    let before = Census::take(&db).await;
    before.assert_mixed();
    let app = spawn_app_on(&url, replica(Duration::from_secs(1), BATCH)).await;
    wait_for(&[&app], &passes("ran"), 1.0, Duration::from_secs(120)).await;
    let _frozen = hold_the_lock(&url).await;
    assert_eq!(Census::take(&db).await, before.cleaned());

    let limit = i64::from(BATCH);
    for table in ["sessions", "refresh_tokens"] {
        let seen = statements(&db, table).await;
        let largest = seen.iter().map(|(rows, _, _)| *rows).max().unwrap_or(0);
        assert!(largest <= limit, "{table}: a batch deleted {largest} rows");
        if table == "refresh_tokens" {
            // A session with 150 tokens fills a batch, and another after it.
            assert_eq!(largest, limit, "{table}: no batch was full");
        }
        let rows: i64 = seen.iter().map(|(rows, _, _)| rows).sum();
        assert_eq!(rows, before.doomed(table), "{table}");
        let needed = batches_for(before.doomed(table), limit);
        let non_empty = seen.iter().filter(|(rows, _, _)| *rows > 0).count() as i64;
        assert!(
            non_empty >= needed,
            "{table}: {non_empty} batches for {rows} rows"
        );
    }
    for table in CleanupTable::ALL.map(CleanupTable::name) {
        let doomed = before.doomed(table);
        assert_eq!(sample(&app, &deleted(table)).await, doomed as f64, "{table}");
        let counted = sample(&app, &batches(table)).await;
        assert!(
            counted >= batches_for(doomed, limit) as f64,
            "{table}: {doomed} rows in {counted} batches"
        );
    }
}

#[tokio::test]
async fn expired_login_challenges_and_unconfirmed_enrollments_go_in_batches_and_live_ones_stay() {
    const BATCH: u32 = 7;
    let (url, db) = seeded(SMALL).await;
    sqlx::raw_sql(
        "CREATE TRIGGER mfa_challenges_statements AFTER DELETE ON mfa_challenges
             REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_cleanup_statement();
         CREATE TRIGGER factors_statements AFTER DELETE ON factors
             REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_cleanup_statement();
         CREATE TRIGGER webauthn_ceremonies_statements AFTER DELETE ON webauthn_ceremonies
             REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_cleanup_statement();",
    )
    .execute(&db)
    .await
    .unwrap();
    let before = Census::take(&db).await;
    let challenges = CleanupTable::MfaChallenges.name();
    let factors = CleanupTable::PendingFactors.name();
    let ceremonies = CleanupTable::WebauthnCeremonies.name();
    // A quarter of each kind (SMALL.others rows): two kinds of challenge
    // and one kind of factor are past their expiry; half the passkey
    // ceremonies, of every kind.
    let quarter = SMALL.others / 4;
    assert_eq!(before.doomed(challenges), 2 * quarter);
    assert_eq!(before.doomed(factors), quarter);
    assert_eq!(before.doomed(ceremonies), 2 * quarter);

    let app = spawn_app_on(&url, replica(Duration::from_secs(1), BATCH)).await;
    wait_for(&[&app], &passes("ran"), 1.0, Duration::from_secs(120)).await;
    let _frozen = hold_the_lock(&url).await;
    assert_eq!(Census::take(&db).await, before.cleaned());

    // What stays: challenges not expired, used or not; enrollments not
    // expired; every confirmed factor, whatever its old expiry says.
    let challenges_left: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE consumed_at IS NULL), count(*) FILTER (WHERE consumed_at IS NOT NULL)
           FROM mfa_challenges WHERE expires_at > now()",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(challenges_left, (quarter, quarter));
    let factors_left: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE confirmed_at IS NULL AND expires_at > now()),
                count(*) FILTER (WHERE confirmed_at IS NOT NULL),
                count(*)
           FROM factors",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(factors_left, (quarter, 2 * quarter, 3 * quarter));
    // Ceremonies not expired stay, of every kind.
    let ceremonies_left: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'registration'),
                count(*) FILTER (WHERE kind = 'authentication' AND user_id IS NULL),
                count(*) FILTER (WHERE expires_at > now())
           FROM webauthn_ceremonies",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(ceremonies_left, (quarter, quarter / 2, 2 * quarter));

    let limit = i64::from(BATCH);
    for table in [challenges, factors, ceremonies] {
        let seen = statements(&db, table).await;
        let largest = seen.iter().map(|(rows, _, _)| *rows).max().unwrap_or(0);
        assert_eq!(
            largest, limit,
            "{table}: batches of at most {limit}, and a full one"
        );
        let rows: i64 = seen.iter().map(|(rows, _, _)| rows).sum();
        assert_eq!(rows, before.doomed(table), "{table}");
        assert_eq!(sample(&app, &deleted(table)).await, rows as f64, "{table}");
        assert!(
            sample(&app, &batches(table)).await >= batches_for(rows, limit) as f64,
            "{table}"
        );
    }
}

/// Batches of at most `limit` rows it takes to delete `rows`.
fn batches_for(rows: i64, limit: i64) -> i64 {
    (rows + limit - 1) / limit
}

#[tokio::test]
async fn a_replica_that_cannot_get_the_lock_skips_until_its_holder_is_gone() {
    let (url, db) = seeded(SMALL).await;
    let before = Census::take(&db).await;
    // Another replica's pass, as far as this one can tell.
    let mut holder = hold_the_lock(&url).await;
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();

    let app = spawn_app_on(&url, replica(Duration::from_secs(1), 100)).await;
    wait_for(&[&app], &passes("busy"), 2.0, Duration::from_secs(60)).await;
    assert_eq!(sample(&app, &passes("ran")).await, 0.0);
    assert_eq!(Census::take(&db).await, before, "deleted without the lock");
    assert_eq!(recorded_run(&db).await, None);

    // The holder dies (a replica killed mid-pass): its session ends, and
    // the lock with it.
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holder_pid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(killed);
    wait_for(&[&app], &passes("ran"), 1.0, Duration::from_secs(60)).await;
    assert_eq!(Census::take(&db).await, before.cleaned());
    let (name, finished, _) = recorded_run(&db).await.unwrap();
    assert!(finished && name.ends_with(&format!("/{}", app.addr)), "{name}");
}

#[tokio::test]
async fn no_pass_runs_while_other_replicas_keep_finishing_them() {
    let (url, db) = seeded(SMALL).await;
    let before = Census::take(&db).await;
    sqlx::query(
        "INSERT INTO maintenance_runs (task, started_at, finished_at, replica, deleted)
         VALUES ('cleanup', now(), now(), 'elsewhere/1/10.0.0.1:50051', 0)",
    )
    .execute(&db)
    .await
    .unwrap();
    // Other replicas finish a pass every 200 ms, far more often than the
    // interval of 2 s.
    let (stop_others, mut others_stopped) = tokio::sync::watch::channel(false);
    let others = tokio::spawn({
        let db = db.clone();
        async move {
            loop {
                sqlx::query("UPDATE maintenance_runs SET started_at = now(), finished_at = now()")
                    .execute(&db)
                    .await
                    .unwrap();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = others_stopped.wait_for(|s| *s) => return,
                }
            }
        }
    });

    let app = spawn_app_on(&url, replica(Duration::from_secs(2), 100)).await;
    wait_for(&[&app], &passes("recent"), 2.0, Duration::from_secs(60)).await;
    assert_eq!(sample(&app, &passes("ran")).await, 0.0);
    assert_eq!(Census::take(&db).await, before);

    // The others stop: a pass is due an interval after their last one.
    stop_others.send(true).unwrap();
    others.await.unwrap();
    wait_for(&[&app], &passes("ran"), 1.0, Duration::from_secs(60)).await;
    assert_eq!(Census::take(&db).await, before.cleaned());
    let (name, finished, _) = recorded_run(&db).await.unwrap();
    assert!(finished && name.ends_with(&format!("/{}", app.addr)), "{name}");
}

#[tokio::test]
async fn shutdown_ends_a_pass_between_batches_and_the_next_replica_runs_one() {
    // Batches of five: the pass takes thousands of them.
    let (url, db) = seeded(Seed {
        sessions: 8000,
        ..SMALL
    })
    .await;
    let before = Census::take(&db).await;
    let app = spawn_app_on(&url, |c| {
        replica(Duration::from_secs(1), 5)(c);
        // A clean-up that ignored the shutdown would hold the exit this long.
        c.shutdown_drain = Duration::from_secs(60);
    })
    .await;
    wait_for(&[&app], &batches("refresh_tokens"), 1.0, Duration::from_secs(60)).await;
    assert_eq!(sample(&app, "authd_cleanup_pass_running").await, 1.0);

    let stopping = Instant::now();
    app.stop().await.unwrap();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    let after_stop = Census::take(&db).await;
    assert!(
        after_stop.doomed("sessions") > 0,
        "the pass ran to its end: {after_stop:?}"
    );
    // Nothing is deleted any more, the lock and the connection are gone,
    // and the pass is not recorded as finished.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(Census::take(&db).await, after_stop);
    let clean_ups: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'authd clean-up%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(clean_ups, 0);
    let mut probe = PgConnection::connect(&url).await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut probe)
        .await
        .unwrap();
    assert!(free, "the stopped pass kept the lock");
    probe.close().await.unwrap();
    let (_, finished, _) = recorded_run(&db).await.unwrap();
    assert!(!finished, "an interrupted pass was recorded as finished");

    // An interrupted pass is not a recent one: the next replica runs one
    // at its first attempt.
    let next = spawn_app_on(&url, replica(Duration::from_secs(1), 1000)).await;
    wait_for(&[&next], &passes("ran"), 1.0, Duration::from_secs(60)).await;
    assert_eq!(sample(&next, &passes("recent")).await, 0.0);
    assert_eq!(Census::take(&db).await, before.cleaned());
}
