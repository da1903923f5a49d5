//! Shared Signals streams (`ssf_streams`) and the SETs about a stream
//! itself (`ssf_stream_messages`). A stream's place in the event log is
//! its cursor; push delivery is leased to one replica at a time and every
//! cursor move is fenced by that lease.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::AppError;

/// Streams one service account may own: each is a task while it pushes.
pub const MAX_STREAMS_PER_OWNER: i64 = 200;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StreamRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub audience: String,
    pub description: Option<String>,
    pub events_requested: Vec<String>,
    pub events_delivered: Vec<String>,
    pub delivery_method: String,
    pub endpoint_url: Option<String>,
    pub authorization_sealed: Option<Vec<u8>>,
    pub authorization_key_id: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub cursor_event: i64,
    pub cursor_sets: i32,
    pub acked: Vec<String>,
    pub failures: i32,
    pub last_error: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a new stream or a replaced configuration holds.
pub struct StreamFields<'a> {
    pub audience: &'a str,
    pub description: Option<&'a str>,
    pub events_requested: &'a [String],
    pub events_delivered: &'a [String],
    pub delivery_method: &'a str,
    pub endpoint_url: Option<&'a str>,
    /// (sealed value, data key id)
    pub authorization: Option<(&'a [u8], &'a str)>,
}

/// Where a stream stands in the log: every SET up to event `event` was
/// delivered, and the first `sets` of the event after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub event: i64,
    pub sets: i32,
}

impl StreamRow {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            event: self.cursor_event,
            sets: self.cursor_sets,
        }
    }
}

/// The account's streams, oldest first.
pub async fn by_owner<'e>(db: impl PgExecutor<'e>, owner_id: Uuid) -> Result<Vec<StreamRow>, AppError> {
    Ok(sqlx::query_as!(
        StreamRow,
        "SELECT id, owner_id, audience, description, events_requested, events_delivered,
                delivery_method, endpoint_url, authorization_sealed, authorization_key_id, status,
                status_reason, cursor_event, cursor_sets, acked, failures, last_error, retry_at,
                created_at, updated_at
           FROM ssf_streams WHERE owner_id = $1 ORDER BY created_at, id",
        owner_id
    )
    .fetch_all(db)
    .await?)
}

/// The stream, if it exists and `owner` owns it (another account's stream
/// is as absent as one that never existed); `owner` `None`: whoever owns
/// it (its delivery task).
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    owner: Option<Uuid>,
    id: Uuid,
) -> Result<Option<StreamRow>, AppError> {
    Ok(sqlx::query_as!(
        StreamRow,
        "SELECT id, owner_id, audience, description, events_requested, events_delivered,
                delivery_method, endpoint_url, authorization_sealed, authorization_key_id, status,
                status_reason, cursor_event, cursor_sets, acked, failures, last_error, retry_at,
                created_at, updated_at
           FROM ssf_streams WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)",
        id,
        owner
    )
    .fetch_optional(db)
    .await?)
}

/// Creates a stream that starts at the log's present: it receives what
/// happens from now on. `None` when the owner has
/// [`MAX_STREAMS_PER_OWNER`] already (counted under the owner's row lock,
/// so two creations cannot both pass the count).
pub async fn insert(
    tx: &mut PgConnection,
    owner_id: Uuid,
    id: Uuid,
    fields: &StreamFields<'_>,
    now: DateTime<Utc>,
) -> Result<Option<StreamRow>, AppError> {
    sqlx::query!(
        "SELECT id FROM service_accounts WHERE id = $1 FOR UPDATE",
        owner_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let count: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM ssf_streams WHERE owner_id = $1"#,
        owner_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= MAX_STREAMS_PER_OWNER {
        return Ok(None);
    }
    let (sealed, key_id) = fields.authorization.unzip();
    Ok(Some(
        sqlx::query_as!(
            StreamRow,
            "INSERT INTO ssf_streams (id, owner_id, audience, description, events_requested,
                    events_delivered, delivery_method, endpoint_url, authorization_sealed,
                    authorization_key_id, cursor_event, created_at, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, last_event_id, $11, $11 FROM revocation_log
             RETURNING id, owner_id, audience, description, events_requested, events_delivered,
                delivery_method, endpoint_url, authorization_sealed, authorization_key_id, status,
                status_reason, cursor_event, cursor_sets, acked, failures, last_error, retry_at,
                created_at, updated_at",
            id,
            owner_id,
            fields.audience,
            fields.description,
            fields.events_requested,
            fields.events_delivered,
            fields.delivery_method,
            fields.endpoint_url,
            sealed,
            key_id,
            now
        )
        .fetch_one(&mut *tx)
        .await?,
    ))
}

/// Replaces the stream's configuration (its place in the log stays);
/// `None` when the owner has no such stream.
pub async fn replace<'e>(
    db: impl PgExecutor<'e>,
    owner_id: Uuid,
    id: Uuid,
    fields: &StreamFields<'_>,
    now: DateTime<Utc>,
) -> Result<Option<StreamRow>, AppError> {
    let (sealed, key_id) = fields.authorization.unzip();
    Ok(sqlx::query_as!(
        StreamRow,
        "UPDATE ssf_streams SET audience = $3, description = $4, events_requested = $5,
                events_delivered = $6, delivery_method = $7, endpoint_url = $8,
                authorization_sealed = $9, authorization_key_id = $10, updated_at = $11,
                failures = 0, retry_at = NULL, last_error = NULL
          WHERE id = $1 AND owner_id = $2
         RETURNING id, owner_id, audience, description, events_requested, events_delivered,
                delivery_method, endpoint_url, authorization_sealed, authorization_key_id, status,
                status_reason, cursor_event, cursor_sets, acked, failures, last_error, retry_at,
                created_at, updated_at",
        id,
        owner_id,
        fields.audience,
        fields.description,
        fields.events_requested,
        fields.events_delivered,
        fields.delivery_method,
        fields.endpoint_url,
        sealed,
        key_id,
        now
    )
    .fetch_optional(db)
    .await?)
}

