//! The `server_secrets` table: secrets every replica must share.

use sqlx::PgPool;

use crate::error::AppError;

/// The secret called `name`: the first replica to ask stores `candidate`,
/// every later one reads what it stored.
#[tracing::instrument(skip_all, fields(name))]
pub async fn shared(db: &PgPool, name: &str, candidate: &[u8]) -> Result<Vec<u8>, AppError> {
    sqlx::query!(
        "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        name,
        candidate,
    )
    .execute(db)
    .await?;
    Ok(
        sqlx::query_scalar!("SELECT value FROM server_secrets WHERE name = $1", name)
            .fetch_one(db)
            .await?,
    )
}
