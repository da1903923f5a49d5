//! The `factors`, `recovery_codes` and `mfa_challenges` tables.
//!
//! A factor is live once `confirmed_at` is set; before that it is an
//! enrollment that dies at `expires_at`. A TOTP step is accepted once per
//! factor by one conditional UPDATE, so replicas racing with one code
//! cannot both win.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::revocations::{self, EventDetail, EventKind, FactorChange, FactorCredential};
use crate::crypto::opaque::TokenHash;
use crate::domain::FactorKind;
use crate::error::AppError;

/// A TOTP secret as stored: sealed, with the data key that sealed it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredTotp {
    pub id: Uuid,
    pub secret_sealed: Vec<u8>,
    pub secret_key_id: String,
}

/// A live factor as its owner sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FactorRow {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Passkeys only: WebAuthn's backup flags.
    pub backup_eligible: Option<bool>,
    pub backed_up: Option<bool>,
}

pub struct NewEnrollment<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: &'a str,
    pub secret_sealed: &'a [u8],
    pub secret_key_id: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// Live TOTP factors of a user.
#[tracing::instrument(skip_all)]
pub async fn live_totp_count<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<i64, AppError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM factors WHERE user_id = $1 AND kind = 'totp' AND confirmed_at IS NOT NULL"#,
        user_id
    )
    .fetch_one(db)
    .await?)
}

/// Starts an enrollment; any other unconfirmed enrollment of the user is
/// dropped, so one account holds at most one.
#[tracing::instrument(skip_all)]
pub async fn start_enrollment(
    tx: &mut PgConnection,
    e: &NewEnrollment<'_>,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "DELETE FROM factors WHERE user_id = $1 AND confirmed_at IS NULL",
        e.user_id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO factors (id, user_id, kind, name, created_at, expires_at, secret_sealed, secret_key_id)
         VALUES ($1, $2, 'totp', $3, $4, $5, $6, $7)",
        e.id,
        e.user_id,
        e.name,
        now,
        e.expires_at,
        e.secret_sealed,
        e.secret_key_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Locks a pending, unexpired enrollment of the user.
#[tracing::instrument(skip_all)]
pub async fn lock_enrollment(
    tx: &mut PgConnection,
    id: Uuid,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<(StoredTotp, String)>, AppError> {
    let row = sqlx::query!(
        r#"SELECT id, secret_sealed AS "secret_sealed!", secret_key_id AS "secret_key_id!", name FROM factors
          WHERE id = $1 AND user_id = $2 AND confirmed_at IS NULL AND expires_at > $3
            AND secret_sealed IS NOT NULL AND secret_key_id IS NOT NULL
          FOR UPDATE"#,
        id,
        user_id,
        now
    )
    .fetch_optional(tx)
    .await?;
    Ok(row.map(|r| {
        let totp = StoredTotp {
            id: r.id,
            secret_sealed: r.secret_sealed,
            secret_key_id: r.secret_key_id,
        };
        (totp, r.name)
    }))
}

/// Makes an enrollment live, recording the step its code was accepted for.
#[tracing::instrument(skip_all)]
pub async fn confirm(
    tx: &mut PgConnection,
    id: Uuid,
    step: i64,
    now: DateTime<Utc>,
) -> Result<FactorRow, AppError> {
    Ok(sqlx::query_as!(
        FactorRow,
        r#"UPDATE factors SET confirmed_at = $3, expires_at = NULL, totp_last_step = $2
          WHERE id = $1
         RETURNING id, kind, name, confirmed_at AS "created_at!", last_used_at,
                   NULL::boolean AS "backup_eligible?", NULL::boolean AS "backed_up?""#,
        id,
        step,
        now
    )
    .fetch_one(tx)
    .await?)
}

/// The user's live TOTP factors with their sealed secrets.
#[tracing::instrument(skip_all)]
pub async fn live_totp<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<Vec<StoredTotp>, AppError> {
    Ok(sqlx::query_as!(
        StoredTotp,
        r#"SELECT id, secret_sealed AS "secret_sealed!", secret_key_id AS "secret_key_id!" FROM factors
          WHERE user_id = $1 AND kind = 'totp' AND confirmed_at IS NOT NULL
            AND secret_sealed IS NOT NULL AND secret_key_id IS NOT NULL
          ORDER BY confirmed_at, id"#,
        user_id
    )
    .fetch_all(db)
    .await?)
}

/// Accepts `step` for a factor unless that step or a later one was
/// accepted before. Of two concurrent calls with one code, one gets `true`.
#[tracing::instrument(skip_all)]
pub async fn accept_step<'e>(
    db: impl PgExecutor<'e>,
    factor_id: Uuid,
    step: i64,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let done = sqlx::query!(
        "UPDATE factors SET totp_last_step = $2, last_used_at = $3
          WHERE id = $1 AND confirmed_at IS NOT NULL
            AND (totp_last_step IS NULL OR totp_last_step < $2)",
        factor_id,
        step,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Live factors, oldest first, and the unused recovery codes.
#[tracing::instrument(skip_all)]
pub async fn list<'e>(
    db: impl PgExecutor<'e> + Copy,
    user_id: Uuid,
) -> Result<(Vec<FactorRow>, i64), AppError> {
    let factors = sqlx::query_as!(
        FactorRow,
        r#"SELECT f.id, f.kind, f.name, f.confirmed_at AS "created_at!", f.last_used_at,
                  p.backup_eligible AS "backup_eligible?", p.backed_up AS "backed_up?"
             FROM factors f LEFT JOIN passkeys p ON p.factor_id = f.id
            WHERE f.user_id = $1 AND f.confirmed_at IS NOT NULL
            ORDER BY f.confirmed_at, f.id"#,
        user_id
    )
    .fetch_all(db)
    .await?;
    let codes = recovery_codes_left(db, user_id).await?;
    Ok((factors, codes))
}

#[tracing::instrument(skip_all)]
pub async fn recovery_codes_left<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<i64, AppError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL"#,
        user_id
    )
    .fetch_one(db)
    .await?)
}

