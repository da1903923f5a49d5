//! The `sessions` and `refresh_tokens` tables.
//!
//! A session is live while `revoked_at IS NULL` and both expiries lie in the
//! future; every query that accepts a session repeats that condition, with
//! the caller's `now`, so the rule lives in SQL and nowhere in memory.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::maintenance::Blocks;
use super::users::{USER_COLUMNS, UserRow};
use crate::crypto::opaque::TokenHash;
use crate::domain::{Assurance, AuthMethod, EndReason, User};
use crate::error::AppError;

/// The condition for "session `s` is live at the bind parameter `now`".
fn live(now: &str) -> String {
    format!("s.revoked_at IS NULL AND s.idle_expires_at > {now} AND s.absolute_expires_at > {now}")
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub idle_expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    pub proof: SessionProof,
}

/// How a session was proven, as its row keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionProof {
    pub assurance: Assurance,
    /// The account must enrol a second factor before anything else.
    pub mfa_enrollment_required: bool,
}

/// The columns behind [`SessionProof`]; `auth_time` NULL means the
/// session's creation (sessions from before assurance was recorded).
const PROOF_COLUMNS: &str =
    "s.amr, COALESCE(s.auth_time, s.created_at) AS auth_time, s.mfa_enrollment_required";

#[derive(Debug, Clone, sqlx::FromRow)]
struct ProofRow {
    amr: Vec<String>,
    auth_time: DateTime<Utc>,
    mfa_enrollment_required: bool,
}

impl From<ProofRow> for SessionProof {
    fn from(r: ProofRow) -> Self {
        // Only authd writes the column; a name it does not know proves nothing.
        let methods = r.amr.iter().filter_map(|m| AuthMethod::parse(m));
        Self {
            assurance: Assurance::from_parts(methods, r.auth_time),
            mfa_enrollment_required: r.mfa_enrollment_required,
        }
    }
}

/// Records a new proof of a live session (StepUp, a confirmed factor):
/// its assurance, and that it no longer waits for an enrollment. Returns
/// whether the session is live.
#[tracing::instrument(skip_all)]
pub async fn record_proof<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    session_id: Uuid,
    assurance: &Assurance,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let sql = format!(
        "UPDATE sessions s SET amr = $3, auth_time = $4, mfa_enrollment_required = false
          WHERE s.user_id = $1 AND s.id = $2 AND {live}",
        live = live("$5")
    );
    let done = sqlx::query(&sql)
        .bind(user_id)
        .bind(session_id)
        .bind(assurance.amr_strings())
        .bind(assurance.auth_time)
        .bind(now)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A factor of the account was removed: its other sessions keep only what
