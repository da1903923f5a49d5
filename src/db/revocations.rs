//! The revocation log (`revocation_events`, `revocation_log`) that
//! WatchRevocations and Shared Signals streams read. Session ends record
//! their events in the statements of `sessions`; the deletion of an account
//! by a trigger; this module records the other kinds, numbers recorded
//! events after their commit (`revocation_pending` → the log) and reads the
//! log.

use chrono::{DateTime, Utc};
use sqlx::{Connection as _, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::AppError;

/// What a stored revocation event says happened: the `kind` column,
/// decoded here so that no layer above matches its strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    SessionEnded,
    UserSessionsEnded,
    UserDisabled,
    UserDeleted,
    /// A second factor added or removed, recovery codes regenerated or
    /// used, all reset; `detail` says which (see [`FactorChange`]).
    FactorsChanged,
    /// The password was changed or reset.
    PasswordChanged,
    /// The account's roles were replaced; `detail` holds the new ones.
    RolesChanged,
    UserEnabled,
    /// The account's address changed (the log keeps no address).
    IdentifierChanged,
}

impl EventKind {
    pub const ALL: [Self; 9] = [
        Self::SessionEnded,
        Self::UserSessionsEnded,
        Self::UserDisabled,
        Self::UserDeleted,
        Self::FactorsChanged,
        Self::PasswordChanged,
        Self::RolesChanged,
        Self::UserEnabled,
        Self::IdentifierChanged,
    ];

    /// The value the `kind` column holds (its CHECK lists the same).
    pub const fn as_sql(self) -> &'static str {
        match self {
            Self::SessionEnded => "SESSION_ENDED",
            Self::UserSessionsEnded => "USER_SESSIONS_ENDED",
            Self::UserDisabled => "USER_DISABLED",
            Self::UserDeleted => "USER_DELETED",
            Self::FactorsChanged => "FACTORS_CHANGED",
            Self::PasswordChanged => "PASSWORD_CHANGED",
            Self::RolesChanged => "ROLES_CHANGED",
            Self::UserEnabled => "USER_ENABLED",
            Self::IdentifierChanged => "IDENTIFIER_CHANGED",
        }
    }
}

/// A `kind` this build does not know (written by a newer one).
#[derive(Debug, thiserror::Error)]
#[error("unknown revocation event kind {0:?}")]
pub struct UnknownKind(String);

impl TryFrom<String> for EventKind {
    type Error = UnknownKind;

    fn try_from(stored: String) -> Result<Self, UnknownKind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_sql() == stored)
            .ok_or(UnknownKind(stored))
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub kind: EventKind,
    pub user_id: Uuid,
    pub session_ids: Vec<Uuid>,
    pub occurred_at: DateTime<Utc>,
    /// What changed (see [`EventDetail`]); `None` for kinds that say it all.
    pub detail: Option<serde_json::Value>,
    /// The writing transaction: the same for every event of one change.
    pub txn: Option<i64>,
}

/// Which second factor a FACTORS_CHANGED event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorCredential {
    Totp,
    Passkey,
    RecoveryCodes,
    /// Every factor (an administrator's reset).
    All,
}

impl From<crate::domain::FactorKind> for FactorCredential {
    fn from(kind: crate::domain::FactorKind) -> Self {
        match kind {
            crate::domain::FactorKind::Totp => Self::Totp,
            crate::domain::FactorKind::Passkey => Self::Passkey,
        }
    }
}

/// What happened to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorChange {
    Added,
    Removed,
    /// Recovery codes regenerated, or one of them used up.
    Updated,
}

/// The `detail` of an event, in authd's words; the transports say it in
/// theirs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum EventDetail {
    Factor {
        credential: FactorCredential,
        change: FactorChange,
    },
    Roles {
        roles: Vec<String>,
    },
}

impl EventRow {
    /// The row's detail, if it has one this build reads.
    pub fn detail(&self) -> Option<EventDetail> {
        self.detail
            .as_ref()
            .and_then(|d| serde_json::from_value(d.clone()).ok())
    }
}

