//! The in-memory session cache must never serve an ended session for more
//! than the milliseconds a notification takes.

use std::time::{Duration, Instant};

use authd::pb::auth::v1 as pb;
use secrecy::ExposeSecret;
use tonic::Code;

use crate::helpers::*;

/// Polls GetMe until it answers SESSION_REVOKED; returns how long it took.
async fn time_until_revoked(app: &TestApp, access: &str) -> Duration {
    let started = Instant::now();
    loop {
        match app.get_me(access).await {
            Err(s) if s.code() == Code::Unauthenticated => return started.elapsed(),
            Err(s) => panic!("unexpected {s:?}"),
            Ok(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still served after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_listener(app: &TestApp) {
    for _ in 0..200 {
        let listening: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%')",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if listening {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cache listener never connected");
}

#[tokio::test]
async fn a_session_ended_behind_authds_back_is_dropped_within_milliseconds() {
    let app = spawn_app().await;
    wait_for_listener(&app).await;
    let (_, tokens) = app.signed_in_user().await;
    app.get_me(&tokens.access_token).await.unwrap();
    app.get_me(&tokens.access_token).await.unwrap(); // now cached
    sqlx::query("UPDATE sessions SET revoked_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    let took = time_until_revoked(&app, &tokens.access_token).await;
    println!("revocation seen after {took:?}");
}

#[tokio::test]
async fn a_logout_at_one_replica_reaches_the_cache_of_another() {
    let a = spawn_app().await;
    let url = a.config.database_url.as_ref().unwrap().expose_secret().to_owned();
    let keys = a.config.signing_keys.clone();
    let b = spawn_app_on(&url, |c| c.signing_keys = keys).await;
    wait_for_listener(&b).await;
    let (_, tokens) = a.signed_in_user().await;
    b.get_me(&tokens.access_token).await.unwrap();
    b.get_me(&tokens.access_token).await.unwrap();
    a.client
        .clone()
        .logout(pb::LogoutRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap();
    let took = time_until_revoked(&b, &tokens.access_token).await;
    println!("cross-replica revocation seen after {took:?}");
}

#[tokio::test]
async fn account_changes_are_not_served_stale() {
    let app = spawn_app().await;
    wait_for_listener(&app).await;
    let (_, tokens) = app.signed_in_user().await;
    app.get_me(&tokens.access_token).await.unwrap();
    sqlx::query("UPDATE users SET full_name = 'Renamed Elsewhere'")
        .execute(&app.db)
        .await
        .unwrap();
    let started = Instant::now();
    while app.get_me(&tokens.access_token).await.unwrap().full_name != "Renamed Elsewhere" {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stale profile after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn losing_the_notification_connection_turns_the_cache_off() {
    let app = spawn_app().await;
    wait_for_listener(&app).await;
    let (_, tokens) = app.signed_in_user().await;
    app.get_me(&tokens.access_token).await.unwrap();
    // Kill the listener's connection, then end the session while nobody is
    // listening: the notification is lost for good.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("UPDATE sessions SET revoked_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    time_until_revoked(&app, &tokens.access_token).await;
    // And the cache comes back once listening resumes.
    wait_for_listener(&app).await;
    let (_, fresh) = app.signed_in_user().await;
    app.get_me(&fresh.access_token).await.unwrap();
}