/// the password proved, so no session stays at a level earned with a
/// factor that is gone (a new proof raises it again).
#[tracing::instrument(skip_all)]
pub async fn lower_to_password<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    keep: Uuid,
) -> Result<u64, AppError> {
    let done = sqlx::query!(
        "UPDATE sessions SET amr = '{pwd}'
          WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL AND amr <> '{pwd}'",
        user_id,
        keep
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The account has a factor now: none of its sessions waits for one.
#[tracing::instrument(skip_all)]
pub async fn clear_enrollment_required<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE sessions SET mfa_enrollment_required = false
          WHERE user_id = $1 AND mfa_enrollment_required AND revoked_at IS NULL",
        user_id
    )
    .execute(db)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn insert_refresh_token(
    tx: &mut PgConnection,
    hash: &TokenHash,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
        hash.as_bytes(),
        session_id,
        now
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// An account with the time its session stops being live (unless extended).
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub user: User,
    pub live_until: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LiveSessionRow {
    #[sqlx(flatten)]
    user: UserRow,
    live_until: DateTime<Utc>,
}

/// The account behind a live session, in one round trip (GetMe).
#[tracing::instrument(skip_all)]
pub async fn live_user<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<LiveSession>, AppError> {
    let sql = format!(
        "SELECT {USER_COLUMNS}, LEAST(s.idle_expires_at, s.absolute_expires_at) AS live_until
           FROM sessions s JOIN users u ON u.id = s.user_id
          WHERE s.user_id = $1 AND s.id = $2 AND {live}",
        live = live("$3")
    );
    Ok(sqlx::query_as::<_, LiveSessionRow>(&sql)
        .bind(user_id)
        .bind(session_id)
        .bind(now)
        .fetch_optional(db)
        .await?
        .map(|r| LiveSession {
            user: r.user.into(),
            live_until: r.live_until,
        }))
}

/// Locks a live session row for the rest of the transaction; `None` when
/// the session is not live.
#[tracing::instrument(skip_all)]
pub async fn lock_live(
    tx: &mut PgConnection,
    user_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<(DateTime<Utc>, SessionProof)>, AppError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        idle_expires_at: DateTime<Utc>,
        #[sqlx(flatten)]
        proof: ProofRow,
    }
    let sql = format!(
        "SELECT s.idle_expires_at, {PROOF_COLUMNS} FROM sessions s
          WHERE s.user_id = $1 AND s.id = $2 AND {live} FOR UPDATE",
        live = live("$3")
    );
    Ok(sqlx::query_as::<_, Row>(&sql)
        .bind(user_id)
        .bind(session_id)
        .bind(now)
        .fetch_optional(tx)
        .await?
        .map(|r| (r.idle_expires_at, r.proof.into())))
}

#[derive(Debug, Clone)]
pub struct RotatedSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub idle_expires_at: DateTime<Utc>,
    /// The account's roles now, for the new access token.
    pub roles: Vec<String>,
    /// Copied into the new access token, never raised by a rotation.
    pub proof: SessionProof,
}

#[derive(sqlx::FromRow)]
struct RotatedRow {
    id: Uuid,
    user_id: Uuid,
    idle_expires_at: DateTime<Utc>,
    roles: Vec<String>,
    #[sqlx(flatten)]
    proof: ProofRow,
}

/// Rotates a refresh token in one statement (one round trip, atomic):
/// locks the token's live session and slides its idle expiry (never past
/// the absolute one), consumes the presented token and stores `next` in
/// its place. Of two concurrent calls with one token, exactly one gets
/// `Some`; `None` means nothing was issued (the token is unknown, already
/// consumed, or its session is not live).
///
/// The session row is updated first so that its row lock is held before
/// the token is consumed: a revocation that commits meanwhile makes the
/// session condition fail and leaves the token untouched. The loser of a
/// race may slide the session's idle expiry too, to the same instant, and
/// is then handled as a replay by the caller.
#[tracing::instrument(skip_all)]
pub async fn rotate_refresh_token<'e>(
    db: impl PgExecutor<'e>,
    presented: &TokenHash,
    next: &TokenHash,
    now: DateTime<Utc>,
    idle_ttl: chrono::Duration,
) -> Result<Option<RotatedSession>, AppError> {
    let sql = format!(
        "WITH slid AS (
             UPDATE sessions s
                SET last_used_at = $3,
                    idle_expires_at = LEAST($3 + $2, s.absolute_expires_at)
               FROM refresh_tokens rt
              WHERE rt.token_hash = $1 AND rt.consumed_at IS NULL
                AND s.id = rt.session_id AND {live}
             RETURNING s.id, s.user_id, s.idle_expires_at, {PROOF_COLUMNS}),
         consumed AS (
             UPDATE refresh_tokens rt SET consumed_at = $3
               FROM slid
              WHERE rt.token_hash = $1 AND rt.consumed_at IS NULL AND rt.session_id = slid.id
             RETURNING rt.session_id),
         issued AS (
             INSERT INTO refresh_tokens (token_hash, session_id, issued_at)
             SELECT $4, session_id, $3 FROM consumed
             RETURNING session_id)
         SELECT slid.id, slid.user_id, slid.idle_expires_at, u.roles,
                slid.amr, slid.auth_time, slid.mfa_enrollment_required
           FROM slid JOIN issued ON issued.session_id = slid.id
           JOIN users u ON u.id = slid.user_id",
        live = live("$3")
    );
    Ok(sqlx::query_as::<_, RotatedRow>(&sql)
        .bind(presented.as_bytes())
        .bind(idle_ttl)
        .bind(now)
        .bind(next.as_bytes())
        .fetch_optional(db)
        .await?
        .map(|r| RotatedSession {
            id: r.id,
            user_id: r.user_id,
            idle_expires_at: r.idle_expires_at,
            roles: r.roles,
            proof: r.proof.into(),
        }))
}