/// Records an event of `kind`, unnumbered: it gets its id right after the
/// transaction commits, from a replica's numbering task
/// ([`number_pending`]). Takes no lock another account's change waits for.
#[tracing::instrument(skip_all, fields(kind = kind.as_sql()))]
pub async fn record<'e>(
    db: impl PgExecutor<'e>,
    kind: EventKind,
    user_id: Uuid,
    detail: Option<&EventDetail>,
) -> Result<i64, AppError> {
    let detail = detail
        .map(serde_json::to_value)
        .transpose()
        .map_err(AppError::internal)?;
    Ok(sqlx::query_scalar!(
        r#"SELECT authd_record_event($1, $2, NULL, $3) AS "event!""#,
        kind.as_sql(),
        user_id,
        detail
    )
    .fetch_one(db)
    .await?)
}

/// Events numbered per transaction: one batch holds the counter for a few
/// milliseconds at most.
pub const NUMBERING_BATCH: i32 = 1000;

/// What one call of [`number_pending`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// Events were numbered; the log's head is now this id.
    Head(i64),
    /// No committed event waits for an id.
    NothingPending,
    /// The counter is held (another numberer, the clean-up): try again
    /// shortly.
    CounterBusy,
}

/// Gives up to `limit` committed pending events the log's next ids, oldest
/// first, in one short transaction under the counter (see the migration
/// `revocation_numbering`), and announces the new head on
/// `authd_revocation`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn number_pending<'e>(db: impl PgExecutor<'e>, limit: i32) -> Result<Numbering, AppError> {
    let head: i64 = sqlx::query_scalar!(r#"SELECT authd_number_events($1) AS "head!""#, limit)
        .fetch_one(db)
        .await?;
    Ok(match head {
        0 => Numbering::NothingPending,
        h if h < 0 => Numbering::CounterBusy,
        h => Numbering::Head(h),
    })
}

/// Numbers batches until no committed event is pending; the log's head
/// after the last batch this call numbered, if any. A counter held by
/// another numberer is waited out with short sleeps (that numberer may have
/// begun before the newest events committed). For "from now" to leave out
/// every change committed before it, and for the numbering task.
pub async fn number_all_pending(db: &PgPool, limit: i32) -> Result<Option<i64>, AppError> {
    const BUSY_FIRST: std::time::Duration = std::time::Duration::from_millis(2);
    const BUSY_MAX: std::time::Duration = std::time::Duration::from_millis(200);
    let mut busy = BUSY_FIRST;
    let mut head = None;
    loop {
        match number_pending(db, limit).await? {
            Numbering::Head(h) => {
                head = Some(h);
                busy = BUSY_FIRST;
            }
            Numbering::NothingPending => return Ok(head),
            Numbering::CounterBusy => {
                tokio::time::sleep(busy).await;
                busy = (busy * 2).min(BUSY_MAX);
            }
        }
    }
}

/// The newest event id, and the id up to which events were pruned.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct LogState {
    pub last_event_id: i64,
    pub pruned_through: i64,
}

/// Records USER_DISABLED if the account was disabled at `now` (by this
/// transaction's `set_disabled`); disabling a disabled account records
/// nothing.
#[tracing::instrument(skip_all)]
pub async fn record_user_disabled<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let event: Option<i64> = sqlx::query_scalar!(
        r#"SELECT authd_record_revocation('USER_DISABLED', id, NULL, $2) AS "event!"
           FROM users WHERE id = $1 AND disabled_at = $2"#,
        user_id,
        now
    )
    .fetch_optional(db)
    .await?;
    Ok(event.is_some())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn state<'e>(db: impl PgExecutor<'e>) -> Result<LogState, AppError> {
    Ok(sqlx::query_as!(
        LogState,
        "SELECT last_event_id, pruned_through FROM revocation_log"
    )
    .fetch_one(db)
    .await?)
}

/// Where a subscriber that starts at a time begins, read in one snapshot.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct TimeStart {
    /// The database's clock, which event times and the retention use.
    pub now: DateTime<Utc>,
    pub last_event_id: i64,
    /// The first event that occurred at or after the time asked for.
    pub first_id: Option<i64>,
}

/// The log's state and the first event that occurred at or after `since`,
/// found at the near end of the time index (times rise with ids, see the
/// migration that moved event times to the database's clock). One
/// statement, so an event committed after it has an id above
/// `last_event_id`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start_at<'e>(db: impl PgExecutor<'e>, since: DateTime<Utc>) -> Result<TimeStart, AppError> {
    Ok(sqlx::query_as!(
        TimeStart,
        r#"SELECT now() AS "now!", last_event_id,
                (SELECT id FROM revocation_events WHERE occurred_at >= $1
                  ORDER BY occurred_at, id LIMIT 1) AS first_id
           FROM revocation_log"#,
        since
    )
    .fetch_one(db)
    .await?)
}

