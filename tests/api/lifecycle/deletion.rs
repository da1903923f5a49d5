//! DeleteMe: the account and everything stored about it go; the address
//! and username are free again; a notice goes to the address.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::Code;

use super::*;

/// Rows of `table` whose text holds `needle` in any letter case.
async fn rows_holding(app: &TestApp, table: &str, needle: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT t::text FROM {table} t WHERE strpos(lower(t::text), lower($1)) > 0"
    ))
    .bind(needle)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn after_delete_me_nothing_of_the_account_remains_and_its_names_are_free() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let username = format!("del{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    // Attempts before the account existed leave counters keyed by its names.
    for login in [&email, &username] {
        assert_error(
            app.login(login, "not the password at all").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    let user = app
        .register_as(pb::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            username: username.clone(),
            full_name: "Grace Brewster Hopper".into(),
            phone: "+1 202 555 0147".into(),
            image_url: "https://example.com/grace-hopper.png".into(),
        })
        .await;
    let verify_link = link_token(&nth_mail(&smtp, &email, VERIFY_SUBJECT, 1).await);
    verify(&app, &verify_link).await.unwrap();
    // Everything a live account accumulates: sessions with rotated tokens,
    // a failed login, a reset link, a pending move to another address.
    let here = app.tokens_of(&username).await;
    let there = app.tokens_of(&email).await;
    app.refresh(&there.refresh_token).await.unwrap();
    assert_error(
        app.login(&email, "a wrong guess at it").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.forgot_password(&email).await.unwrap();
    let moving_to = fresh_email();
    change_email(&app, &here.access_token, &moving_to, PASSWORD)
        .await
        .unwrap();
    let change_link = link_token(&nth_mail(&smtp, &moving_to, CHANGE_SUBJECT, 1).await);
    app.get_me(&here.access_token).await.unwrap();

    delete_me(&app, &here.access_token, PASSWORD).await.unwrap();

    // The notice reaches the address; then even its outbox row is gone.
    let notice = nth_mail(&smtp, &email, DELETED_SUBJECT, 1).await;
    assert!(!notice.text().contains("token="), "{}", notice.text());
    let deadline = Instant::now() + MAIL_WAIT;
    while outbox_count(&app, "account_deleted").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the notice's row stayed after delivery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No table holds anything of the account; only the revocation log
    // keeps its id, which tells other services it is gone (once numbered:
    // until then its event waits in `revocation_pending`).
    crate::helpers::number_events(&app.db).await;
    let traces = [
        ("id", user.id.clone()),
        ("email", email.clone()),
        ("username", username.clone()),
        ("full name", "Grace Brewster Hopper".to_owned()),
        ("phone", "+12025550147".to_owned()),
        ("image url", "grace-hopper.png".to_owned()),
        ("pending address", moving_to.clone()),
        ("email's throttle key", sha256_hex(&email.to_lowercase())),
        ("username's throttle key", sha256_hex(&username.to_lowercase())),
    ];
    let tables = app.base_tables().await;
    assert!(tables.len() >= 9, "{tables:?}");
    for table in &tables {
        for (what, needle) in &traces {
            let rows = rows_holding(&app, table, needle).await;
            if table == "revocation_events" && *what == "id" {
                let kinds: Vec<String> =
                    sqlx::query_scalar("SELECT kind FROM revocation_events WHERE user_id = $1::uuid")
                        .bind(&user.id)
                        .fetch_all(&app.db)
                        .await
                        .unwrap();
                assert_eq!(
                    kinds.last().map(String::as_str),
                    Some("USER_DELETED"),
                    "{kinds:?}"
                );
                continue;
            }
            assert!(rows.is_empty(), "{table} still holds the {what}: {rows:?}");
        }
    }

    // The access token, the refresh token and the links are dead.
    assert_error(
        app.get_me(&here.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert_error(
        app.refresh(&here.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    assert_error(
        verify(&app, &change_link).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    for login in [&email, &username] {
        assert_error(
            app.login(login, PASSWORD).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    // Address and username are free for a new account.
    let again = app
        .register_as(pb::RegisterRequest {
            email: email.to_uppercase(),
            password: PASSWORD.into(),
            username: username.clone(),
            ..Default::default()
        })
        .await;
    assert_ne!(again.id, user.id);
    assert!(!again.email_verified, "a new account proves its address anew");
    app.tokens_of(&username).await;
}

#[tokio::test]
async fn delete_me_ends_every_session_on_every_path_at_once() {
    let app = spawn_app().await;
    let (user, here) = app.signed_in_user().await;
    let there = app.tokens_of(&user.email).await;
    // Both cached as live before.
    app.get_me(&here.access_token).await.unwrap();
    app.get_me(&there.access_token).await.unwrap();
    delete_me(&app, &here.access_token, PASSWORD).await.unwrap();
    for tokens in [&here, &there] {
        assert_error(
            app.get_me(&tokens.access_token).await,
            Code::Unauthenticated,
            "SESSION_REVOKED",
        );
        let introspected = app.introspect(&tokens.access_token).await.unwrap();
        assert!(!introspected.active);
    }
    // A second deletion with the old token is no deletion.
    assert_error(
        delete_me(&app, &there.access_token, PASSWORD).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
}

#[tokio::test]
async fn a_wrong_or_missing_password_deletes_nothing() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    assert_error(
        delete_me(&app, &tokens.access_token, "not my password at all").await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    let status = assert_error(
        delete_me(&app, &tokens.access_token, "").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["current_password"]);
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().id, user.id);
    app.tokens_of(&user.email).await;
}

/// A deletion is one transaction: when its last write before the delete
/// fails (the notice's insert, made to fail by a trigger standing in for a
/// crash), the account, its sessions and its counters are all still there.
#[tokio::test]
async fn a_deletion_that_fails_midway_deletes_nothing() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    assert_error(
        delete_me(&app, &tokens.access_token, "not my password at all").await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    sqlx::raw_sql(
        "CREATE FUNCTION fail_mail() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER fail_mail BEFORE INSERT ON email_outbox
         FOR EACH ROW EXECUTE FUNCTION fail_mail();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let failed = delete_me(&app, &tokens.access_token, PASSWORD).await;
    assert_eq!(failed.unwrap_err().code(), Code::Internal);
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().id, user.id);
    // The wrong password counts; the right one whose deletion failed is
    // given back.
    app.wait_for_counted_failures(&user.id, 1).await;
    sqlx::raw_sql("DROP TRIGGER fail_mail ON email_outbox")
        .execute(&app.db)
        .await
        .unwrap();
    delete_me(&app, &tokens.access_token, PASSWORD).await.unwrap();
}

/// DeleteMe while ForgotPassword's worker resolves a request for the
/// account's address: the worker holds the request and then waits for the
/// account. DeleteMe, holding the account, leaves a request being resolved
/// to the worker (which then finds no account) instead of waiting for it:
/// waiting was a deadlock, one of the two aborted after a second.
#[tokio::test]
async fn delete_me_does_not_wait_for_a_reset_request_being_resolved() {
    use sqlx::{Connection, PgConnection};
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let url = app.database_url();
    // The worker's first step, on a connection of the test's own: take a
    // committed request for the address (retrying should the real worker
    // take it first).
    let mut worker = PgConnection::connect(&url).await.unwrap();
    let mut resolving = loop {
        let id = uuid::Uuid::new_v4();
        sqlx::query("INSERT INTO password_reset_requests (id, email, requested_at) VALUES ($1, $2, now())")
            .bind(id)
            .bind(&user.email)
            .execute(&app.db)
            .await
            .unwrap();
        let mut tx = worker.begin().await.unwrap();
        let taken = sqlx::query("DELETE FROM password_reset_requests WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        if taken == 1 {
            break tx;
        }
        tx.rollback().await.unwrap();
    };
    let mut client = app.client.clone();
    let deletion = tokio::spawn(async move {
        client
            .delete_me(with_bearer(
                pb::DeleteMeRequest {
                    current_password: PASSWORD.into(),
                },
                &tokens.access_token,
            ))
            .await
    });
    // Until DeleteMe is done or waits for a lock.
    let mut watcher = PgConnection::connect(&url).await.unwrap();
    let started = Instant::now();
    while !deletion.is_finished() {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "DeleteMe neither ended nor waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The worker's next step: the account.
    let account = sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR NO KEY UPDATE")
        .bind(&user.id)
        .fetch_optional(&mut *resolving)
        .await;
    let account = account.expect("the worker was aborted (deadlock)");
    resolving.commit().await.unwrap();
    deletion.await.unwrap().expect("DeleteMe was aborted (deadlock)");
    assert!(
        account.is_none(),
        "the account was deleted before the worker got it"
    );
}