/// What is known of a refresh token that could not be consumed.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct TokenState {
    pub session_id: Uuid,
    pub consumed_at: Option<DateTime<Utc>>,
    pub session_live: bool,
    /// The latest consumption in the token's session.
    pub last_consumed_at: Option<DateTime<Utc>>,
}

#[tracing::instrument(skip_all)]
pub async fn refresh_token_state(
    tx: &mut PgConnection,
    hash: &TokenHash,
    now: DateTime<Utc>,
) -> Result<Option<TokenState>, AppError> {
    let sql = format!(
        "SELECT rt.session_id, rt.consumed_at, ({live}) AS session_live,
                (SELECT max(o.consumed_at) FROM refresh_tokens o WHERE o.session_id = rt.session_id) AS last_consumed_at
           FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id
          WHERE rt.token_hash = $1",
        live = live("$2")
    );
    Ok(sqlx::query_as::<_, TokenState>(&sql)
        .bind(hash.as_bytes())
        .bind(now)
        .fetch_optional(tx)
        .await?)
}

/// Ends one session and records its SESSION_ENDED event, in one statement.
/// Returns whether it was live until now.
#[tracing::instrument(skip_all)]
pub async fn revoke<'e>(
    db: impl PgExecutor<'e>,
    session_id: Uuid,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let event: Option<i64> = sqlx::query_scalar!(
        r#"WITH ended AS (
             UPDATE sessions SET revoked_at = $2, revoked_reason = $3
              WHERE id = $1 AND revoked_at IS NULL
             RETURNING id, user_id)
         SELECT authd_record_revocation('SESSION_ENDED', user_id, ARRAY[id], $2) AS "event!" FROM ended"#,
        session_id,
        now,
        reason.as_str()
    )
    .fetch_optional(db)
    .await?;
    Ok(event.is_some())
}

/// Ends the session a refresh token (consumed or not) belongs to, and
/// records its SESSION_ENDED event if it was live until now. `None` when
/// the token is unknown; ending an ended session is a no-op.
#[tracing::instrument(skip_all)]
pub async fn revoke_by_refresh_token<'e>(
    db: impl PgExecutor<'e>,
    hash: &TokenHash,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, AppError> {
    // A WITH that only reads runs only if referenced: the always-true
    // `count(*) >= 0` is what makes the event's insert happen.
    Ok(sqlx::query_scalar!(
        "WITH target AS (SELECT session_id FROM refresh_tokens WHERE token_hash = $1),
              ended AS (
                  UPDATE sessions s SET revoked_at = $2, revoked_reason = $3
                    FROM target WHERE s.id = target.session_id AND s.revoked_at IS NULL
                  RETURNING s.id, s.user_id),
              event AS (
                  SELECT authd_record_revocation('SESSION_ENDED', user_id, ARRAY[id], $2) FROM ended)
         SELECT session_id FROM target WHERE (SELECT count(*) FROM event) >= 0",
        hash.as_bytes(),
        now,
        reason.as_str()
    )
    .fetch_optional(db)
    .await?)
}

/// How long after its expiry a session is still listed by a revocation:
/// twice the largest leeway a verifier may allow (30 s, RFC 8725 practice
/// and the verifier crate's cap), for clocks that disagree.
pub const EXPIRED_STILL_LISTED: chrono::Duration = chrono::Duration::seconds(60);

