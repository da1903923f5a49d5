//! The `service_accounts` and `service_account_keys` tables.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::crypto::opaque::TokenHash;
use crate::error::AppError;

/// The caller behind a service key, as the credential check needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyOwner {
    pub account_id: Uuid,
    pub key_id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
}

#[tracing::instrument(skip_all)]
pub async fn find_by_key<'e>(db: impl PgExecutor<'e>, key: &TokenHash) -> Result<Option<KeyOwner>, AppError> {
    Ok(sqlx::query_as!(
        KeyOwner,
        "SELECT a.id AS account_id, k.id AS key_id, a.name, a.scopes
           FROM service_account_keys k JOIN service_accounts a ON a.id = k.account_id
          WHERE k.key_hash = $1",
        key.as_bytes()
    )
    .fetch_optional(db)
    .await?)
}

/// The key `key_id` and its account as they are now; `None` once either is
/// gone.
#[tracing::instrument(skip_all)]
pub async fn find_by_key_id<'e>(db: impl PgExecutor<'e>, key_id: Uuid) -> Result<Option<KeyOwner>, AppError> {
    Ok(sqlx::query_as!(
        KeyOwner,
        "SELECT a.id AS account_id, k.id AS key_id, a.name, a.scopes
           FROM service_account_keys k JOIN service_accounts a ON a.id = k.account_id
          WHERE k.id = $1",
        key_id
    )
    .fetch_optional(db)
    .await?)
}

/// Records a key's use (callers write at most about once a minute per key).
#[tracing::instrument(skip_all)]
pub async fn touch_key<'e>(
    db: impl PgExecutor<'e>,
    key_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE service_account_keys SET last_used_at = $2 WHERE id = $1",
        key_id,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// What `add_key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAdded {
    /// A new account with its first key.
    NewAccount { account_id: Uuid, key_id: Uuid },
    /// Another key for an existing account with these very scopes.
    Rotation { account_id: Uuid, key_id: Uuid },
    /// The account exists with other scopes; nothing was written.
    ScopesDiffer { existing: Vec<String> },
}

/// Scopes as they are stored: sorted and without duplicates, so comparing
/// two lists compares the sets they name.
pub fn scope_set(scopes: &[String]) -> Vec<String> {
    let mut set = scopes.to_vec();
    set.sort();
    set.dedup();
    set
}

/// Creates the account `name` with `scopes` and a key, or adds a key to the
/// account of that name when its scopes are the same set: one transaction,
/// the name's row locked, so two concurrent creates make one account.
#[tracing::instrument(skip_all, fields(name))]
pub async fn add_key(
    db: &PgPool,
    name: &str,
    scopes: &[String],
    key: &TokenHash,
    now: DateTime<Utc>,
) -> Result<KeyAdded, AppError> {
    let scopes = scope_set(scopes);
    let mut tx = db.begin().await?;
    let inserted: Option<Uuid> = sqlx::query_scalar!(
        "INSERT INTO service_accounts (id, name, scopes, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING RETURNING id",
        Uuid::new_v4(),
        name,
        &scopes,
        now
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (account_id, is_new) = match inserted {
        Some(id) => (id, true),
        None => {
            let row = sqlx::query!(
                "SELECT id, scopes FROM service_accounts WHERE name = $1 FOR UPDATE",
                name
            )
            .fetch_one(&mut *tx)
            .await?;
            let (id, existing) = (row.id, row.scopes);
            if scope_set(&existing) != scopes {
                return Ok(KeyAdded::ScopesDiffer { existing });
            }
            (id, false)
        }
    };
    let key_id = Uuid::new_v4();
    sqlx::query!(
        "INSERT INTO service_account_keys (id, account_id, key_hash, created_at) VALUES ($1, $2, $3, $4)",
        key_id,
        account_id,
        key.as_bytes(),
        now
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(if is_new {
        KeyAdded::NewAccount { account_id, key_id }
    } else {
        KeyAdded::Rotation { account_id, key_id }
    })
}

/// One key of an account, never its secret.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeySummary {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An account and its keys.
#[derive(Debug, Clone)]
pub struct AccountSummary {
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub keys: Vec<KeySummary>,
}

#[tracing::instrument(skip_all)]
pub async fn list(db: &PgPool) -> Result<Vec<AccountSummary>, AppError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        account_id: Uuid,
        name: String,
        scopes: Vec<String>,
        account_created_at: DateTime<Utc>,
        key_id: Option<Uuid>,
        key_created_at: Option<DateTime<Utc>>,
        last_used_at: Option<DateTime<Utc>>,
    }
    let rows = sqlx::query_as!(
        Row,
        "SELECT a.id AS account_id, a.name, a.scopes, a.created_at AS account_created_at,
                k.id AS key_id, k.created_at AS key_created_at, k.last_used_at
           FROM service_accounts a LEFT JOIN service_account_keys k ON k.account_id = a.id
          ORDER BY a.name, k.created_at"
    )
    .fetch_all(db)
    .await?;
    let mut accounts: Vec<(Uuid, AccountSummary)> = Vec::new();
    for row in rows {
        if accounts.last().is_none_or(|(id, _)| *id != row.account_id) {
            accounts.push((
                row.account_id,
                AccountSummary {
                    name: row.name,
                    scopes: row.scopes,
                    created_at: row.account_created_at,
                    keys: Vec::new(),
                },
            ));
        }
        if let (Some(id), Some(created_at), Some((_, account))) =
            (row.key_id, row.key_created_at, accounts.last_mut())
        {
            account.keys.push(KeySummary {
                id,
                created_at,
                last_used_at: row.last_used_at,
            });
        }
    }
    Ok(accounts.into_iter().map(|(_, a)| a).collect())
}

/// Deletes the account and every key of it; false when there is none.
#[tracing::instrument(skip_all, fields(name))]
pub async fn delete_account(db: &PgPool, name: &str) -> Result<bool, AppError> {
    let done = sqlx::query!("DELETE FROM service_accounts WHERE name = $1", name)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes one key of the account `name`; false when it has no such key.
#[tracing::instrument(skip_all, fields(name, %key_id))]
pub async fn delete_key(db: &PgPool, name: &str, key_id: Uuid) -> Result<bool, AppError> {
    let done = sqlx::query!(
        "DELETE FROM service_account_keys k USING service_accounts a
          WHERE k.id = $2 AND k.account_id = a.id AND a.name = $1",
        name,
        key_id
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(skip_all, fields(name))]
pub async fn exists(db: &PgPool, name: &str) -> Result<bool, AppError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM service_accounts WHERE name = $1) AS "taken!""#,
        name
    )
    .fetch_one(db)
    .await?)
}
