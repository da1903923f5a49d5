//! What a copy of the database gives an attacker: no password, no usable
//! token, and hashes no weaker than the current parameters once their owner
//! has logged in again.

use authd::config::Argon2Settings;

use super::fresh_password;
use crate::helpers::*;

const TABLES: [&str; 6] = [
    "users",
    "sessions",
    "refresh_tokens",
    "password_reset_tokens",
    "login_throttle",
    "email_outbox",
];

async fn dump(app: &TestApp) -> String {
    let mut all = String::new();
    for table in TABLES {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg(row_to_json(t)::text, E'\\n') FROM {table} t"
        ))
        .fetch_one(&app.db)
        .await
        .unwrap();
        all.push_str(&rows.unwrap_or_default());
        all.push('\n');
    }
    all
}

async fn stored_hash(app: &TestApp, email: &str) -> String {
    sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_database_dump_holds_no_password_or_token_in_plain_text() {
    let app = spawn_app().await;
    let email = fresh_email();
    let (first, second) = (fresh_password(), fresh_password());
    app.register(&email, &first).await;
    let a = app.login(&email, &first).await.unwrap().tokens.unwrap();
    let a2 = app.refresh(&a.refresh_token).await.unwrap();
    let b = app
        .change_password(&a2.access_token, &first, &second)
        .await
        .unwrap();
    let _ = app.login(&email, "a wrong guess at it").await;
    let dump = dump(&app).await;
    assert!(dump.contains(&email), "the dump is real");
    for (what, secret) in [
        ("password", first.as_str()),
        ("changed password", second.as_str()),
        ("refresh token", a.refresh_token.as_str()),
        ("rotated refresh token", a2.refresh_token.as_str()),
        ("renewed refresh token", b.refresh_token.as_str()),
        ("access token", a.access_token.as_str()),
        ("renewed access token", b.access_token.as_str()),
    ] {
        assert!(!dump.contains(secret), "the database holds the {what}");
    }
}

#[tokio::test]
async fn a_password_typed_into_the_login_field_is_not_kept() {
    let app = spawn_app().await;
    // People slip and type the password where the login goes.
    let slipped = fresh_password();
    let status = app.login(&slipped, &slipped).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let counters: i64 = sqlx::query_scalar("SELECT count(*) FROM login_throttle")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(counters, 1, "the failure is still counted");
    let dump = dump(&app).await;
    assert!(!dump.contains(&slipped));
    assert!(!dump.contains(&slipped.to_lowercase()));
}

#[tokio::test]
async fn outdated_hashes_are_upgraded_at_the_next_login() {
    let old = spawn_app().await;
    let email = fresh_email();
    let password = fresh_password();
    old.register(&email, &password).await;
    let weak = stored_hash(&old, &email).await;
    assert!(weak.starts_with("$argon2id$v=19$m=4096,t=1,p=1$"), "{weak}");

    let url = old.database_url();
    let stronger = Argon2Settings {
        memory_kib: 8192,
        iterations: 2,
        parallelism: 1,
    };
    let new = spawn_app_on(&url, |c| c.argon2 = stronger).await;
    // A wrong password proves nothing and changes nothing.
    let _ = new.login(&email, "not the password at all").await;
    assert_eq!(stored_hash(&new, &email).await, weak);
    new.login(&email, &password).await.unwrap();
    let upgraded = stored_hash(&new, &email).await;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=8192,t=2,p=1$"),
        "{upgraded}"
    );
    // Both replicas still accept the password.
    new.login(&email, &password).await.unwrap();
    old.login(&email, &password).await.unwrap();
}