/// Ends every live session of a user, except `keep` if given, and records
/// one USER_SESSIONS_ENDED event listing them, in one statement. Returns
/// how many ended.
///
/// The event also lists sessions that reached their expiry within the last
/// [`EXPIRED_STILL_LISTED`]: their last access token ends with the session
/// (it is capped at the session's expiry) but a verifier still accepts it
/// for its leeway, so it must hear of the revocation too. Those are not
/// counted: they had ended already.
#[tracing::instrument(skip_all)]
pub async fn revoke_all_for_user<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    keep: Option<Uuid>,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<u64, AppError> {
    // CASE, unlike OR, guarantees the event is not recorded when nothing ended.
    let ended = sqlx::query!(
        r#"WITH ended AS (
             UPDATE sessions SET revoked_at = $3, revoked_reason = $4
              WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2)
                AND idle_expires_at > $5 AND absolute_expires_at > $5
             RETURNING id, LEAST(idle_expires_at, absolute_expires_at) > $3 AS live)
         SELECT count(*) FILTER (WHERE live) AS "ended!",
                CASE WHEN count(*) > 0
                     THEN authd_record_revocation('USER_SESSIONS_ENDED', $1, array_agg(id), $3)
                END AS event
           FROM ended"#,
        user_id,
        keep,
        now,
        reason.as_str(),
        now - EXPIRED_STILL_LISTED,
    )
    .fetch_one(db)
    .await?
    .ended;
    Ok(u64::try_from(ended).unwrap_or(0))
}

