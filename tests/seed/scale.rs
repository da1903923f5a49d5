//! A database the size of a busy deployment, written with bulk SQL in
//! minutes rather than through the API in days: the load generator's scale
//! scenario, the query-plan check and the migration check all seed with it.
//!
//! Per `accounts` it writes five sessions (nine in ten ended, most of them
//! more than a day ago), their refresh tokens (a consumed one besides the
//! current one for live sessions), and the backlog a day of traffic leaves:
//! reset and verification tokens, throttle counters, sent mail,
//! revocation events, second factors (TOTP apps and passkeys), login challenges and
//! passkey ceremonies. Every seeded account has the same password hash (the
//! caller's), so any of them can log in.
//!
//! Each table's columns are given with the value to write, and only the
//! columns the table has are written: the migration check seeds a schema
//! as it was before a later migration, when some columns did not exist yet.
//! Rows are derived from their number alone (ids are `md5` of a label and the
//! number), so related rows find each other without joins.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};

/// How much to write; everything else is proportionate to the accounts.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub accounts: i64,
}

impl Scale {
    pub const fn accounts(accounts: i64) -> Self {
        Self { accounts }
    }

    pub const fn sessions(&self) -> i64 {
        self.accounts * 5
    }
}

/// A seeded account's login, for callers that want to use one.
pub fn seeded_email(n: i64) -> String {
    format!("seed{n}@scale.example")
}

/// What was written, table by table.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub rows: Vec<(&'static str, u64)>,
    pub elapsed: Duration,
}

impl SeedReport {
    pub fn total_rows(&self) -> u64 {
        self.rows.iter().map(|(_, n)| n).sum()
    }
}

/// One bulk insert: `rows` rows numbered `i` = 1..=rows, each column's value
/// an SQL expression of `i`, `accounts` (the account count) and `hash`.
struct Batch {
    table: &'static str,
    /// The table whose rows these go with: the migration check seeds the
    /// batch once that table exists and while it is empty. A passkey's
    /// factor row goes with the passkeys (an older schema's factors would
    /// refuse its kind), not with the factors seeded long before.
    with: Option<&'static str>,
    rows: fn(&Scale) -> i64,
    columns: &'static [(&'static str, &'static str)],
}

// Timestamps are spread by the row number so that they are deterministic
// yet varied; `now()` is the start of the seeding transaction.
const USER_ID: &str = "md5('user' || (1 + i % accounts))::uuid";
/// The account of passkey `i`: one in ten, none of those with a TOTP factor.
const PASSKEY_USER_ID: &str = "md5('user' || (1 + (i * 10 + 3) % accounts))::uuid";

