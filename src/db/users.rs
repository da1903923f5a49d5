//! The `users` table.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::User;
use crate::error::AppError;

/// A `users` row minus the password hash; it leaves `db` as a `User`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(super) struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub full_name: String,
    pub phone: String,
    pub image_url: String,
    pub email_verified: bool,
    pub roles: Vec<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        Self {
            id: r.id,
            email: r.email,
            username: r.username,
            full_name: r.full_name,
            phone: r.phone,
            image_url: r.image_url,
            email_verified: r.email_verified,
            roles: r.roles,
            disabled: r.disabled_at.is_some(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Columns of `UserRow`, for queries that join other tables.
pub const USER_COLUMNS: &str = "u.id, u.email, u.username, u.full_name, u.phone, u.image_url, \
     u.email_verified, u.roles, u.disabled_at, u.created_at, u.updated_at";

pub struct NewUserRow<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub username: Option<&'a str>,
    pub full_name: &'a str,
    pub phone: &'a str,
    pub image_url: &'a str,
    pub password_hash: &'a str,
    pub now: DateTime<Utc>,
}

/// Inserts an account. Uniqueness is the database's job: a violation of the
/// email or username index (also under a race) becomes ALREADY_EXISTS.
#[tracing::instrument(skip_all)]
pub async fn insert<'e>(db: impl PgExecutor<'e>, new: NewUserRow<'_>) -> Result<User, AppError> {
    sqlx::query_as!(UserRow, "INSERT INTO users AS u (id, email, username, full_name, phone, image_url, password_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
         RETURNING u.id, u.email, u.username, u.full_name, u.phone, u.image_url, u.email_verified,
                   u.roles, u.disabled_at, u.created_at, u.updated_at", new.id, new.email, new.username, new.full_name, new.phone, new.image_url, new.password_hash, new.now)
    .fetch_one(db)
    .await
    .map(User::from)
    .map_err(map_unique_violation)
}

fn map_unique_violation(err: sqlx::Error) -> AppError {
    if let sqlx::Error::Database(db) = &err {
        match db.constraint() {
            Some("users_email_key") => return AppError::EmailTaken,
            Some("users_username_key") => return AppError::UsernameTaken,
            _ => {}
        }
    }
    err.into()
}

/// An account with its password hash, for the password checks only.
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    /// The account has a live second factor.
    pub has_factor: bool,
}

#[derive(sqlx::FromRow)]
struct CredentialsRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
    has_factor: bool,
}

/// `u.email` equals `$1` in any letter case. The expression of the unique
/// index `users_email_key`, so lookups use it and agree with it on which
/// addresses are the same.
pub const EMAIL_MATCHES: &str = r#"lower(u.email COLLATE "und-x-icu") = lower($1 COLLATE "und-x-icu")"#;

pub enum LoginKey<'a> {
    Email(&'a str),
    Username(&'a str),
}

impl<'a> LoginKey<'a> {
    /// The SQL condition on `users u` (any letter case, using the unique
    /// indexes' expressions) and the value to bind as `$1`.
    fn condition(self) -> (&'static str, &'a str) {
        match self {
            Self::Email(e) => (EMAIL_MATCHES, e),
            Self::Username(n) => ("lower(u.username) = lower($1)", n),
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn find_credentials(db: &PgPool, key: LoginKey<'_>) -> Result<Option<Credentials>, AppError> {
    let (condition, value) = key.condition();
    let sql = format!(
        "SELECT {USER_COLUMNS}, u.password_hash,
                EXISTS (SELECT 1 FROM factors f WHERE f.user_id = u.id AND f.confirmed_at IS NOT NULL) AS has_factor
           FROM users u WHERE {condition}"
    );
    Ok(sqlx::query_as::<_, CredentialsRow>(&sql)
        .bind(value)
        .fetch_optional(db)
        .await?
        .map(|r| Credentials {
            user: r.user.into(),
            password_hash: r.password_hash,
            has_factor: r.has_factor,
        }))
}

#[tracing::instrument(skip_all)]
pub async fn password_hash<'e>(db: impl PgExecutor<'e>, user_id: Uuid) -> Result<Option<String>, AppError> {
    Ok(
        sqlx::query_scalar!("SELECT password_hash FROM users WHERE id = $1", user_id)
            .fetch_optional(db)
            .await?,
    )
}

#[tracing::instrument(skip_all)]
pub async fn set_password_hash<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1",
        user_id,
        hash,
        now
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Replaces the hash only if it is still `old`; false when it changed.
#[tracing::instrument(skip_all)]
pub async fn replace_password_hash<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    old: &str,
    new: &str,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let done = sqlx::query!(
        "UPDATE users SET password_hash = $3, updated_at = $4 WHERE id = $1 AND password_hash = $2",
        user_id,
        old,
        new,
        now
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Rehash after a parameter upgrade, only if the hash is still the one we
/// verified (a concurrent password change wins).
#[tracing::instrument(skip_all)]
pub async fn upgrade_password_hash<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    old: &str,
    new: &str,
) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
        user_id,
        old,
        new
    )
    .execute(db)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn by_id<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<User>, AppError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1");
    Ok(sqlx::query_as::<_, UserRow>(&sql)
        .bind(id)
        .fetch_optional(db)
        .await?
        .map(User::from))
}

/// The accounts among `ids` that exist, in no particular order.
#[tracing::instrument(skip_all, fields(count = ids.len()))]
pub async fn by_ids<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> Result<Vec<User>, AppError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ANY($1)");
    Ok(sqlx::query_as::<_, UserRow>(&sql)
        .bind(ids)
        .fetch_all(db)
        .await?
        .into_iter()
        .map(User::from)
        .collect())
}