/// Drops every refresh token of a session (used when a new pair replaces
/// them outright, e.g. after a password change).
#[tracing::instrument(skip_all)]
pub async fn delete_refresh_tokens(tx: &mut PgConnection, session_id: Uuid) -> Result<(), AppError> {
    sqlx::query!("DELETE FROM refresh_tokens WHERE session_id = $1", session_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// The clean-up's rule: session `s` ended before the bind parameter `$3`
/// (revoked, or past either expiry). A macro so that both statements are
/// string constants the plan check can plan as they are.
macro_rules! ended_before_3 {
    () => {
        "LEAST(COALESCE(s.revoked_at, 'infinity'), s.idle_expires_at, s.absolute_expires_at) < $3"
    };
}

/// Up to `$4` refresh tokens of sessions in heap blocks `$1..$2` that ended
/// before `$3`. Written so that no statistics can make it read
/// `refresh_tokens` whole: the tokens are looked up per session through a
/// `LATERAL` subquery with its own `LIMIT`, which PostgreSQL cannot flatten
/// into a join (a hash join over the whole table is what a long Refresh
/// load's statistics once chose: 1.7 s a batch), and the delete finds them
/// by key (`= ANY (ARRAY(…))`, planned as a handful of keys).
pub const DELETE_ENDED_TOKENS_IN: &str = concat!(
    "DELETE FROM refresh_tokens
      WHERE token_hash = ANY (ARRAY(
            SELECT t.token_hash
              FROM sessions s
             CROSS JOIN LATERAL (
                   SELECT r.token_hash FROM refresh_tokens r
                    WHERE r.session_id = s.id
                    LIMIT $4) t
             WHERE s.ctid >= format('(%s,0)', $1::bigint)::tid
               AND s.ctid < format('(%s,0)', $2::bigint)::tid
               AND ",
    ended_before_3!(),
    "
             LIMIT $4))"
);

/// Up to `$4` sessions in heap blocks `$1..$2` that ended before `$3`;
/// rows another transaction holds are skipped. The sessions are collected
/// first and deleted by key, so a wide block range cannot turn the delete
/// into a join over the whole table.
pub const DELETE_ENDED_IN: &str = concat!(
    "DELETE FROM sessions s
      WHERE s.id = ANY (ARRAY(
            SELECT s.id FROM sessions s
             WHERE s.ctid >= format('(%s,0)', $1::bigint)::tid
               AND s.ctid < format('(%s,0)', $2::bigint)::tid
               AND ",
    ended_before_3!(),
    "
             LIMIT $4
               FOR UPDATE SKIP LOCKED))
        AND ",
    ended_before_3!()
);

/// Deletes up to `limit` refresh tokens of sessions in `blocks` that ended
/// before `before`; their sessions go next, with [`delete_ended_in`], once
/// this deletes fewer than `limit`. Apart, the two keep every statement
/// bounded: a session may have thousands of consumed tokens, which the
/// cascade of a session batch would delete all at once.
///
/// No index serves the end of a session, and none may (Refresh moves
/// `idle_expires_at`, and an index on it would end its HOT updates): the
/// sessions are found by a TID range scan of `blocks`, their tokens through
/// `refresh_tokens_session_id_idx`. An ended session never comes back to
/// life nor gets new tokens, so nothing is rechecked.
// Background work: a span only when debugging, not a trace every batch.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_ended_tokens_in(
    conn: &mut PgConnection,
    blocks: Blocks,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, AppError> {
    super::maintenance::delete_in_blocks(conn, DELETE_ENDED_TOKENS_IN, blocks, before, limit).await
}

/// Deletes up to `limit` sessions in `blocks` that ended before `before`
/// (their remaining tokens by cascade: none, after
/// [`delete_ended_tokens_in`]). Rows another transaction holds are skipped,
/// for the next pass.
// Background work: a span only when debugging, not a trace every batch.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_ended_in(
    conn: &mut PgConnection,
    blocks: Blocks,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, AppError> {
    super::maintenance::delete_in_blocks(conn, DELETE_ENDED_IN, blocks, before, limit).await
}

/// Deletes every session (and its tokens) that ended more than `retention`
/// before `now`, in the clean-up's bounded batches but without its pauses
/// or its lock: for tests and one-off use. The service's clean-up is
/// `crate::jobs::cleanup`.
pub async fn delete_dead(
    db: &PgPool,
    now: DateTime<Utc>,
    retention: chrono::Duration,
) -> Result<u64, AppError> {
    const BATCH: u32 = 1000;
    let before = now - retention;
    let mut conn = db.acquire().await?;
    let size = super::maintenance::table_size(&mut conn, "sessions").await?;
    let mut deleted = 0;
    let mut start = 0;
    while start < size.blocks {
        let blocks = Blocks {
            start,
            end: (start + 64).min(size.blocks),
        };
        while delete_ended_tokens_in(&mut conn, blocks, before, BATCH).await? == u64::from(BATCH) {}
        loop {
            let n = delete_ended_in(&mut conn, blocks, before, BATCH).await?;
            deleted += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        start = blocks.end;
    }
    Ok(deleted)
}

/// Where a session was started from, as recorded for its owner.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartedFrom<'a> {
    pub user_agent: Option<&'a str>,
    pub ip_address: Option<&'a str>,
}

/// Starts a session with its first refresh token, recording where the
/// client started it from, and clears the failure count `forgive` of the
/// login that earned it: one statement, so it is atomic and costs one round
/// trip on the Login path. Returns false, and writes nothing, when the
/// account is disabled: the account row is locked (FOR SHARE) while the
/// session is created, so a DisableUser either waits for this login and
/// then ends its session, or commits first and this login sees it.
#[tracing::instrument(skip_all)]
pub async fn start_from<'e>(
    db: impl PgExecutor<'e>,
    s: &NewSession,
    first_token: &TokenHash,
    forgive: &str,
    from: StartedFrom<'_>,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let started = sqlx::query!(
        "WITH owner AS (
                  SELECT id FROM users WHERE id = $2 AND disabled_at IS NULL FOR SHARE),
              forgiven AS (DELETE FROM login_throttle WHERE key = $7 AND EXISTS (SELECT 1 FROM owner)),
              session AS (
                  INSERT INTO sessions (id, user_id, created_at, last_used_at, idle_expires_at,
                                        absolute_expires_at, user_agent, ip_address,
                                        amr, auth_time, mfa_enrollment_required)
                  SELECT $1, id, $3, $3, $4, $5, $8, $9, $10, $11, $12 FROM owner
                  RETURNING id)
         INSERT INTO refresh_tokens (token_hash, session_id, issued_at)
         SELECT $6, id, $3 FROM session",
        s.id,
        s.user_id,
        now,
        s.idle_expires_at,
        s.absolute_expires_at,
        first_token.as_bytes(),
        forgive,
        from.user_agent,
        from.ip_address,
        &s.proof.assurance.amr_strings(),
        s.proof.assurance.auth_time,
        s.proof.mfa_enrollment_required
    )
    .execute(db)
    .await?;
    Ok(started.rows_affected() == 1)
}