#[tracing::instrument(skip_all)]
pub async fn has_live_factor<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<bool, AppError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM factors WHERE user_id = $1 AND confirmed_at IS NOT NULL) AS "live!""#,
        user_id
    )
    .fetch_one(db)
    .await?)
}

/// Removes a live factor of the user; with the last one go the recovery
/// codes (they back up factors, not the password). Returns whether it
/// existed.
#[tracing::instrument(skip_all)]
pub async fn remove(
    tx: &mut PgConnection,
    user_id: Uuid,
    factor_id: Uuid,
) -> Result<Option<FactorKind>, AppError> {
    let removed: Option<String> = sqlx::query_scalar!(
        "DELETE FROM factors WHERE id = $1 AND user_id = $2 AND confirmed_at IS NOT NULL RETURNING kind",
        factor_id,
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(kind) = removed else {
        return Ok(None);
    };
    sqlx::query!(
        "DELETE FROM recovery_codes WHERE user_id = $1
            AND NOT EXISTS (SELECT 1 FROM factors WHERE user_id = $1 AND confirmed_at IS NOT NULL)",
        user_id
    )
    .execute(&mut *tx)
    .await?;
    FactorKind::parse(&kind)
        .map(Some)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown factor kind {kind:?}")))
}

/// Replaces every recovery code of the user with `hashes`.
#[tracing::instrument(skip_all)]
pub async fn replace_recovery_codes(
    tx: &mut PgConnection,
    user_id: Uuid,
    hashes: &[TokenHash],
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    let bytes: Vec<Vec<u8>> = hashes.iter().map(|h| h.as_bytes().to_vec()).collect();
    sqlx::query!(
        "INSERT INTO recovery_codes (user_id, code_hash, created_at)
         SELECT $1, h, $3 FROM unnest($2::bytea[]) AS h",
        user_id,
        &bytes,
        now
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Spends an unused recovery code of the user; `true` if it was one.
#[tracing::instrument(skip_all)]
pub async fn spend_recovery_code<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    hash: &TokenHash,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let done = sqlx::query!(
        "UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        user_id,
        hash.as_bytes(),
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes every factor, enrollment and recovery code of the user; returns
/// how many live factors there were.
#[tracing::instrument(skip_all)]
pub async fn remove_all(tx: &mut PgConnection, user_id: Uuid) -> Result<u64, AppError> {
    let live: i64 = sqlx::query_scalar!(
        r#"WITH gone AS (DELETE FROM factors WHERE user_id = $1 RETURNING confirmed_at)
         SELECT count(*) FILTER (WHERE confirmed_at IS NOT NULL) AS "live!" FROM gone"#,
        user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query!("DELETE FROM mfa_challenges WHERE user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    Ok(u64::try_from(live).unwrap_or(0))
}

/// Records a FACTORS_CHANGED event saying which factor changed how
/// (numbered after the commit, see `revocations::record`).
pub async fn record_factors_changed<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    credential: FactorCredential,
    change: FactorChange,
) -> Result<(), AppError> {
    revocations::record(
        db,
        EventKind::FactorsChanged,
        user_id,
        Some(&EventDetail::Factor { credential, change }),
    )
    .await?;
    Ok(())
}

/// A login waiting for its second factor.
pub struct NewChallenge<'a> {
    pub hash: &'a TokenHash,
    pub user_id: Uuid,
    pub throttle_key: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// Stores a challenge under the account's current security stamp.
#[tracing::instrument(skip_all)]
pub async fn insert_challenge<'e>(
    db: impl PgExecutor<'e>,
    c: &NewChallenge<'_>,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!("INSERT INTO mfa_challenges (token_hash, user_id, security_stamp, throttle_key, created_at, expires_at)
         SELECT $1, u.id, u.security_stamp, $3, $4, $5 FROM users u WHERE u.id = $2", c.hash.as_bytes(), c.user_id, c.throttle_key, now, c.expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Proofs a challenge takes; after 5 wrong ones it is dead.
pub const CHALLENGE_MAX_ATTEMPTS: i32 = 5;

/// One proof's attempt on a challenge.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Challenge {
    pub user_id: Uuid,
    pub throttle_key: String,
    /// When the password was proven.
    pub created_at: DateTime<Utc>,
    /// The account's security stamp has not moved since (no password
    /// change, reset or disabling).
    pub stamp_ok: bool,
    pub disabled: bool,
}

/// Counts one attempt on an unconsumed, unexpired challenge that is under
/// its limit of attempts; `None` otherwise. The attempt is taken before the
/// proof is checked, so concurrent guesses cannot outrun the limit.
#[tracing::instrument(skip_all)]
pub async fn take_attempt<'e>(
    db: impl PgExecutor<'e>,
    hash: &TokenHash,
    now: DateTime<Utc>,
) -> Result<Option<Challenge>, AppError> {
    Ok(sqlx::query_as!(
        Challenge,
        r#"UPDATE mfa_challenges c SET failures = c.failures + 1
           FROM users u
          WHERE c.token_hash = $1 AND u.id = c.user_id AND c.consumed_at IS NULL
            AND c.expires_at > $2 AND c.failures < $3
         RETURNING c.user_id, c.throttle_key, c.created_at,
                   c.security_stamp = u.security_stamp AS "stamp_ok!",
                   u.disabled_at IS NOT NULL AS "disabled!""#,
        hash.as_bytes(),
        now,
        CHALLENGE_MAX_ATTEMPTS
    )
    .fetch_optional(db)
    .await?)
}

/// Uses up a challenge; `false` if another call did first or it stopped
/// being usable meanwhile.
#[tracing::instrument(skip_all)]
pub async fn consume_challenge(
    tx: &mut PgConnection,
    hash: &TokenHash,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let done = sqlx::query!(
        "UPDATE mfa_challenges c SET consumed_at = $2
           FROM users u
          WHERE c.token_hash = $1 AND u.id = c.user_id AND c.consumed_at IS NULL
            AND c.expires_at > $2 AND c.security_stamp = u.security_stamp",
        hash.as_bytes(),
        now
    )
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
