//! Lock order: every transaction that touches an account locks the account
//! row before its sessions and tokens; recording an event takes no shared
//! lock at all (events are numbered after commit). Each test holds, in its
//! own transaction, the locks another RPC takes first, lets the RPC under
//! test block behind them, then takes the next lock that RPC would: with
//! the order kept, the RPC waits and answers normally; with it broken,
//! PostgreSQL finds a deadlock (or every revocation in the system stalls).

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tonic::Code;
use uuid::Uuid;

use super::*;

/// A connection of its own, so the test's locks do not take one of the
/// server's pool.
async fn holder(app: &TestApp) -> PgConnection {
    let url = app.database_url();
    PgConnection::connect(&url).await.unwrap()
}

/// Waits until a backend other than `mine` of this database waits for a
/// row lock: the RPC under test has reached the lock the holder keeps.
async fn until_blocked(mine: &mut PgConnection) {
    for _ in 0..400 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *mine)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the RPC never waited for the held lock");
}

fn user_id(user: &pb::User) -> Uuid {
    user.id.parse().unwrap()
}

/// A click on a verification link while SendVerificationEmail (or
/// ChangeEmail, or DeleteMe) holds the account: VerifyEmail waits for the
/// account before it touches the token, so the other call supersedes the
/// token and the link answers VERIFY_TOKEN_INVALID. Consuming the token
/// first and then waiting for the account was a deadlock: one of the two
/// was aborted after a second.
#[tokio::test]
async fn verify_email_waits_for_the_account_before_its_token() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let (user, token) = registered(&app, &smtp, &email).await;
    let id = user_id(&user);

    // SendVerificationEmail's first two steps: the account, then the
    // account's older links of the kind.
    let mut other = holder(&app).await;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .execute(&mut other)
        .await
        .unwrap();
    let click = tokio::spawn({
        let client = app.client.clone();
        let token = token.clone();
        async move {
            client
                .clone()
                .verify_email(pb::VerifyEmailRequest { token })
                .await
        }
    });
    until_blocked(&mut other).await;
    let superseded = sqlx::query(
        "UPDATE email_verification_tokens SET superseded_at = now()
          WHERE user_id = $1 AND purpose = 'verify' AND consumed_at IS NULL AND superseded_at IS NULL",
    )
    .bind(id)
    .execute(&mut other)
    .await;
    let superseded = superseded.expect("superseding the account's links under its lock");
    assert_eq!(superseded.rows_affected(), 1);
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    assert_error(
        click.await.unwrap(),
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    let verified: bool = sqlx::query_scalar("SELECT email_verified FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!verified);
}

/// RevokeOtherSessions from one session while ChangePassword (or DeleteMe,
/// or DisableUser) runs from another: it waits for the account, then finds
/// its own session ended by the password change. Locking its own session
/// and then the others deadlocked with them.
#[tokio::test]
async fn revoke_other_sessions_waits_for_the_account_before_any_session() {
    let app = spawn_app().await;
    let (user, first) = app.signed_in_user().await;
    let second = app.tokens_of(&user.email).await;
    let id = user_id(&user);
    let changing: Uuid = session_of(&second.access_token).parse().unwrap();

    // ChangePassword from the second session: the account, then its own
    // session.
    let mut other = holder(&app).await;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("SELECT id FROM sessions WHERE id = $1 FOR UPDATE")
        .bind(changing)
        .execute(&mut other)
        .await
        .unwrap();
    let revoking = tokio::spawn({
        let app_client = app.client.clone();
        let access = first.access_token.clone();
        async move {
            app_client
                .clone()
                .revoke_other_sessions(with_bearer(pb::RevokeOtherSessionsRequest {}, &access))
                .await
        }
    });
    until_blocked(&mut other).await;
    // …then it ends the account's other sessions.
    let ended = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = 'password_changed'
          WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(changing)
    .execute(&mut other)
    .await
    .expect("ending the other sessions under the account's lock");
    assert_eq!(ended.rows_affected(), 1);
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    assert_error(revoking.await.unwrap(), Code::Unauthenticated, "SESSION_REVOKED");
    // The session that changed the password is untouched.
    app.get_me(&second.access_token).await.unwrap();
}

/// A ChangePassword that waits for a lock of its account (here a reset
/// link of the account being used) must not hold the revocation log's
/// counter meanwhile: a Logout of another account goes through at once.
#[tokio::test]
async fn change_password_waits_without_holding_the_revocation_counter() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    // A second session, which the change ends (recording its event).
    app.login(&user.email, PASSWORD).await.unwrap();
    let (_, bystander) = app.signed_in_user().await;
    app.forgot_password(&user.email).await.unwrap();
    app.reset_requests_resolved().await;

    // ResetPassword consuming the account's reset link.
    let mut other = holder(&app).await;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    let held = sqlx::query("SELECT token_hash FROM password_reset_tokens WHERE user_id = $1 FOR UPDATE")
        .bind(user_id(&user))
        .execute(&mut other)
        .await
        .unwrap();
    assert_eq!(held.rows_affected(), 1);
    let changing = tokio::spawn({
        let client = app.client.clone();
        let access = tokens.access_token.clone();
        async move {
            client
                .clone()
                .change_password(with_bearer(
                    pb::ChangePasswordRequest {
                        current_password: PASSWORD.into(),
                        new_password: "another long passphrase nobody guesses".into(),
                    },
                    &access,
                ))
                .await
        }
    });
    until_blocked(&mut other).await;

    let logout = tokio::time::timeout(
        Duration::from_secs(3),
        app.client.clone().logout(pb::LogoutRequest {
            refresh_token: bystander.refresh_token.clone(),
        }),
    )
    .await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    logout
        .expect("another account's Logout waited for a ChangePassword stuck on its own account")
        .unwrap();
    changing.await.unwrap().unwrap();
}

/// ResetPassword while ForgotPassword's worker (or ChangePassword, or an
/// address change) holds the account and supersedes its reset links: the
/// reset waits for the account, then finds its link superseded. Consuming
/// the link first and then waiting for the account was a deadlock.
#[tokio::test]
async fn reset_password_waits_for_the_account_before_its_link() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let (user, _) = registered(&app, &smtp, &email).await;
    app.forgot_password(&email).await.unwrap();
    let token = nth_mail(&smtp, &email, "Reset your password", 1)
        .await
        .reset_token();
    let id = user_id(&user);

    // The worker resolving a newer request: the account, then its links.
    let mut other = holder(&app).await;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .execute(&mut other)
        .await
        .unwrap();
    let resetting = tokio::spawn({
        let client = app.client.clone();
        async move {
            client
                .clone()
                .reset_password(pb::ResetPasswordRequest {
                    token,
                    new_password: "a brand new passphrase for recovery".into(),
                })
                .await
        }
    });
    until_blocked(&mut other).await;
    let superseded = sqlx::query(
        "UPDATE password_reset_tokens SET superseded_at = now()
          WHERE user_id = $1 AND consumed_at IS NULL AND superseded_at IS NULL",
    )
    .bind(id)
    .execute(&mut other)
    .await
    .expect("superseding the account's reset links under its lock");
    assert_eq!(superseded.rows_affected(), 1);
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    assert_error(
        resetting.await.unwrap(),
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    app.tokens_of(&email).await;
}
