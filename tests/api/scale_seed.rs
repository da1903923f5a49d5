//! The bulk seed the scale checks build on: it fills every big table with
//! rows authd accepts as its own.

use sqlx::Connection as _;

use crate::helpers::{fresh_database, spawn_app_on};
use crate::seed::{Scale, seed, seeded_email};

const PASSWORD: &str = "seeded accounts share this passphrase";

/// A hash of [`PASSWORD`] as authd writes it: registers an account on `app`
/// and reads its hash back.
pub async fn password_hash_of(app: &crate::helpers::TestApp) -> String {
    let email = format!("hash-{}@example.com", uuid::Uuid::new_v4().simple());
    app.register(&email, PASSWORD).await;
    sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_seed_fills_every_table_with_rows_authd_accepts() {
    let url = fresh_database().await;
    let app = spawn_app_on(&url, |_| {}).await;
    let hash = password_hash_of(&app).await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let count = |table: &str| format!("SELECT count(*) FROM {table}");
    // Registering the hash's account wrote a few rows of its own.
    let mut before = std::collections::HashMap::new();
    for table in crate::seed::seeded_tables() {
        let n: i64 = sqlx::query_scalar(&count(table))
            .fetch_one(&mut db)
            .await
            .unwrap();
        before.insert(table, n);
    }
    let scale = Scale::accounts(2_000);
    let report = seed(&mut db, scale, &hash).await.unwrap();

    for (table, expected) in [
        ("sessions", scale.sessions()),
        ("refresh_tokens", scale.sessions() + scale.accounts / 2),
        ("password_reset_tokens", scale.accounts / 20),
        ("email_verification_tokens", scale.accounts / 5),
        ("login_throttle", scale.accounts / 10),
        ("email_outbox", scale.accounts * 3 / 10),
        ("revocation_events", scale.accounts / 5),
    ] {
        let n: i64 = sqlx::query_scalar(&count(table))
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(n - before[table], expected, "{table}");
    }
    assert!(report.total_rows() > 15_000, "{report:?}");
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND idle_expires_at > now()
            AND absolute_expires_at > now()",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(live, scale.sessions() / 10);

    // A seeded account logs in with the shared password, so its rows are
    // the real thing, not just bytes of the right shape.
    let login = app.login(&seeded_email(7), PASSWORD).await.unwrap();
    assert!(login.tokens.is_some());
    // The revocation log continues gaplessly after the seeded events.
    let (head, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT last_event_id FROM revocation_log), (SELECT max(id) FROM revocation_events)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(head, events);
    // No seeded mail is pending: the mail worker has nothing to send.
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE sent_at IS NULL AND user_id IS NULL")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(pending, 0);
}
