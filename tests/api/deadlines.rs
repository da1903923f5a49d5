//! A call's deadline reaches PostgreSQL: a call that goes unanswered (past
//! its deadline, or cancelled by its client) while its statement waits on a
//! row lock does not leave that statement waiting, holding a pooled
//! connection, until the lock is released.

use std::time::{Duration, Instant};

use sqlx::{PgPool, Postgres, Transaction};
use tonic::Code;

use crate::helpers::*;

/// The bound: the connection is free this soon after the call ends.
const FREED_WITHIN: Duration = Duration::from_millis(100);

/// Backends of this test's database waiting on a lock.
async fn lock_waiters(db: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// Polls until no backend waits on a lock; how long that took, or `None`
/// past two seconds (the statement is still waiting).
async fn until_no_waiter(db: &PgPool) -> Option<Duration> {
    let from = Instant::now();
    while from.elapsed() < Duration::from_secs(2) {
        if lock_waiters(db).await == 0 {
            return Some(from.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

async fn until_a_waiter(db: &PgPool) {
    let from = Instant::now();
    while lock_waiters(db).await == 0 {
        assert!(
            from.elapsed() < Duration::from_secs(10),
            "the call never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The account's row locked by another transaction, as a long admin
/// transaction or a slow concurrent change would.
async fn lock_account(db: &PgPool, user_id: &str) -> Transaction<'static, Postgres> {
    let mut holder = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
        .bind(user_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

fn change_password(access: &str) -> tonic::Request<authd::pb::auth::v1::ChangePasswordRequest> {
    with_bearer(
        authd::pb::auth::v1::ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "a completely different passphrase 42".into(),
        },
        access,
    )
}

#[tokio::test]
async fn a_call_past_its_deadline_frees_its_connection_while_its_statement_waits_on_a_lock() {
    // The server's own deadline (a client's grpc-timeout is bounded by it
    // the same way); tonic's client would also give up at a grpc-timeout,
    // before the server's answer.
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_secs(1)).await;
    let (user, tokens) = app.signed_in_user().await;
    let holder = lock_account(&app.db, &user.id).await;

    let request = change_password(&tokens.access_token);
    let client = app.client.clone();
    let call = tokio::spawn(async move { client.clone().change_password(request).await });
    until_a_waiter(&app.db).await;
    let status = call.await.unwrap().expect_err("the lock outlives the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason(&status), "DEADLINE_EXCEEDED", "{status:?}");

    let freed = until_no_waiter(&app.db).await;
    eprintln!("connection free {freed:?} after the DEADLINE_EXCEEDED answer");
    let freed = freed.expect("the call's statement still waits on the lock after its deadline");
    assert!(freed <= FREED_WITHIN, "freed after {freed:?}");

    // Nothing of the abandoned change happened.
    holder.commit().await.unwrap();
    app.login(&user.email, PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_call_its_client_cancels_frees_its_connection_while_its_statement_waits_on_a_lock() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let holder = lock_account(&app.db, &user.id).await;

    let client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .clone()
            .change_password(change_password(&tokens.access_token))
            .await
    });
    until_a_waiter(&app.db).await;
    // Dropping the call's future resets its HTTP/2 stream, as a client
    // that gives up does.
    call.abort();
    let cancelled = Instant::now();
    let _ = call.await;

    let freed = until_no_waiter(&app.db).await;
    eprintln!(
        "connection free {freed:?} after the client cancelled ({:?} ago)",
        cancelled.elapsed()
    );
    let freed = freed.expect("the cancelled call's statement still waits on the lock");
    assert!(freed <= FREED_WITHIN, "freed after {freed:?}");

    holder.commit().await.unwrap();
    app.login(&user.email, PASSWORD).await.unwrap();
}