const BATCHES: &[Batch] = &[
    Batch {
        table: "users",
        with: None,
        rows: |s| s.accounts,
        columns: &[
            ("id", "md5('user' || i)::uuid"),
            ("email", "'seed' || i || '@scale.example'"),
            ("username", "CASE WHEN i % 2 = 0 THEN 'seed_' || i END"),
            ("full_name", "'Seeded User ' || i"),
            ("password_hash", "hash"),
            ("email_verified", "i % 5 <> 0"),
            (
                "created_at",
                "now() - (i % 365) * interval '1 day' - (i % 86400) * interval '1 second'",
            ),
            (
                "updated_at",
                "now() - (i % 365) * interval '1 day' - (i % 86400) * interval '1 second'",
            ),
            (
                "disabled_at",
                "CASE WHEN i % 1000 = 0 THEN now() - interval '3 days' END",
            ),
        ],
    },
    // Sessions by `i % 10`: 0 live, 1-5 revoked, 6-9 expired (idle).
    Batch {
        table: "sessions",
        with: None,
        rows: Scale::sessions,
        columns: &[
            ("id", "md5('session' || i)::uuid"),
            ("user_id", USER_ID),
            (
                "created_at",
                "CASE WHEN i % 10 = 0 THEN now() - (i % 20) * interval '1 day'
                      WHEN i % 10 <= 5 THEN now() - (2 + i % 60) * interval '1 day'
                      ELSE now() - (40 + i % 30) * interval '1 day' END",
            ),
            (
                "last_used_at",
                "CASE WHEN i % 10 = 0 THEN now() - (i % 3600) * interval '1 second'
                      WHEN i % 10 <= 5 THEN now() - (2 + i % 60) * interval '1 day'
                      ELSE now() - (40 + i % 30) * interval '1 day' END",
            ),
            (
                "idle_expires_at",
                "CASE WHEN i % 10 = 0 THEN now() + interval '6 days'
                      WHEN i % 10 <= 5 THEN now() - (2 + i % 60) * interval '1 day' + interval '7 days'
                      ELSE now() - (33 + i % 30) * interval '1 day' END",
            ),
            (
                "absolute_expires_at",
                "CASE WHEN i % 10 = 0 THEN now() - (i % 20) * interval '1 day' + interval '30 days'
                      WHEN i % 10 <= 5 THEN now() - (2 + i % 60) * interval '1 day' + interval '30 days'
                      ELSE now() - (10 + i % 30) * interval '1 day' END",
            ),
            (
                "revoked_at",
                "CASE WHEN i % 10 BETWEEN 1 AND 5
                      THEN now() - (2 + i % 60) * interval '1 day' + interval '1 hour' END",
            ),
            (
                "revoked_reason",
                "CASE WHEN i % 10 BETWEEN 1 AND 5 THEN 'logout' END",
            ),
            (
                "user_agent",
                "'Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0'",
            ),
            ("ip_address", "'192.0.2.' || (i % 250)"),
        ],
    },
    // Each session's latest token: unconsumed for live sessions.
    Batch {
        table: "refresh_tokens",
        with: None,
        rows: Scale::sessions,
        columns: &[
            ("token_hash", "sha256(('refresh' || i)::bytea)"),
            ("session_id", "md5('session' || i)::uuid"),
            ("issued_at", "now() - (2 + i % 60) * interval '1 day'"),
            (
                "consumed_at",
                "CASE WHEN i % 10 <> 0 THEN now() - (2 + i % 60) * interval '1 day' + interval '1 hour' END",
            ),
        ],
    },
    // The token each live session rotated away from (session number 10·i).
    Batch {
        table: "refresh_tokens",
        with: None,
        rows: |s| s.accounts / 2,
        columns: &[
            ("token_hash", "sha256(('rotated' || i)::bytea)"),
            ("session_id", "md5('session' || (10 * i))::uuid"),
            ("issued_at", "now() - interval '20 days'"),
            ("consumed_at", "now() - interval '19 days'"),
        ],
    },
    Batch {
        table: "password_reset_tokens",
        with: None,
        rows: |s| s.accounts / 20,
        columns: &[
            ("token_hash", "sha256(('reset' || i)::bytea)"),
            ("user_id", "md5('user' || (1 + (i * 20) % accounts))::uuid"),
            ("created_at", "now() - (i % 172800) * interval '1 second'"),
            (
                "expires_at",
                "now() - (i % 172800) * interval '1 second' + interval '1 hour'",
            ),
            (
                "consumed_at",
                "CASE WHEN i % 3 = 0 THEN now() - (i % 172800) * interval '1 second' + interval '10 minutes' END",
            ),
            (
                "superseded_at",
                "CASE WHEN i % 3 = 1 THEN now() - (i % 172800) * interval '1 second' + interval '5 minutes' END",
            ),
        ],
    },
    Batch {
        table: "email_verification_tokens",
        with: None,
        rows: |s| s.accounts / 5,
        columns: &[
            ("token_hash", "sha256(('verify' || i)::bytea)"),
            ("user_id", "md5('user' || (1 + (i * 5) % accounts))::uuid"),
            ("purpose", "'verify'"),
            ("email", "'seed' || (1 + (i * 5) % accounts) || '@scale.example'"),
            ("created_at", "now() - (i % 172800) * interval '1 second'"),
            (
                "expires_at",
                "now() - (i % 172800) * interval '1 second' + interval '1 day'",
            ),
            (
                "consumed_at",
                "CASE WHEN i % 2 = 0 THEN now() - (i % 172800) * interval '1 second' + interval '2 minutes' END",
            ),
        ],
    },
    // Half of them an account's, half a login string that names none; half
    // untouched for more than a day.
    Batch {
        table: "login_throttle",
        with: None,
        rows: |s| s.accounts / 10,
        columns: &[
            (
                "key",
                "CASE WHEN i % 2 = 0 THEN 'user:' || md5('user' || (1 + (i * 10) % accounts))::uuid
                      ELSE 'login:' || encode(sha256(('missing' || i)::bytea), 'hex') END",
            ),
            ("failures", "1 + i % 5"),
            ("last_failure_at", "now() - (i % 172800) * interval '1 second'"),
        ],
    },
    // A week and a half of sent mail (bodies are gone once sent).
    Batch {
        table: "email_outbox",
        with: None,
        rows: |s| s.accounts * 3 / 10,
        columns: &[
            ("id", "md5('mail' || i)::uuid"),
            ("kind", "'password_changed'"),
            ("recipient", "'seed' || (1 + i % accounts) || '@scale.example'"),
            ("subject", "'Your password was changed'"),
            ("created_at", "now() - (i % 864000) * interval '1 second'"),
            (
                "expires_at",
                "now() - (i % 864000) * interval '1 second' + interval '1 day'",
            ),
            ("attempts", "1"),
            ("next_attempt_at", "now() - (i % 864000) * interval '1 second'"),
            (
                "sent_at",
                "now() - (i % 864000) * interval '1 second' + interval '1 second'",
            ),
            ("user_id", USER_ID),
        ],
    },
    // One account in five has a TOTP factor; one enrollment in five was
    // never confirmed and is past its ten minutes, or nearly.
    Batch {
        table: "factors",
        with: None,
        rows: |s| s.accounts / 5,
        columns: &[
            ("id", "md5('factor' || i)::uuid"),
            ("user_id", "md5('user' || (1 + (i * 5) % accounts))::uuid"),
            ("kind", "'totp'"),
            ("name", "'phone'"),
            ("created_at", "now() - (i % 864000) * interval '1 second'"),
            (
                "confirmed_at",
                "CASE WHEN i % 5 <> 0 THEN now() - (i % 864000) * interval '1 second' + interval '1 minute' END",
            ),
            (
                "expires_at",
                "CASE WHEN i % 5 = 0 THEN now() - (i % 864000) * interval '1 second' + interval '10 minutes' END",
            ),
            ("secret_sealed", "sha256(('factor secret' || i)::bytea)"),
            ("secret_key_id", "'seed'"),
        ],
    },
    // One account in ten has a passkey (accounts 4, 14, 24…: none of them
    // has a TOTP factor); its factor row, then what verifies it.
    Batch {
        table: "factors",
        with: Some("passkeys"),
        rows: |s| s.accounts / 10,
        columns: &[
            ("id", "md5('passkey factor' || i)::uuid"),
            ("user_id", PASSKEY_USER_ID),
            ("kind", "'passkey'"),
            ("name", "'Passkey'"),
            ("created_at", "now() - (i % 864000) * interval '1 second'"),
            ("confirmed_at", "now() - (i % 864000) * interval '1 second'"),
            (
                "last_used_at",
                "CASE WHEN i % 3 <> 0 THEN now() - (i % 86400) * interval '1 second' END",
            ),
        ],
    },
    Batch {
        table: "passkeys",
        with: None,
        rows: |s| s.accounts / 10,
        columns: &[
            ("factor_id", "md5('passkey factor' || i)::uuid"),
            ("user_id", PASSKEY_USER_ID),
            ("credential_id", "sha256(('passkey' || i)::bytea)"),
            // Nothing signs with a seeded passkey: no key is needed.
            ("credential", "jsonb_build_object('seed', i)"),
            ("sign_count", "i % 1000"),
            ("backup_eligible", "i % 2 = 0"),
            ("backed_up", "i % 4 = 0"),
        ],
    },
    // A day of passkey ceremonies never finished (a finished one is gone):
    // registrations, discoverable logins and named ones, five minutes each.
    Batch {
        table: "webauthn_ceremonies",
        with: None,
        rows: |s| s.accounts / 5,
        columns: &[
            ("challenge", "sha256(('ceremony' || i)::bytea)"),
            (
                "kind",
                "CASE WHEN i % 3 = 0 THEN 'registration' ELSE 'authentication' END",
            ),
            (
                "user_id",
                "CASE WHEN i % 3 <> 1 THEN md5('user' || (1 + i % accounts))::uuid END",
            ),
            ("named", "i % 3 = 2"),
            ("name", "CASE WHEN i % 3 = 0 THEN 'Passkey' END"),
            ("state", "jsonb_build_object('seed', i)"),
            ("created_at", "now() - (i % 86400) * interval '1 second'"),
            (
                "expires_at",
                "now() - (i % 86400) * interval '1 second' + interval '5 minutes'",
            ),
        ],
    },
    // A day of login challenges (five minutes each; one in three used).
    Batch {
        table: "mfa_challenges",
        with: None,
        rows: |s| s.accounts / 5,
        columns: &[
            ("token_hash", "sha256(('challenge' || i)::bytea)"),
            ("user_id", "md5('user' || (1 + (i * 5) % accounts))::uuid"),
            ("security_stamp", "0"),
            (
                "throttle_key",
                "'user:' || md5('user' || (1 + (i * 5) % accounts))::uuid",
            ),
            ("created_at", "now() - (i % 86400) * interval '1 second'"),
            (
                "expires_at",
                "now() - (i % 86400) * interval '1 second' + interval '5 minutes'",
            ),
            (
                "consumed_at",
                "CASE WHEN i % 3 = 0 THEN now() - (i % 86400) * interval '1 second' + interval '30 seconds' END",
            ),
        ],
    },
];