pub async fn delete<'e>(db: impl PgExecutor<'e>, owner_id: Uuid, id: Uuid) -> Result<bool, AppError> {
    Ok(sqlx::query!(
        "DELETE FROM ssf_streams WHERE id = $1 AND owner_id = $2",
        id,
        owner_id
    )
    .execute(db)
    .await?
    .rows_affected()
        > 0)
}

/// Sets the status. Enabling a disabled stream (or one whose events
/// expired) starts it at the log's present: a disabled stream's events are
/// not kept for it (SSF 1.0 §8.1.2). A paused one keeps its place.
pub async fn set_status<'e>(
    db: impl PgExecutor<'e>,
    owner_id: Uuid,
    id: Uuid,
    status: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<StreamRow>, AppError> {
    Ok(sqlx::query_as!(
        StreamRow,
        "UPDATE ssf_streams s SET status = $3, status_reason = $4, updated_at = $5,
                cursor_event = CASE WHEN s.status = 'disabled' AND $3 <> 'disabled'
                                    THEN l.last_event_id ELSE s.cursor_event END,
                cursor_sets = CASE WHEN s.status = 'disabled' AND $3 <> 'disabled'
                                   THEN 0 ELSE s.cursor_sets END,
                acked = CASE WHEN s.status = 'disabled' AND $3 <> 'disabled'
                             THEN '{}' ELSE s.acked END,
                failures = 0, retry_at = NULL
           FROM revocation_log l
          WHERE s.id = $1 AND s.owner_id = $2
         RETURNING s.id, s.owner_id, s.audience, s.description, s.events_requested,
                s.events_delivered, s.delivery_method, s.endpoint_url, s.authorization_sealed,
                s.authorization_key_id, s.status, s.status_reason, s.cursor_event, s.cursor_sets,
                s.acked, s.failures, s.last_error, s.retry_at, s.created_at, s.updated_at",
        id,
        owner_id,
        status,
        reason,
        now
    )
    .fetch_optional(db)
    .await?)
}

/// Disables a stream whose cursor fell behind the log's retention, saying
/// why; fenced like every move of a pushed stream's cursor when `lease`.
pub async fn expire<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE ssf_streams SET status = 'disabled', status_reason = $2, updated_at = $3
          WHERE id = $1 AND status <> 'disabled'",
        id,
        reason,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Stream messages one stream may have waiting: a receiver that asks for
/// verifications and never takes them cannot grow the table.
pub const MAX_PENDING_MESSAGES: i64 = 100;

/// A SET about the stream itself, delivered before the log's next; false
/// when the stream has [`MAX_PENDING_MESSAGES`] waiting already.
pub async fn enqueue_message<'e>(
    db: impl PgExecutor<'e>,
    stream_id: Uuid,
    event: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    Ok(sqlx::query_scalar!(
        "INSERT INTO ssf_stream_messages (stream_id, event, created_at)
         SELECT $1, $2, $3
          WHERE (SELECT count(*) FROM ssf_stream_messages WHERE stream_id = $1) < $4
         RETURNING id",
        stream_id,
        event,
        now,
        MAX_PENDING_MESSAGES
    )
    .fetch_optional(db)
    .await?
    .is_some())
}

