//! The revocation log (`revocation_events`, `revocation_log`) that
//! WatchRevocations streams. Session ends record their events in the
//! statements of `sessions`; the deletion of an account by a trigger;
//! this module records disables and reads the log.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::AppError;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub kind: String,
    pub user_id: Uuid,
    pub session_ids: Vec<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// The newest event id, and the id up to which events were pruned.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct LogState {
    pub last_event_id: i64,
    pub pruned_through: i64,
}

/// Records USER_DISABLED if the account was disabled at `now` (by this
/// transaction's `set_disabled`); disabling a disabled account records
/// nothing. Call it after the account's sessions ended: the log's counter
/// must be the last lock a transaction takes.
#[tracing::instrument(skip_all)]
pub async fn record_user_disabled<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let event: Option<i64> = sqlx::query_scalar(
        "SELECT authd_record_revocation('USER_DISABLED', id, NULL, $2)
           FROM users WHERE id = $1 AND disabled_at = $2",
    )
    .bind(user_id)
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(event.is_some())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn state<'e>(db: impl PgExecutor<'e>) -> Result<LogState, AppError> {
    Ok(
        sqlx::query_as::<_, LogState>("SELECT last_event_id, pruned_through FROM revocation_log")
            .fetch_one(db)
            .await?,
    )
}

/// Up to `limit` events after `cursor`, oldest first. Ids are gapless and
/// commit in order (see the migration), so a reader that moves its cursor
/// to the last id it got never skips an event.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn after<'e>(db: impl PgExecutor<'e>, cursor: i64, limit: i64) -> Result<Vec<EventRow>, AppError> {
    Ok(sqlx::query_as::<_, EventRow>(
        "SELECT id, kind, user_id, session_ids, occurred_at FROM revocation_events
          WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(cursor)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Deletes events older than `before` (by id, so what remains is a
/// contiguous tail) and remembers how far, so older cursors are refused
/// rather than silently skipping what was deleted.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune<'e>(db: impl PgExecutor<'e>, before: DateTime<Utc>) -> Result<u64, AppError> {
    let deleted: i64 = sqlx::query_scalar(
        "WITH horizon AS (
             SELECT max(id) AS id FROM revocation_events WHERE occurred_at < $1),
         gone AS (
             DELETE FROM revocation_events e USING horizon WHERE e.id <= horizon.id
             RETURNING e.id),
         -- A data-modifying WITH runs whether or not it is referenced.
         moved AS (
             UPDATE revocation_log SET pruned_through = GREATEST(pruned_through, horizon.id)
               FROM horizon WHERE horizon.id IS NOT NULL
             RETURNING 1)
         SELECT count(*) FROM gone",
    )
    .bind(before)
    .fetch_one(db)
    .await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}
