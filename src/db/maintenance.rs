//! What background maintenance shared by replicas needs of PostgreSQL: a
//! session-level advisory lock so that one replica at a time runs a task,
//! the `maintenance_runs` table that records its passes, and the size of a
//! table in heap blocks, which the clean-up walks in TID ranges.
//!
//! The lock is held by a session, not a transaction, so it must be taken on
//! a connection of the task's own: a pooled connection given back mid-pass
//! would keep it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::error::AppError;

/// A table the clean-up deletes from: the one list that the clean-up, its
/// metrics' labels and the tests read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CleanupTable {
    Sessions,
    RefreshTokens,
    LoginThrottle,
    ResetTokens,
    VerificationTokens,
    Outbox,
    RevocationEvents,
    MfaChallenges,
    /// Factors whose enrollment was never confirmed.
    PendingFactors,
    /// Passkey ceremonies started and never finished.
    WebauthnCeremonies,
}

impl CleanupTable {
    pub const ALL: [Self; 10] = [
        Self::Sessions,
        Self::RefreshTokens,
        Self::LoginThrottle,
        Self::ResetTokens,
        Self::VerificationTokens,
        Self::Outbox,
        Self::RevocationEvents,
        Self::MfaChallenges,
        Self::PendingFactors,
        Self::WebauthnCeremonies,
    ];

    /// The table's name in the schema, which is also its metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sessions => "sessions",
            Self::RefreshTokens => "refresh_tokens",
            Self::LoginThrottle => "login_throttle",
            Self::ResetTokens => "password_reset_tokens",
            Self::VerificationTokens => "email_verification_tokens",
            Self::Outbox => "email_outbox",
            Self::RevocationEvents => "revocation_events",
            Self::MfaChallenges => "mfa_challenges",
            Self::PendingFactors => "factors",
            Self::WebauthnCeremonies => "webauthn_ceremonies",
        }
    }

    /// Its place in [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// Heap blocks `start..end` of a table. Statements select them with a TID
/// range scan (`ctid >= '(start,0)' AND ctid < '(end,0)'`, PostgreSQL 14+),
/// which reads those blocks and nothing else, with no index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    pub start: i64,
    pub end: i64,
}

/// How big a table is, read once at the start of a walk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TableSize {
    /// Heap blocks now; rows added later beyond them wait for the next walk.
    pub blocks: i64,
    /// The planner's estimate of rows per block, when the table has been
    /// analysed.
    pub rows_per_block: Option<f64>,
}

/// Planner settings of the clean-up's own connection. Its statements are
/// written so that the intended plan is the only sensible one; these make
/// the others unattractive whatever the statistics say at the time (a
/// sequential scan or a hash join over a table the clean-up walks in block
/// ranges), and keep JIT from compiling every batch afresh.
pub const PINNED_PLANNER_SETTINGS: [(&str, &str); 4] = [
    ("jit", "off"),
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

/// Applies [`PINNED_PLANNER_SETTINGS`] to this connection's session.
pub async fn pin_plans(conn: &mut PgConnection) -> Result<(), AppError> {
    for (name, value) in PINNED_PLANNER_SETTINGS {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(name)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Takes the advisory lock `key` for this connection's session, without
/// waiting: false when another session holds it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, AppError> {
    Ok(
        sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key)
            .fetch_one(conn)
            .await?,
    )
}

/// Gives back the advisory lock `key` (closing the connection does too).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn unlock(conn: &mut PgConnection, key: i64) -> Result<(), AppError> {
    sqlx::query!("SELECT pg_advisory_unlock($1)", key)
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// The size of `table` (a name the caller controls, never input).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn table_size(conn: &mut PgConnection, table: &str) -> Result<TableSize, AppError> {
    Ok(sqlx::query_as!(
        TableSize,
        r#"SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint AS "blocks!",
                  CASE WHEN c.relpages > 0 AND c.reltuples > 0
                       THEN c.reltuples::float8 / c.relpages END AS rows_per_block
             FROM pg_class c
            WHERE c.oid = $1::text::regclass"#,
        table,
    )
    .fetch_one(conn)
    .await?)
}

/// When a pass of `task` finished less than `interval` ago (by the database's
/// clock, which every replica shares): how long until the next one is due.
/// `None` when a pass is due: none finished yet, the last one was
/// interrupted, or it finished long enough ago.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn next_due_in(
    conn: &mut PgConnection,
    task: &str,
    interval: Duration,
) -> Result<Option<Duration>, AppError> {
    let remaining: Option<f64> = sqlx::query_scalar!(
        r#"SELECT extract(epoch FROM finished_at + make_interval(secs => $2) - now())::float8 AS "remaining!"
           FROM maintenance_runs
          WHERE task = $1 AND finished_at > now() - make_interval(secs => $2)"#,
        task,
        interval.as_secs_f64()
    )
    .fetch_optional(conn)
    .await?;
    Ok(remaining.map(|secs| Duration::try_from_secs_f64(secs).unwrap_or_default()))
}

/// Records that `replica` starts a pass of `task` now; until it finishes,
/// the row says none finished.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start_run(conn: &mut PgConnection, task: &str, replica: &str) -> Result<(), AppError> {
    sqlx::query!(
        "INSERT INTO maintenance_runs (task, started_at, finished_at, replica, deleted)
         VALUES ($1, now(), NULL, $2, 0)
         ON CONFLICT (task) DO UPDATE
            SET started_at = excluded.started_at, finished_at = NULL,
                replica = excluded.replica, deleted = 0",
        task,
        replica
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that the pass `replica` started finished now, having deleted
/// `deleted` rows.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn finish_run(
    conn: &mut PgConnection,
    task: &str,
    replica: &str,
    deleted: u64,
) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE maintenance_runs SET finished_at = now(), deleted = $3
          WHERE task = $1 AND replica = $2 AND finished_at IS NULL",
        task,
        replica,
        i64::try_from(deleted).unwrap_or(i64::MAX)
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows kept for a while and then deleted by their age alone, each kind
/// walked in block ranges: no index serves its cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgedRows {
    /// Reset tokens issued before the cut-off and expired by then (long
    /// unusable, and older than the hour the mail cap counts).
    ResetTokens,
    /// Verification and email-change links, likewise.
    VerificationTokens,
    /// Sent or discarded mail created before the cut-off; pending mail is
    /// never touched.
    FinishedMail,
}