/// Writes the seed into an empty, migrated database and analyzes it.
pub async fn seed(db: &mut PgConnection, scale: Scale, password_hash: &str) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    prepare(db).await?;
    let mut report = SeedReport::default();
    for batch in BATCHES {
        if let Some(n) = insert(db, batch, scale, password_hash).await? {
            report.rows.push((batch.table, n));
        }
    }
    if let Some(n) = seed_revocation_events(db, scale).await? {
        report.rows.push(("revocation_events", n));
    }
    finish(db).await?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Seeds only the tables listed, if they exist and are still empty: the
/// migration check tops up the tables a migration created.
pub async fn seed_empty_tables(
    db: &mut PgConnection,
    scale: Scale,
    password_hash: &str,
) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    prepare(db).await?;
    let mut report = SeedReport::default();
    let mut seeded_now: Vec<&str> = Vec::new();
    for batch in BATCHES {
        // A table with two batches: the second follows the first.
        let decides = batch.with.unwrap_or(batch.table);
        let empty = seeded_now.contains(&decides) || is_empty(db, decides).await?;
        if !empty {
            continue;
        }
        if let Some(n) = insert(db, batch, scale, password_hash).await? {
            seeded_now.push(decides);
            report.rows.push((batch.table, n));
        }
    }
    if is_empty(db, "revocation_events").await?
        && let Some(n) = seed_revocation_events(db, scale).await?
    {
        report.rows.push(("revocation_events", n));
    }
    finish(db).await?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The tables the seed fills (the "big" ones, for checks on plans and locks).
