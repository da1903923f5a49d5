//! Secrets sealed under a data key, as the re-seal after a key rotation
//! reads and rewrites them: the TOTP secrets of `factors` and the
//! `Authorization` values of Shared Signals push streams.

use sqlx::PgPool;
use uuid::Uuid;

/// The associated data a factor's secret is sealed with: the factor's id
/// then its owner's, 16 raw bytes each. A sealed secret copied to another
/// factor or account then does not open.
pub fn factor_secret_aad(factor_id: Uuid, user_id: Uuid) -> [u8; 32] {
    let mut aad = [0u8; 32];
    aad[..16].copy_from_slice(factor_id.as_bytes());
    aad[16..].copy_from_slice(user_id.as_bytes());
    aad
}

/// The associated data a push stream's `Authorization` value is sealed
/// with: a label and the stream's id, so it opens for that stream only.
pub fn stream_authorization_aad(stream_id: Uuid) -> Vec<u8> {
    let mut aad = b"ssf-stream-authorization:".to_vec();
    aad.extend_from_slice(stream_id.as_bytes());
    aad
}

/// A push stream's sealed `Authorization` value as stored.
#[derive(Debug, Clone)]
pub struct SealedStreamAuthorization {
    pub stream_id: Uuid,
    pub key_id: String,
    pub sealed: Vec<u8>,
}

/// Every stream authorization not sealed under `key_id` (streams are few:
/// a couple of hundred per receiver).
pub async fn stream_authorizations_not_under(
    db: &PgPool,
    key_id: &str,
) -> Result<Vec<SealedStreamAuthorization>, sqlx::Error> {
    sqlx::query_as!(
        SealedStreamAuthorization,
        r#"SELECT id AS stream_id, authorization_key_id AS "key_id!", authorization_sealed AS "sealed!"
             FROM ssf_streams
            WHERE authorization_sealed IS NOT NULL AND authorization_key_id IS NOT NULL
              AND authorization_key_id <> $1
            ORDER BY id"#,
        key_id,
    )
    .fetch_all(db)
    .await
}

/// Stores a re-sealed stream authorization under `key_id` if the row still
/// holds what was read; whether it did.
pub async fn replace_stream_authorization(
    db: &PgPool,
    key_id: &str,
    old: &SealedStreamAuthorization,
    sealed: &[u8],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE ssf_streams SET authorization_sealed = $4, authorization_key_id = $5
          WHERE id = $1 AND authorization_key_id = $2 AND authorization_sealed = $3",
        old.stream_id,
        old.key_id,
        old.sealed,
        sealed,
        key_id,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// A factor's secret as stored.
#[derive(Debug, Clone)]
pub struct SealedFactorSecret {
    pub factor_id: Uuid,
    pub user_id: Uuid,
    pub key_id: String,
    pub sealed: Vec<u8>,
}

/// A secret sealed anew, to replace `old` if the row still holds it.
#[derive(Debug, Clone)]
pub struct Resealed {
    pub old: SealedFactorSecret,
    pub sealed: Vec<u8>,
}

/// Up to `limit` factor secrets not sealed under `key_id`, in id order from
/// after `after`: the caller walks the table once even when some rows
/// cannot be re-sealed.
pub async fn factor_secrets_not_under(
    db: &PgPool,
    key_id: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SealedFactorSecret>, sqlx::Error> {
    sqlx::query_as!(
        SealedFactorSecret,
        r#"SELECT id AS factor_id, user_id, secret_key_id AS "key_id!", secret_sealed AS "sealed!"
           FROM factors
          WHERE secret_sealed IS NOT NULL AND secret_key_id IS NOT NULL
            AND secret_key_id <> $1
            AND ($2::uuid IS NULL OR id > $2)
          ORDER BY id
          LIMIT $3"#,
        key_id,
        after,
        limit,
    )
    .fetch_all(db)
    .await
}

/// Stores each re-sealed secret under `key_id`, in one statement, but only
/// where the row still holds the value that was read: a secret changed or
/// removed meanwhile (a new enrolment, another re-seal) is left as it is.
/// Returns how many rows were replaced.
pub async fn replace_factor_secrets(
    db: &PgPool,
    key_id: &str,
    resealed: &[Resealed],
) -> Result<u64, sqlx::Error> {
    if resealed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = resealed.iter().map(|r| r.old.factor_id).collect();
    let old_key_ids: Vec<String> = resealed.iter().map(|r| r.old.key_id.clone()).collect();
    let old_sealed: Vec<&[u8]> = resealed.iter().map(|r| r.old.sealed.as_slice()).collect();
    let new_sealed: Vec<&[u8]> = resealed.iter().map(|r| r.sealed.as_slice()).collect();
    let done = sqlx::query!(
        "UPDATE factors f
            SET secret_sealed = r.new_sealed, secret_key_id = $5
           FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::bytea[])
                AS r(id, old_key_id, old_sealed, new_sealed)
          WHERE f.id = r.id
            AND f.secret_key_id = r.old_key_id
            AND f.secret_sealed = r.old_sealed",
        &ids,
        &old_key_ids,
        &old_sealed as _,
        &new_sealed as _,
        key_id,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// How many secrets (factor secrets and stream authorizations) each data
/// key seals, by key id.
pub async fn secrets_by_key(db: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT key_id AS "key_id!", count(*) AS "sealed!"
             FROM (SELECT secret_key_id AS key_id FROM factors WHERE secret_key_id IS NOT NULL
                   UNION ALL
                   SELECT authorization_key_id FROM ssf_streams WHERE authorization_key_id IS NOT NULL) s
            GROUP BY key_id
            ORDER BY key_id"#,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.key_id, r.sealed)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aad_is_the_factor_then_its_owner() {
        let factor = Uuid::new_v4();
        let user = Uuid::new_v4();
        let aad = factor_secret_aad(factor, user);
        assert_eq!(&aad[..16], factor.as_bytes());
        assert_eq!(&aad[16..], user.as_bytes());
        assert_ne!(aad, factor_secret_aad(user, factor));
    }
}
