//! Many accounts with one live session each, made quickly: rows inserted
//! with SQL (no argon2, no Register), then one Refresh per session through
//! the API for an access token that authd itself signed. The cache scenario
//! and the login-mfa scenario use them.

use std::time::{Duration, Instant};

use authd::crypto::opaque::{NewToken, TokenKind};
use authd::pb::auth::v1 as pb;
use sqlx::PgPool;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::client::{authorization, call_each, code_label};

/// A live session and the bearer header of an access token for it.
#[derive(Clone)]
pub struct LiveSession {
    pub email: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub authorization: MetadataValue<Ascii>,
}

pub struct Timings {
    pub sql: Duration,
    pub refresh: Duration,
}

/// Rows per INSERT: big enough to be fast, small enough for one message.
const CHUNK: usize = 10_000;

/// What an account's `password_hash` holds when nobody logs in to it.
pub const NO_PASSWORD: &str = "no password: made by the load generator";

/// `n` accounts (`PREFIX-I@example.com`) with one session each, all with
/// the same `password_hash` (a PHC string authd wrote, or [`NO_PASSWORD`]).
/// Panics if any step fails: without them there is nothing to measure.
pub async fn create(
    db: &PgPool,
    channels: &[Channel],
    prefix: &str,
    password_hash: &str,
    n: usize,
    concurrency: usize,
) -> (Vec<LiveSession>, Timings) {
    let started = Instant::now();
    let users: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let sessions: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<NewToken> = (0..n)
        .map(|_| NewToken::generate(TokenKind::Refresh).expect("random refresh token"))
        .collect();
    let emails: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}@example.com")).collect();
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let hashes: Vec<Vec<u8>> = tokens[start..end]
            .iter()
            .map(|t| t.hash.as_bytes().to_vec())
            .collect();
        insert_chunk(
            db,
            &users[start..end],
            &emails[start..end],
            password_hash,
            &sessions[start..end],
            &hashes,
        )
        .await
        .unwrap_or_else(|e| panic!("inserting accounts and sessions failed: {e}"));
    }
    let sql = started.elapsed();

    let started = Instant::now();
    let presented: Vec<String> = tokens.iter().map(|t| t.expose().to_owned()).collect();
    let answers = call_each(
        channels,
        &presented,
        concurrency,
        |mut client, refresh_token| async move {
            let r = client
                .refresh(pb::RefreshRequest { refresh_token })
                .await
                .map_err(|s| code_label(&s))?;
            r.into_inner()
                .tokens
                .map(|t| authorization(&t.access_token))
                .ok_or_else(|| "no_tokens".to_owned())
        },
    )
    .await;
    let mut live = Vec::with_capacity(n);
    for (((email, user_id), session_id), answer) in emails.into_iter().zip(users).zip(sessions).zip(answers) {
        let authorization = answer.unwrap_or_else(|e| panic!("Refresh of a new session failed: {e}"));
        live.push(LiveSession {
            email,
            user_id,
            session_id,
            authorization,
        });
    }
    let refresh = started.elapsed();
    (live, Timings { sql, refresh })
}

async fn insert_chunk(
    db: &PgPool,
    users: &[Uuid],
    emails: &[String],
    password_hash: &str,
    sessions: &[Uuid],
    refresh_hashes: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at, updated_at)
         SELECT id, email, $3, now(), now()
           FROM UNNEST($1::uuid[], $2::text[]) AS t(id, email)",
    )
    .bind(users)
    .bind(emails)
    .bind(password_hash)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, created_at, last_used_at, idle_expires_at, absolute_expires_at)
         SELECT id, user_id, now(), now(), now() + interval '1 day', now() + interval '1 day'
           FROM UNNEST($1::uuid[], $2::uuid[]) AS t(id, user_id)",
    )
    .bind(sessions)
    .bind(users)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at)
         SELECT token_hash, session_id, now()
           FROM UNNEST($1::bytea[], $2::uuid[]) AS t(token_hash, session_id)",
    )
    .bind(refresh_hashes)
    .bind(sessions)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