pub fn seeded_tables() -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = Vec::new();
    for table in BATCHES.iter().map(|b| b.table).chain(["revocation_events"]) {
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    tables
}

async fn prepare(db: &mut PgConnection) -> anyhow::Result<()> {
    // A lost seed is simply rerun: no need to wait for each commit's flush.
    sqlx::raw_sql("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'")
        .execute(&mut *db)
        .await?;
    Ok(())
}

async fn finish(db: &mut PgConnection) -> anyhow::Result<()> {
    // Statistics for the planner, and the visibility map for index-only scans.
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(&mut *db).await?;
    Ok(())
}

async fn is_empty(db: &mut PgConnection, table: &str) -> anyhow::Result<bool> {
    if !table_exists(db, table).await? {
        return Ok(false);
    }
    let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
        .fetch_one(&mut *db)
        .await?;
    Ok(!any)
}

async fn table_exists(db: &mut PgConnection, table: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("public.{table}"))
            .fetch_one(&mut *db)
            .await?,
    )
}

/// The batch's insert, with the columns the table has; None when the table
/// does not exist (yet).
async fn insert(
    db: &mut PgConnection,
    batch: &Batch,
    scale: Scale,
    password_hash: &str,
) -> anyhow::Result<Option<u64>> {
    if !table_exists(db, batch.table).await? {
        return Ok(None);
    }
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name = $1",
    )
    .bind(batch.table)
    .fetch_all(&mut *db)
    .await?;
    let (names, values): (Vec<&str>, Vec<&str>) = batch
        .columns
        .iter()
        .filter(|(column, _)| present.iter().any(|p| p == column))
        .map(|(column, value)| (*column, *value))
        .unzip();
    let sql = format!(
        "INSERT INTO {table} ({names})
         SELECT {values}
           FROM (SELECT $1::bigint AS rows, $2::bigint AS accounts, $3::text AS hash) AS p,
                generate_series(1, p.rows) AS g(i)",
        table = batch.table,
        names = names.join(", "),
        values = values.join(", "),
    );
    let mut tx = db.begin().await?;
    let done = sqlx::query(&sql)
        .bind((batch.rows)(&scale))
        .bind(scale.accounts)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(done.rows_affected()))
}

/// A day and a half of ended sessions in the revocation log, continuing its
/// gapless ids and moving its head, as `authd_record_revocation` would.
async fn seed_revocation_events(db: &mut PgConnection, scale: Scale) -> anyhow::Result<Option<u64>> {
    if !table_exists(db, "revocation_events").await? {
        return Ok(None);
    }
    let n = scale.accounts / 5;
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "WITH head AS (SELECT last_event_id AS last FROM revocation_log FOR UPDATE)
         INSERT INTO revocation_events (id, kind, user_id, session_ids, occurred_at)
         SELECT head.last + i, 'SESSION_ENDED', md5('user' || (1 + i % $2))::uuid,
                ARRAY[md5('session' || (10 * i + 1))::uuid],
                now() - ($1 - i) * (interval '36 hours' / $1)
           FROM head, generate_series(1, $1::bigint) AS g(i)",
    )
    .bind(n)
    .bind(scale.accounts)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE revocation_log SET last_event_id = last_event_id + $1")
        .bind(n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(done.rows_affected()))
}