#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: i64,
    pub event: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

pub async fn messages<'e>(
    db: impl PgExecutor<'e>,
    stream_id: Uuid,
    limit: i64,
) -> Result<Vec<MessageRow>, AppError> {
    Ok(sqlx::query_as!(
        MessageRow,
        "SELECT id, event, created_at FROM ssf_stream_messages WHERE stream_id = $1 ORDER BY id LIMIT $2",
        stream_id,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// Removes delivered (or acknowledged) stream messages. A delivery is a
/// success like a moved cursor: the stream's failures in a row, its next
/// attempt's wait and its last error go with them, in the same statement.
pub async fn remove_messages<'e>(
    db: impl PgExecutor<'e>,
    stream_id: Uuid,
    ids: &[i64],
) -> Result<(), AppError> {
    sqlx::query!(
        "WITH removed AS (DELETE FROM ssf_stream_messages WHERE stream_id = $1 AND id = ANY($2) RETURNING 1)
         UPDATE ssf_streams SET failures = 0, retry_at = NULL, last_error = NULL
          WHERE id = $1 AND EXISTS (SELECT 1 FROM removed)",
        stream_id,
        ids
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Moves the stream's cursor forward (never back) and replaces its
/// out-of-order acknowledgements; with `lease`, only while that replica
/// holds the stream's lease (a replica that lost it must not move the
/// cursor of the one that took over). Whether it moved.
pub async fn advance<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    to: Cursor,
    acked: &[String],
    lease: Option<Uuid>,
) -> Result<bool, AppError> {
    Ok(sqlx::query!(
        "UPDATE ssf_streams SET cursor_event = $2, cursor_sets = $3, acked = $4,
                failures = 0, retry_at = NULL, last_error = NULL
          WHERE id = $1 AND (cursor_event, cursor_sets) <= ($2, $3)
            AND ($5::uuid IS NULL OR lease_owner = $5)",
        id,
        to.event,
        to.sets,
        acked,
        lease
    )
    .execute(db)
    .await?
    .rows_affected()
        > 0)
}

/// Takes the push streams whose lease is free or lapsed (or already this
/// replica's), up to `limit`, leasing them to `replica` for `lease`.
pub async fn claim_push<'e>(
    db: impl PgExecutor<'e>,
    replica: Uuid,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Uuid>, AppError> {
    Ok(sqlx::query_scalar!(
        "UPDATE ssf_streams SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
          WHERE id IN (SELECT id FROM ssf_streams
                        WHERE delivery_method = 'push'
                          AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1)
                        ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id",
        replica,
        lease.as_secs_f64(),
        limit
    )
    .fetch_all(db)
    .await?)
}

/// Extends this replica's lease; false when another replica took it (or
/// the stream is gone or no longer pushed).
pub async fn renew<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    replica: Uuid,
    lease: std::time::Duration,
) -> Result<bool, AppError> {
    Ok(sqlx::query!(
        "UPDATE ssf_streams SET lease_until = now() + make_interval(secs => $3)
          WHERE id = $1 AND lease_owner = $2 AND delivery_method = 'push'",
        id,
        replica,
        lease.as_secs_f64()
    )
    .execute(db)
    .await?
    .rows_affected()
        > 0)
}

/// Gives up this replica's leases (shutdown), so another takes over at once.
pub async fn release_all<'e>(db: impl PgExecutor<'e>, replica: Uuid) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE ssf_streams SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        replica
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records a failed push: the next attempt waits until `retry_at`.
pub async fn failed<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    replica: Uuid,
    retry_at: DateTime<Utc>,
    error: &str,
) -> Result<i32, AppError> {
    Ok(sqlx::query_scalar!(
        "UPDATE ssf_streams SET failures = failures + 1, retry_at = $3, last_error = left($4, 1000)
          WHERE id = $1 AND lease_owner = $2 RETURNING failures",
        id,
        replica,
        retry_at,
        error
    )
    .fetch_optional(db)
    .await?
    .unwrap_or(0))
}

/// Records a SET the receiver refused as bad (RFC 8935 400): it is passed
/// over, and the refusal kept for the stream's owner to read.
pub async fn note_rejection<'e>(db: impl PgExecutor<'e>, id: Uuid, error: &str) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE ssf_streams SET last_error = left($2, 1000) WHERE id = $1",
        id,
        error
    )
    .execute(db)
    .await?;
    Ok(())
}
