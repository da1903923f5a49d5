//! The `passkeys` and `webauthn_ceremonies` tables.
//!
//! A ceremony is taken (deleted and returned) by one statement, so it is
//! finished once whichever replica gets it; a login moves a passkey's
//! signature counter forward by one conditional UPDATE, so two copies of
//! one authenticator cannot both be accepted at the same count.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::PasskeyBackup;
use crate::error::AppError;

/// What a ceremony was started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    Registration,
    Authentication,
}

impl CeremonyKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Authentication => "authentication",
        }
    }
}

pub struct NewCeremony<'a> {
    pub challenge: &'a [u8],
    pub kind: CeremonyKind,
    pub user_id: Option<Uuid>,
    /// A login named an account (`user_id` is that account, or NULL when
    /// it has no passkey).
    pub named: bool,
    pub name: Option<&'a str>,
    pub state: &'a Value,
    pub expires_at: DateTime<Utc>,
}

/// A ceremony taken for finishing.
#[derive(Debug, Clone)]
pub struct Ceremony {
    pub user_id: Option<Uuid>,
    pub named: bool,
    pub name: Option<String>,
    pub state: Value,
}

#[tracing::instrument(skip_all)]
pub async fn insert_ceremony<'e>(
    db: impl PgExecutor<'e>,
    c: &NewCeremony<'_>,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "INSERT INTO webauthn_ceremonies (challenge, kind, user_id, named, name, state, created_at, expires_at)
         VALUES ($1, $2, $3, $8, $4, $5, $6, $7)",
        c.challenge,
        c.kind.as_str(),
        c.user_id,
        c.name,
        c.state,
        now,
        c.expires_at,
        c.named
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Removes and returns an unexpired ceremony of `kind`: it is finished at
/// most once, whatever the outcome of the finish.
#[tracing::instrument(skip_all)]
pub async fn take_ceremony<'e>(
    db: impl PgExecutor<'e>,
    challenge: &[u8],
    kind: CeremonyKind,
    now: DateTime<Utc>,
) -> Result<Option<Ceremony>, AppError> {
    Ok(sqlx::query_as!(
        Ceremony,
        r#"DELETE FROM webauthn_ceremonies
            WHERE challenge = $1 AND kind = $2 AND expires_at > $3
        RETURNING user_id, named, name, state AS "state: Value""#,
        challenge,
        kind.as_str(),
        now
    )
    .fetch_optional(db)
    .await?)
}

/// The credential ids of a user's passkeys (to exclude at registration, to
/// allow at a named login).
#[tracing::instrument(skip_all)]
pub async fn credential_ids<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<Vec<Vec<u8>>, AppError> {
    Ok(sqlx::query_scalar!(
        "SELECT credential_id FROM passkeys WHERE user_id = $1 ORDER BY factor_id",
        user_id
    )
    .fetch_all(db)
    .await?)
}

/// A stored passkey, found by the credential id an assertion names.
#[derive(Debug, Clone)]
pub struct StoredPasskey {
    pub factor_id: Uuid,
    pub user_id: Uuid,
    pub credential: Value,
}

#[tracing::instrument(skip_all)]
pub async fn by_credential_id<'e>(
    db: impl PgExecutor<'e>,
    credential_id: &[u8],
) -> Result<Option<StoredPasskey>, AppError> {
    Ok(sqlx::query_as!(
        StoredPasskey,
        r#"SELECT p.factor_id, p.user_id, p.credential AS "credential: Value"
             FROM passkeys p JOIN factors f ON f.id = p.factor_id
            WHERE p.credential_id = $1 AND f.confirmed_at IS NOT NULL"#,
        credential_id
    )
    .fetch_optional(db)
    .await?)
}

pub struct NewPasskeyRow<'a> {
    pub factor_id: Uuid,
    pub user_id: Uuid,
    pub name: &'a str,
    pub credential_id: &'a [u8],
    pub credential: &'a Value,
    pub sign_count: u32,
    pub backup: PasskeyBackup,
}

/// Stores a registered passkey as a live factor. `false` when the
/// credential is registered already (to this account or another); nothing
/// is written then.
#[tracing::instrument(skip_all)]
pub async fn insert(
    tx: &mut PgConnection,
    p: &NewPasskeyRow<'_>,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let taken = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM passkeys WHERE credential_id = $1) AS "taken!""#,
        p.credential_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        return Ok(false);
    }
    sqlx::query!(
        "INSERT INTO factors (id, user_id, kind, name, created_at, confirmed_at)
         VALUES ($1, $2, 'passkey', $3, $4, $4)",
        p.factor_id,
        p.user_id,
        p.name,
        now
    )
    .execute(&mut *tx)
    .await?;
    // Two registrations of one credential racing: the unique index lets
    // one through; the other's transaction is rolled back by its caller.
    let inserted = sqlx::query!(
        "INSERT INTO passkeys (factor_id, user_id, credential_id, credential, sign_count, backup_eligible, backed_up)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (credential_id) DO NOTHING",
        p.factor_id,
        p.user_id,
        p.credential_id,
        p.credential,
        i64::from(p.sign_count),
        p.backup.eligible,
        p.backup.backed_up
    )
    .execute(&mut *tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Live passkeys of a user.
#[tracing::instrument(skip_all)]
pub async fn count<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<i64, AppError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM passkeys WHERE user_id = $1"#,
        user_id
    )
    .fetch_one(db)
    .await?)
}

/// A login's outcome for the passkey that signed it.
pub struct Use<'a> {
    pub factor_id: Uuid,
    pub credential: &'a Value,
    pub sign_count: u32,
    pub backup: PasskeyBackup,
}

/// Records a login: the counter must move forward (or stay 0 on both
/// sides, for authenticators without one). `false` when it did not: a
/// copy of the authenticator signed with a count already seen, here or on
/// another replica.
#[tracing::instrument(skip_all)]
pub async fn record_use<'e>(
    db: impl PgExecutor<'e>,
    u: &Use<'_>,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let done = sqlx::query!(
        "WITH p AS (
            UPDATE passkeys SET credential = $2, sign_count = $3, backup_eligible = $4, backed_up = $5
             WHERE factor_id = $1 AND (sign_count < $3 OR ($3 = 0 AND sign_count = 0))
            RETURNING factor_id)
         UPDATE factors f SET last_used_at = $6 FROM p WHERE f.id = p.factor_id",
        u.factor_id,
        u.credential,
        i64::from(u.sign_count),
        u.backup.eligible,
        u.backup.backed_up,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
