//! The `email_verification_tokens` table: links that prove an address,
//! either the account's own (`Purpose::Verify`) or one it moves to
//! (`Purpose::Change`).
//!
//! A token is usable while it is neither consumed nor superseded, has not
//! expired and was issued under the account's current security stamp; every
//! query that accepts one repeats that condition with the caller's `now`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::crypto::opaque::TokenHash;
use crate::error::AppError;

/// What consuming a token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Marks the account's address verified, if it is still the address
    /// the token was mailed to.
    Verify,
    /// Switches the account to the token's address, verified.
    Change,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Change => "change",
        }
    }
}

impl TryFrom<String> for Purpose {
    type Error = String;

    fn try_from(stored: String) -> Result<Self, Self::Error> {
        match stored.as_str() {
            "verify" => Ok(Self::Verify),
            "change" => Ok(Self::Change),
            _ => Err(format!("unknown verification purpose {stored:?}")),
        }
    }
}

/// What the mail flows need of an account, read under its row lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAccount {
    pub id: Uuid,
    pub email: String,
    pub email_verified: bool,
}

/// Locks an account until the end of the transaction, so concurrent
/// requests for it are counted one after the other and the hourly cap is
/// exact. `None` when there is no such (enabled) account.
#[tracing::instrument(skip_all)]
pub async fn lock_account(tx: &mut PgConnection, user_id: Uuid) -> Result<Option<MailAccount>, AppError> {
    Ok(sqlx::query_as!(
        MailAccount,
        "SELECT id, email, email_verified FROM users
          WHERE id = $1 AND disabled_at IS NULL FOR NO KEY UPDATE",
        user_id,
    )
    .fetch_optional(tx)
    .await?)
}

/// When the account may be sent another link, if `cap` were issued since
/// `since` (whatever became of them): the moment the oldest of the latest
/// `cap` leaves the window. `None` while fewer than `cap` were issued.
#[tracing::instrument(skip_all)]
pub async fn cap_reached_until(
    tx: &mut PgConnection,
    user_id: Uuid,
    since: DateTime<Utc>,
    window: chrono::Duration,
    cap: i64,
) -> Result<Option<DateTime<Utc>>, AppError> {
    let nth_latest = sqlx::query_scalar!(
        "SELECT created_at FROM email_verification_tokens
          WHERE user_id = $1 AND created_at > $2
          ORDER BY created_at DESC OFFSET $3 LIMIT 1",
        user_id,
        since,
        cap - 1,
    )
    .fetch_optional(tx)
    .await?;
    Ok(nth_latest.map(|t| t + window))
}

/// Makes the outstanding tokens of an account unusable: those of `purpose`
/// (a newer one of the kind is issued), or all (the address changed).
#[tracing::instrument(skip_all)]
pub async fn supersede(
    tx: &mut PgConnection,
    user_id: Uuid,
    purpose: Option<Purpose>,
    now: DateTime<Utc>,
) -> Result<u64, AppError> {
    let done = sqlx::query!(
        "UPDATE email_verification_tokens SET superseded_at = $3
          WHERE user_id = $1 AND ($2::text IS NULL OR purpose = $2)
            AND consumed_at IS NULL AND superseded_at IS NULL",
        user_id,
        purpose.map(Purpose::as_str),
        now,
    )
    .execute(tx)
    .await?;
    Ok(done.rows_affected())
}

pub struct NewVerificationToken<'a> {
    pub hash: &'a TokenHash,
    pub user_id: Uuid,
    pub purpose: Purpose,
    /// The address the token proves.
    pub email: &'a str,
    pub expires_at: DateTime<Utc>,
}

#[tracing::instrument(skip_all)]
pub async fn insert_token(
    tx: &mut PgConnection,
    token: &NewVerificationToken<'_>,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "INSERT INTO email_verification_tokens
                (token_hash, user_id, purpose, email, created_at, expires_at, security_stamp)
         SELECT $1, $2, $3, $4, $5, $6, u.security_stamp FROM users u WHERE u.id = $2",
        token.hash.as_bytes(),
        token.user_id,
        token.purpose.as_str(),
        token.email,
        now,
        token.expires_at,
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// The account a token (usable or not) was issued to, read without a lock:
/// the caller locks the account before it consumes the token.
#[tracing::instrument(skip_all)]
pub async fn owner(tx: &mut PgConnection, hash: &TokenHash) -> Result<Option<Uuid>, AppError> {
    Ok(sqlx::query_scalar!(
        "SELECT user_id FROM email_verification_tokens WHERE token_hash = $1",
        hash.as_bytes(),
    )
    .fetch_optional(tx)
    .await?)
}

/// A token that was just consumed.
#[derive(Debug, Clone)]
pub struct ConsumedToken {
    pub user_id: Uuid,
    pub purpose: Purpose,
    pub email: String,
}

/// Consumes a usable token. Of concurrent calls with one token exactly one
/// gets `Some`: the row lock makes the others re-check `consumed_at` after
/// the winner commits.
#[tracing::instrument(skip_all)]
pub async fn consume(
    tx: &mut PgConnection,
    hash: &TokenHash,
    now: DateTime<Utc>,
) -> Result<Option<ConsumedToken>, AppError> {
    let Some(row) = sqlx::query!(
        "UPDATE email_verification_tokens t SET consumed_at = $2
           FROM users u
          WHERE t.token_hash = $1 AND t.consumed_at IS NULL AND t.superseded_at IS NULL
            AND t.expires_at > $2
            AND u.id = t.user_id AND u.security_stamp = t.security_stamp
         RETURNING t.user_id, t.purpose, t.email",
        hash.as_bytes(),
        now,
    )
    .fetch_optional(tx)
    .await?
    else {
        return Ok(None);
    };
    let purpose = Purpose::try_from(row.purpose).map_err(|e| AppError::internal(anyhow::anyhow!(e)))?;
    Ok(Some(ConsumedToken {
        user_id: row.user_id,
        purpose,
        email: row.email,
    }))
}
