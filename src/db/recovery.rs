//! The `password_reset_tokens` table, and the account lookups of password
//! recovery.
//!
//! A reset token is usable while it is neither consumed nor superseded, has
//! not expired and was issued under the account's current security stamp;
//! every query that accepts one repeats that condition with the caller's
//! `now`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::crypto::opaque::TokenHash;
use crate::error::AppError;

/// What recovery needs of an account: where to write, and what a new
/// password must not contain.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecoveryAccount {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
}

/// Finds an account by email (any letter case) and locks it until the end
/// of the transaction, so concurrent requests for one account are counted
/// one after the other and the hourly cap is exact.
#[tracing::instrument(skip_all)]
pub async fn lock_account_by_email(
    tx: &mut PgConnection,
    email: &str,
) -> Result<Option<RecoveryAccount>, AppError> {
    Ok(sqlx::query_as::<_, RecoveryAccount>(&format!(
        // A disabled account gets no reset mail (and the answer stays the
        // same as for an unknown address).
        "SELECT u.id, u.email, u.username FROM users u WHERE {} AND u.disabled_at IS NULL FOR NO KEY UPDATE",
        super::users::EMAIL_MATCHES
    ))
    .bind(email)
    .fetch_optional(tx)
    .await?)
}

/// Reset tokens issued to an account since `since`, whatever became of them.
#[tracing::instrument(skip_all)]
pub async fn tokens_issued_since(
    tx: &mut PgConnection,
    user_id: Uuid,
    since: DateTime<Utc>,
) -> Result<i64, AppError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM password_reset_tokens WHERE user_id = $1 AND created_at > $2"#,
        user_id,
        since
    )
    .fetch_one(tx)
    .await?)
}

/// Makes every outstanding token of an account unusable (a newer one was
/// issued, or the password changed).
#[tracing::instrument(skip_all)]
pub async fn supersede_all(
    tx: &mut PgConnection,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, AppError> {
    let done = sqlx::query!(
        "UPDATE password_reset_tokens SET superseded_at = $2
          WHERE user_id = $1 AND consumed_at IS NULL AND superseded_at IS NULL",
        user_id,
        now
    )
    .execute(tx)
    .await?;
    Ok(done.rows_affected())
}

#[tracing::instrument(skip_all)]
pub async fn insert_token(
    tx: &mut PgConnection,
    hash: &TokenHash,
    user_id: Uuid,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "INSERT INTO password_reset_tokens (token_hash, user_id, created_at, expires_at, security_stamp)
         SELECT $1, $2, $3, $4, u.security_stamp FROM users u WHERE u.id = $2",
        hash.as_bytes(),
        user_id,
        now,
        expires_at
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// The account of a usable token, without consuming it: the new password is
/// checked against the account before the token is spent.
#[tracing::instrument(skip_all)]
pub async fn usable_token_owner<'e>(
    db: impl PgExecutor<'e>,
    hash: &TokenHash,
    now: DateTime<Utc>,
) -> Result<Option<RecoveryAccount>, AppError> {
    Ok(sqlx::query_as!(
        RecoveryAccount,
        "SELECT u.id, u.email, u.username
           FROM password_reset_tokens t JOIN users u ON u.id = t.user_id
          WHERE t.token_hash = $1 AND t.consumed_at IS NULL AND t.superseded_at IS NULL
            AND t.expires_at > $2 AND u.disabled_at IS NULL AND u.security_stamp = t.security_stamp",
        hash.as_bytes(),
        now
    )
    .fetch_optional(db)
    .await?)
}

/// Consumes a usable token and returns its account. Of concurrent calls
/// with one token exactly one gets `Some`: the row lock makes the others
/// re-check `consumed_at` after the winner commits.
#[tracing::instrument(skip_all)]
pub async fn consume(
    tx: &mut PgConnection,
    hash: &TokenHash,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, AppError> {
    Ok(sqlx::query_scalar!(
        "UPDATE password_reset_tokens t SET consumed_at = $2
           FROM users u
          WHERE t.token_hash = $1 AND t.consumed_at IS NULL AND t.superseded_at IS NULL
            AND t.expires_at > $2
            AND u.id = t.user_id AND u.security_stamp = t.security_stamp
         RETURNING t.user_id",
        hash.as_bytes(),
        now
    )
    .fetch_optional(tx)
    .await?)
}

/// Records a ForgotPassword request, for [`take_request`] to resolve.
#[tracing::instrument(skip_all)]
pub async fn record_request<'e>(
    db: impl PgExecutor<'e>,
    email: &str,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "INSERT INTO password_reset_requests (id, email, requested_at) VALUES ($1, $2, $3)",
        Uuid::new_v4(),
        email,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A recorded request, taken (deleted) by the transaction that resolves it:
/// it is gone exactly when its effects are committed.
#[derive(Debug, sqlx::FromRow)]
pub struct ResetRequest {
    pub email: String,
    pub requested_at: DateTime<Utc>,
}

// Background work: a span only when debugging, not a trace every tick.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn take_request(tx: &mut PgConnection) -> Result<Option<ResetRequest>, AppError> {
    Ok(sqlx::query_as!(
        ResetRequest,
        "DELETE FROM password_reset_requests
          WHERE id = (SELECT id FROM password_reset_requests ORDER BY requested_at
                       LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING email, requested_at"
    )
    .fetch_optional(tx)
    .await?)
}

/// Drops unresolved requests for an address (its account is being deleted).
/// One the worker is resolving now is left to it: the worker holds the
/// request and waits for the account the caller holds, so waiting for the
/// request would be a deadlock; once the deletion commits, the worker finds
/// no account and drops the request itself.
#[tracing::instrument(skip_all)]
pub async fn forget_requests_for(tx: &mut PgConnection, email: &str) -> Result<(), AppError> {
    sqlx::query(&format!(
        "DELETE FROM password_reset_requests WHERE id IN (
             SELECT u.id FROM password_reset_requests u WHERE {} FOR UPDATE SKIP LOCKED)",
        super::users::EMAIL_MATCHES
    ))
    .bind(email)
    .execute(tx)
    .await?;
    Ok(())
}