/// The account with this email (any letter case) or username (any case).
#[tracing::instrument(skip_all)]
pub async fn by_login<'e>(db: impl PgExecutor<'e>, key: LoginKey<'_>) -> Result<Option<User>, AppError> {
    let (condition, value) = key.condition();
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE {condition}");
    Ok(sqlx::query_as::<_, UserRow>(&sql)
        .bind(value)
        .fetch_optional(db)
        .await?
        .map(User::from))
}

/// Where a page of accounts starts: after this creation time and id (the
/// order of `users_created_at_id_idx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagePosition {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[tracing::instrument(skip_all, fields(limit))]
pub async fn page<'e>(
    db: impl PgExecutor<'e>,
    after: Option<PagePosition>,
    limit: i64,
) -> Result<Vec<User>, AppError> {
    // Two statements, not one with `$1 IS NULL OR (…) > ($1, $2)`: the OR
    // leaves the index no condition to start from, so once the statement
    // runs with a generic plan, every page walks the index from the first
    // account and filters its way to the cursor (the query-plan test
    // reports such walks).
    let rows = match after {
        None => {
            let sql = format!("SELECT {USER_COLUMNS} FROM users u ORDER BY u.created_at, u.id LIMIT $1");
            sqlx::query_as::<_, UserRow>(&sql)
                .bind(limit)
                .fetch_all(db)
                .await?
        }
        Some(after) => {
            let sql = format!(
                "SELECT {USER_COLUMNS} FROM users u
                  WHERE (u.created_at, u.id) > ($1, $2)
                  ORDER BY u.created_at, u.id LIMIT $3"
            );
            sqlx::query_as::<_, UserRow>(&sql)
                .bind(after.created_at)
                .bind(after.id)
                .bind(limit)
                .fetch_all(db)
                .await?
        }
    };
    Ok(rows.into_iter().map(User::from).collect())
}

/// Disables (keeping the first time) or enables an account; `None` when
/// there is no such account.
#[tracing::instrument(skip_all, fields(%id, disabled))]
pub async fn set_disabled<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    disabled: bool,
    now: DateTime<Utc>,
) -> Result<Option<User>, AppError> {
    let sql = format!(
        "UPDATE users u SET disabled_at = CASE WHEN $2 THEN coalesce(u.disabled_at, $3) END, updated_at = $3
          WHERE u.id = $1 RETURNING {USER_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, UserRow>(&sql)
        .bind(id)
        .bind(disabled)
        .bind(now)
        .fetch_optional(db)
        .await?
        .map(User::from))
}

#[tracing::instrument(skip_all, fields(%id))]
pub async fn set_roles<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    roles: &[&str],
    now: DateTime<Utc>,
) -> Result<Option<User>, AppError> {
    let sql =
        format!("UPDATE users u SET roles = $2, updated_at = $3 WHERE u.id = $1 RETURNING {USER_COLUMNS}");
    Ok(sqlx::query_as::<_, UserRow>(&sql)
        .bind(id)
        .bind(roles)
        .bind(now)
        .fetch_optional(db)
        .await?
        .map(User::from))
}

