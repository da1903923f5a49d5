//! What background maintenance shared by replicas needs of PostgreSQL: a
//! session-level advisory lock so that one replica at a time runs a task,
//! the `maintenance_runs` table that records its passes, and the size of a
//! table in heap blocks, which the clean-up walks in TID ranges.
//!
//! The lock is held by a session, not a transaction, so it must be taken on
//! a connection of the task's own: a pooled connection given back mid-pass
//! would keep it.

use std::time::Duration;

use sqlx::PgConnection;

use crate::error::AppError;

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

/// Takes the advisory lock `key` for this connection's session, without
/// waiting: false when another session holds it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, AppError> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await?)
}

/// Gives back the advisory lock `key` (closing the connection does too).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn unlock(conn: &mut PgConnection, key: i64) -> Result<(), AppError> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// The size of `table` (a name the caller controls, never input).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn table_size(conn: &mut PgConnection, table: &str) -> Result<TableSize, AppError> {
    let (blocks, rows_per_block): (i64, Option<f64>) = sqlx::query_as(
        "SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint,
                CASE WHEN c.relpages > 0 AND c.reltuples > 0
                     THEN c.reltuples::float8 / c.relpages END
           FROM pg_class c
          WHERE c.oid = $1::regclass",
    )
    .bind(table)
    .fetch_one(conn)
    .await?;
    Ok(TableSize {
        blocks,
        rows_per_block,
    })
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
    let remaining: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM finished_at + make_interval(secs => $2) - now())::float8
           FROM maintenance_runs
          WHERE task = $1 AND finished_at > now() - make_interval(secs => $2)",
    )
    .bind(task)
    .bind(interval.as_secs_f64())
    .fetch_optional(conn)
    .await?;
    Ok(remaining.map(|secs| Duration::try_from_secs_f64(secs).unwrap_or_default()))
}

/// Records that `replica` starts a pass of `task` now; until it finishes,
/// the row says none finished.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start_run(conn: &mut PgConnection, task: &str, replica: &str) -> Result<(), AppError> {
    sqlx::query(
        "INSERT INTO maintenance_runs (task, started_at, finished_at, replica, deleted)
         VALUES ($1, now(), NULL, $2, 0)
         ON CONFLICT (task) DO UPDATE
            SET started_at = excluded.started_at, finished_at = NULL,
                replica = excluded.replica, deleted = 0",
    )
    .bind(task)
    .bind(replica)
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
    sqlx::query(
        "UPDATE maintenance_runs SET finished_at = now(), deleted = $3
          WHERE task = $1 AND replica = $2 AND finished_at IS NULL",
    )
    .bind(task)
    .bind(replica)
    .bind(i64::try_from(deleted).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}