/// Starts a session with no refresh token that ends at `expires_at`: what
/// an impersonating token names as its `sid`, so that ending the account's
/// sessions (disabling it included) ends the impersonation too. `false`
/// when the account is disabled or gone.
#[tracing::instrument(skip_all)]
pub async fn start_impersonation<'e>(
    db: impl PgExecutor<'e>,
    session_id: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    label: &str,
    ip_address: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let started = sqlx::query!(
        "INSERT INTO sessions (id, user_id, created_at, last_used_at, idle_expires_at,
                               absolute_expires_at, user_agent, ip_address, amr, auth_time)
         SELECT $1, id, $3, $3, $4, $4, $5, $6, '{}', NULL
           FROM users WHERE id = $2 AND disabled_at IS NULL
            FOR SHARE",
        session_id,
        user_id,
        now,
        expires_at,
        label,
        ip_address
    )
    .execute(db)
    .await?;
    Ok(started.rows_affected() == 1)
}

/// A live session as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionSummary {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// When it ends unless refreshed before (the idle expiry, capped by
    /// the absolute one).
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
}

/// The live sessions of a user, most recently used first.
#[tracing::instrument(skip_all)]
pub async fn list_live<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<SessionSummary>, AppError> {
    let sql = format!(
        "SELECT s.id, s.created_at, s.last_used_at,
                LEAST(s.idle_expires_at, s.absolute_expires_at) AS expires_at,
                s.user_agent, s.ip_address
           FROM sessions s
          WHERE s.user_id = $1 AND {live}
          ORDER BY s.last_used_at DESC, s.created_at DESC, s.id",
        live = live("$2")
    );
    Ok(sqlx::query_as::<_, SessionSummary>(&sql)
        .bind(user_id)
        .bind(now)
        .fetch_all(db)
        .await?)
}

/// What ending a session of a given user found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnSessionEnded {
    /// The user has no session with that id (another user's is no different).
    NotFound,
    /// It was live and has ended; its SESSION_ENDED event is recorded.
    Ended,
    /// It had ended already (revoked or expired); nothing changed.
    AlreadyOver,
}

/// Ends one session of `user_id`, in one statement, recording its
/// SESSION_ENDED event only when a live session actually ended.
#[tracing::instrument(skip_all)]
pub async fn revoke_of_user<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    session_id: Uuid,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<OwnSessionEnded, AppError> {
    let sql = format!(
        "WITH target AS (SELECT s.id FROM sessions s WHERE s.user_id = $1 AND s.id = $2),
              ended AS (
                  UPDATE sessions s SET revoked_at = $3, revoked_reason = $4
                   WHERE s.user_id = $1 AND s.id = $2 AND {live}
                  RETURNING s.id, s.user_id),
              event AS (
                  SELECT authd_record_revocation('SESSION_ENDED', user_id, ARRAY[id], $3) FROM ended)
         SELECT (SELECT count(*) FROM target) AS found, (SELECT count(*) FROM event) AS ended",
        live = live("$3")
    );
    let (found, ended): (i64, i64) = sqlx::query_as(&sql)
        .bind(user_id)
        .bind(session_id)
        .bind(now)
        .bind(reason.as_str())
        .fetch_one(db)
        .await?;
    Ok(match (found, ended) {
        (0, _) => OwnSessionEnded::NotFound,
        (_, 0) => OwnSessionEnded::AlreadyOver,
        _ => OwnSessionEnded::Ended,
    })
}