/// Marks the account's address verified, provided it is still `email` (in
/// any letter case) and the account is enabled; `None` otherwise.
/// `updated_at` moves only when the flag does.
#[tracing::instrument(skip_all)]
pub async fn mark_email_verified(
    tx: &mut PgConnection,
    id: Uuid,
    email: &str,
    now: DateTime<Utc>,
) -> Result<Option<User>, AppError> {
    let sql = format!(
        "UPDATE users u SET email_verified = true,
                updated_at = CASE WHEN u.email_verified THEN u.updated_at ELSE $3 END
          WHERE u.id = $2 AND {EMAIL_MATCHES} AND u.disabled_at IS NULL
         RETURNING {USER_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, UserRow>(&sql)
        .bind(email)
        .bind(id)
        .bind(now)
        .fetch_optional(tx)
        .await?
        .map(User::from))
}

/// Moves an enabled account to `email`, verified; `None` when there is no
/// such account. Another account with the address is EMAIL_TAKEN, by the
/// unique index, also when both race for it.
#[tracing::instrument(skip_all)]
pub async fn switch_email(
    tx: &mut PgConnection,
    id: Uuid,
    email: &str,
    now: DateTime<Utc>,
) -> Result<Option<User>, AppError> {
    let sql = format!(
        "UPDATE users u SET email = $2, email_verified = true, updated_at = $3
          WHERE u.id = $1 AND u.disabled_at IS NULL
         RETURNING {USER_COLUMNS}"
    );
    sqlx::query_as::<_, UserRow>(&sql)
        .bind(id)
        .bind(email)
        .bind(now)
        .fetch_optional(tx)
        .await
        .map(|row| row.map(User::from))
        .map_err(map_unique_violation)
}

/// New values for the profile fields an UpdateMe names; `None` leaves a
/// field as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProfileUpdate<'a> {
    /// `Some(None)` removes the username.
    pub username: Option<Option<&'a str>>,
    pub full_name: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub image_url: Option<&'a str>,
}

/// Applies a profile update if the session is live, in one statement:
/// `None` when it is not. A username another account holds is
/// USERNAME_TAKEN, by the unique index.
#[tracing::instrument(skip_all)]
pub async fn update_profile<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    session_id: Uuid,
    update: &ProfileUpdate<'_>,
    now: DateTime<Utc>,
) -> Result<Option<User>, AppError> {
    let sql = format!(
        "UPDATE users u
            SET username  = CASE WHEN $3 THEN $4 ELSE u.username END,
                full_name = coalesce($5, u.full_name),
                phone     = coalesce($6, u.phone),
                image_url = coalesce($7, u.image_url),
                updated_at = $8
          WHERE u.id = $1
            AND EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = $1 AND s.id = $2
                           AND s.revoked_at IS NULL AND s.idle_expires_at > $8
                           AND s.absolute_expires_at > $8)
         RETURNING {USER_COLUMNS}"
    );
    sqlx::query_as::<_, UserRow>(&sql)
        .bind(user_id)
        .bind(session_id)
        .bind(update.username.is_some())
        .bind(update.username.flatten())
        .bind(update.full_name)
        .bind(update.phone)
        .bind(update.image_url)
        .bind(now)
        .fetch_optional(db)
        .await
        .map(|row| row.map(User::from))
        .map_err(map_unique_violation)
}

/// Locks an account for deletion (FOR UPDATE) until the end of the
/// transaction and returns it.
#[tracing::instrument(skip_all)]
pub async fn lock(tx: &mut PgConnection, id: Uuid) -> Result<Option<User>, AppError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 FOR UPDATE");
    Ok(sqlx::query_as::<_, UserRow>(&sql)
        .bind(id)
        .fetch_optional(tx)
        .await?
        .map(User::from))
}

/// Moves the account's security stamp on: every link issued under the old
/// stamp (verification, address change, password reset) stops working.
/// Called in the transaction of each change of who controls the account.
#[tracing::instrument(skip_all, fields(%id))]
pub async fn rotate_security_stamp(tx: &mut PgConnection, id: Uuid) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE users SET security_stamp = security_stamp + 1 WHERE id = $1",
        id
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Deletes an account; its sessions, refresh tokens, reset and
/// verification tokens and the mail sent about it go with it by cascade.
/// Returns whether it existed.
#[tracing::instrument(skip_all)]
pub async fn delete(tx: &mut PgConnection, id: Uuid) -> Result<bool, AppError> {
    let done = sqlx::query!("DELETE FROM users WHERE id = $1", id)
        .execute(tx)
        .await?;
    Ok(done.rows_affected() == 1)
}
