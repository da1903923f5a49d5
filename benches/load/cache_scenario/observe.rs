//! Seeing from outside what authd's session cache holds, through the API
//! and SQL only.
//!
//! The trick: a session row can be made to lapse in the database without
//! any notification (the trigger announces only `revoked_at` changes). A
//! GetMe for it then still succeeds while the cache holds the session, and
//! is refused with SESSION_REVOKED once the cache has let go of it and
//! authd reads the row. This works with any cache that trusts its entries
//! until a notification evicts them, which is what keeps GetMe cheap.

use std::time::{Duration, Instant};

use authd::pb::auth::v1::auth_service_client::AuthServiceClient;
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

use super::population::LiveSession;
use crate::client::{get_me, session_still_answers};

/// Lets sessions lapse in the database without telling the cache.
pub async fn lapse_silently(db: &PgPool, sessions: &[Uuid]) {
    sqlx::query("UPDATE sessions SET idle_expires_at = now() - interval '1 second' WHERE id = ANY($1)")
        .bind(sessions)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("cache scenario: letting sessions lapse failed: {e}"));
}

async fn revive(db: &PgPool, session: Uuid) {
    sqlx::query("UPDATE sessions SET idle_expires_at = absolute_expires_at WHERE id = $1")
        .bind(session)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("cache scenario: reviving a session failed: {e}"));
}

/// Polls GetMe of a lapsed session until authd refuses it; how long that
/// took after `since`. Polls often at first and then less, so a backlog of
/// seconds costs few calls; the answer is late by at most a tenth.
pub async fn wait_until_evicted(
    client: &mut AuthServiceClient<Channel>,
    session: &LiveSession,
    since: Instant,
    give_up: Duration,
) -> Result<Duration, String> {
    loop {
        if !session_still_answers(client, &session.authorization).await? {
            return Ok(since.elapsed());
        }
        let waited = since.elapsed();
        if waited > give_up {
            return Err(format!("still_cached_after_{}s", give_up.as_secs()));
        }
        let pause = (waited / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
        tokio::time::sleep(pause).await;
    }
}

/// Empties the cache of everything cached before this scenario, so that
/// the population fits whatever bound the cache has, and returns how many
/// accounts were announced as changed.
///
/// Every account with a session that may be cached is "changed" (a no-op
/// UPDATE fires the same NOTIFY as a real change), then the sentinel's,
/// last. Notifications arrive in commit order and the cache handles them
/// in order, so once the sentinel's lapsed session is refused, every
/// earlier eviction has happened. Waiting matters: an eviction still in
/// flight would make the cache drop entries the warm-up is about to add.
pub async fn empty_the_cache(
    db: &PgPool,
    client: &mut AuthServiceClient<Channel>,
    sentinel: &LiveSession,
) -> u64 {
    // First the sentinel must be cached: GetMe caches it unless an eviction
    // races the read, so check, and try again if so.
    let mut attempts = 0;
    loop {
        get_me(client, &sentinel.authorization)
            .await
            .unwrap_or_else(|e| panic!("cache scenario: GetMe of the sentinel session failed: {e}"));
        lapse_silently(db, &[sentinel.session_id]).await;
        match session_still_answers(client, &sentinel.authorization).await {
            Ok(true) => break,
            Ok(false) => revive(db, sentinel.session_id).await,
            Err(e) => panic!("cache scenario: GetMe of the sentinel session failed: {e}"),
        }
        attempts += 1;
        assert!(
            attempts < 50,
            "cache scenario: authd never served the sentinel session from its cache; \
             is its change listener connected?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let announced = sqlx::query(
        "UPDATE users SET updated_at = updated_at
          WHERE id <> $1
            AND id IN (SELECT user_id FROM sessions WHERE revoked_at IS NULL AND absolute_expires_at > now())",
    )
    .bind(sentinel.user_id)
    .execute(db)
    .await
    .unwrap_or_else(|e| panic!("cache scenario: announcing account changes failed: {e}"))
    .rows_affected();
    sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
        .bind(sentinel.user_id)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("cache scenario: announcing the sentinel's change failed: {e}"));
    let give_up = Duration::from_secs(600);
    if let Err(e) = wait_until_evicted(client, sentinel, Instant::now(), give_up).await {
        panic!("cache scenario: emptying the cache: {e}");
    }
    announced
}

/// How many of `probes` (cached sessions, used for nothing else) authd
/// still answers from its cache once their rows have lapsed.
pub async fn count_cached(
    db: &PgPool,
    client: &mut AuthServiceClient<Channel>,
    probes: &[LiveSession],
) -> usize {
    let ids: Vec<Uuid> = probes.iter().map(|s| s.session_id).collect();
    lapse_silently(db, &ids).await;
    let mut cached = 0;
    for probe in probes {
        match session_still_answers(client, &probe.authorization).await {
            Ok(true) => cached += 1,
            Ok(false) => {}
            Err(e) => panic!("cache scenario: GetMe of a probe session failed: {e}"),
        }
    }
    cached
}