impl AgedRows {
    pub const ALL: [Self; 3] = [Self::ResetTokens, Self::VerificationTokens, Self::FinishedMail];

    /// Up to `$4` rows in heap blocks `$1..$2` older than `$3`, deleted by
    /// key: a semi-join probing the key's index per row found (each table's
    /// key is unique, so no statistics make a row look like many).
    pub fn delete_statement(self) -> &'static str {
        match self {
            Self::ResetTokens => {
                "DELETE FROM password_reset_tokens WHERE token_hash IN (
                     SELECT token_hash FROM password_reset_tokens
                      WHERE ctid >= format('(%s,0)', $1::bigint)::tid
                        AND ctid < format('(%s,0)', $2::bigint)::tid
                        AND created_at < $3 AND expires_at < $3
                      LIMIT $4)"
            }
            Self::VerificationTokens => {
                "DELETE FROM email_verification_tokens WHERE token_hash IN (
                     SELECT token_hash FROM email_verification_tokens
                      WHERE ctid >= format('(%s,0)', $1::bigint)::tid
                        AND ctid < format('(%s,0)', $2::bigint)::tid
                        AND created_at < $3 AND expires_at < $3
                      LIMIT $4)"
            }
            Self::FinishedMail => {
                "DELETE FROM email_outbox WHERE id IN (
                     SELECT id FROM email_outbox
                      WHERE ctid >= format('(%s,0)', $1::bigint)::tid
                        AND ctid < format('(%s,0)', $2::bigint)::tid
                        AND created_at < $3 AND (sent_at IS NOT NULL OR discarded_at IS NOT NULL)
                      LIMIT $4)"
            }
        }
    }
}

/// Deletes at most `limit` rows of `rows` in `blocks` that are older than
/// `before`.
// Background work: a span only when debugging, not a trace every batch.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_aged_in(
    conn: &mut PgConnection,
    rows: AgedRows,
    blocks: Blocks,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, AppError> {
    delete_in_blocks(conn, rows.delete_statement(), blocks, before, limit).await
}

/// Runs a block-walk delete: `sql` takes the heap blocks `$1..$2`, the
/// cut-off `$3` and the batch `$4`, as every one of the clean-up's does.
pub(crate) async fn delete_in_blocks(
    conn: &mut PgConnection,
    sql: &'static str,
    blocks: Blocks,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, AppError> {
    let done = sqlx::query(sql)
        .bind(blocks.start)
        .bind(blocks.end)
        .bind(before)
        .bind(i64::from(limit))
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Rows that die at their own `expires_at`, deleted in that index's order:
/// their expiry is indexed (and never moves), so no block walk is needed.
/// A batch's keys are collected first (`= ANY (ARRAY(…))`), so that the
/// delete finds each row by its key rather than joining the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredRows {
    /// Login challenges past their expiry, used or not (a used one is kept
    /// until then, so that a replay finds it used rather than unknown).
    MfaChallenges,
    /// Enrollments never confirmed, past their expiry; confirmed factors
    /// never go here.
    PendingFactors,
    /// Passkey ceremonies never finished (a finished one is gone already).
    WebauthnCeremonies,
}

impl ExpiredRows {
    pub const ALL: [Self; 3] = [
        Self::MfaChallenges,
        Self::PendingFactors,
        Self::WebauthnCeremonies,
    ];

    pub fn table(self) -> CleanupTable {
        match self {
            Self::MfaChallenges => CleanupTable::MfaChallenges,
            Self::PendingFactors => CleanupTable::PendingFactors,
            Self::WebauthnCeremonies => CleanupTable::WebauthnCeremonies,
        }
    }

    /// Up to `$2` rows expired before `$1`, in the expiry index's order.
    pub fn delete_statement(self) -> &'static str {
        match self {
            // mfa_challenges_expiry_idx
            Self::MfaChallenges => {
                "DELETE FROM mfa_challenges WHERE token_hash = ANY (ARRAY(
                     SELECT token_hash FROM mfa_challenges
                      WHERE expires_at < $1
                      ORDER BY expires_at
                      LIMIT $2))"
            }
            // factors_pending_expiry_idx (partial: confirmed_at IS NULL)
            Self::PendingFactors => {
                "DELETE FROM factors WHERE id = ANY (ARRAY(
                     SELECT id FROM factors
                      WHERE confirmed_at IS NULL AND expires_at < $1
                      ORDER BY expires_at
                      LIMIT $2))"
            }
            // webauthn_ceremonies_expiry_idx
            Self::WebauthnCeremonies => {
                "DELETE FROM webauthn_ceremonies WHERE challenge = ANY (ARRAY(
                     SELECT challenge FROM webauthn_ceremonies
                      WHERE expires_at < $1
                      ORDER BY expires_at
                      LIMIT $2))"
            }
        }
    }
}

/// Deletes at most `limit` rows of `rows` that expired before `now`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_expired(
    conn: &mut PgConnection,
    rows: ExpiredRows,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, AppError> {
    let done = sqlx::query(rows.delete_statement())
        .bind(now)
        .bind(i64::from(limit))
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