/// Up to `limit` events after `cursor`, oldest first. Ids are gapless and
/// commit in order (see the migration), so a reader that moves its cursor
/// to the last id it got never skips an event.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn after<'e>(db: impl PgExecutor<'e>, cursor: i64, limit: i64) -> Result<Vec<EventRow>, AppError> {
    let rows = sqlx::query!(
        "SELECT id, kind, user_id, session_ids, occurred_at, detail, txn FROM revocation_events
          WHERE id > $1 ORDER BY id LIMIT $2",
        cursor,
        limit
    )
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(EventRow {
                id: r.id,
                kind: EventKind::try_from(r.kind).map_err(AppError::internal)?,
                user_id: r.user_id,
                session_ids: r.session_ids,
                occurred_at: r.occurred_at,
                detail: r.detail,
                txn: r.txn,
            })
        })
        .collect()
}

/// The newest event that occurred more than `retention` ago: pruning
/// deletes it and every event before it (by id, so what remains is a
/// contiguous tail). `None` when no event is that old.
///
/// "Ago" is by the database's clock, the one event times are written with,
/// never a replica's: a replica whose clock runs ahead must not prune what
/// a subscriber's `since` (checked against the same database clock) still
/// counts on.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune_horizon<'e>(
    db: impl PgExecutor<'e>,
    retention: chrono::Duration,
) -> Result<Option<i64>, AppError> {
    Ok(
        // The newest event past retention, found at the near end of the
        // time index; times rise with ids, so it is the highest old id.
        // max(id) would walk the primary key down through every event of
        // the retention window before reaching an old one.
        sqlx::query_scalar!(
            "SELECT id FROM revocation_events
              WHERE occurred_at < now() - make_interval(secs => $1)
              ORDER BY occurred_at DESC LIMIT 1",
            retention.as_seconds_f64()
        )
        .fetch_optional(db)
        .await?,
    )
}

/// What one pruning batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: u64,
    /// The log's `pruned_through` after the batch.
    pub pruned_through: i64,
}

/// Deletes the next `limit` ids after the log's `pruned_through`, none
/// after `horizon` (from [`prune_horizon`]), and moves `pruned_through`
/// past them in the same transaction, so that cursors before it are
/// refused (CURSOR_EXPIRED) rather than silently skipping what was deleted,
/// and the events left are always the contiguous tail after it. The log's
/// counter row is the last lock taken and is held for the commit only
/// (numbering waits that long). `None` when nothing up to `horizon` is
/// left.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune_batch(
    conn: &mut PgConnection,
    horizon: i64,
    limit: u32,
) -> Result<Option<Pruned>, AppError> {
    let mut tx = conn.begin().await?;
    let floor: i64 = sqlx::query_scalar!("SELECT pruned_through FROM revocation_log")
        .fetch_one(&mut *tx)
        .await?;
    let upto = floor.saturating_add(i64::from(limit)).min(horizon);
    if upto <= floor {
        return Ok(None);
    }
    let deleted = sqlx::query!(
        "DELETE FROM revocation_events WHERE id > $1 AND id <= $2",
        floor,
        upto
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let pruned_through: i64 = sqlx::query_scalar!(
        "UPDATE revocation_log SET pruned_through = GREATEST(pruned_through, $1)
         RETURNING pruned_through",
        upto
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Pruned {
        deleted,
        pruned_through,
    }))
}

/// Deletes every event up to the newest that occurred more than
/// `retention` ago, in the clean-up's bounded batches but without its
/// pauses or its lock: for tests and one-off use. The service's clean-up
/// is `crate::jobs::cleanup`.
pub async fn prune(db: &PgPool, retention: chrono::Duration) -> Result<u64, AppError> {
    let mut conn = db.acquire().await?;
    let Some(horizon) = prune_horizon(&mut *conn, retention).await? else {
        return Ok(0);
    };
    let mut deleted = 0;
    while let Some(batch) = prune_batch(&mut conn, horizon, 1000).await? {
        deleted += batch.deleted;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_what_it_stores_and_an_unknown_one_is_refused() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::try_from(kind.as_sql().to_owned()).unwrap(), kind);
        }
        assert!(EventKind::try_from("session_ended".to_owned()).is_err());
        assert!(EventKind::try_from(String::new()).is_err());
    }
}
