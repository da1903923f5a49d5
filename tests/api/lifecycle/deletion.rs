//! DeleteMe: the account and everything stored about it go; the address
//! and username are free again; a notice goes to the address.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::Code;

use super::*;

/// Every base table of the database.
async fn tables(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT quote_ident(table_name) FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

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
        .client
        .clone()
        .register(pb::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            username: username.clone(),
            full_name: "Grace Brewster Hopper".into(),
            phone: "+1 202 555 0147".into(),
            image_url: "https://example.com/grace-hopper.png".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let verify_link = link_token(&nth_mail(&smtp, &email, VERIFY_SUBJECT, 1).await);
    verify(&app, &verify_link).await.unwrap();
    // Everything a live account accumulates: sessions with rotated tokens,
    // a failed login, a reset link, a pending move to another address.
    let here = tokens_of(&app, &username).await;
    let there = tokens_of(&app, &email).await;
    refresh(&app, &there.refresh_token).await.unwrap();
    assert_error(
        app.login(&email, "a wrong guess at it").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.client
        .clone()
        .forgot_password(pb::ForgotPasswordRequest { email: email.clone() })
        .await
        .unwrap();
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
    // keeps its id, which tells other services it is gone.
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
    let tables = tables(&app).await;
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
        refresh(&app, &here.refresh_token).await,
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
        .client
        .clone()
        .register(pb::RegisterRequest {
            email: email.to_uppercase(),
            password: PASSWORD.into(),
            username: username.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_ne!(again.id, user.id);
    assert!(!again.email_verified, "a new account proves its address anew");
    tokens_of(&app, &username).await;
}

#[tokio::test]
async fn delete_me_ends_every_session_on_every_path_at_once() {
    let app = spawn_app().await;
    let (user, here) = app.signed_in_user().await;
    let there = tokens_of(&app, &user.email).await;
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
    tokens_of(&app, &user.email).await;
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
    let failures: i32 = sqlx::query_scalar("SELECT failures FROM login_throttle WHERE key = $1")
        .bind(format!("user:{}", user.id))
        .fetch_one(&app.db)
        .await
        .expect("the counter is still there");
    assert_eq!(failures, 2, "the wrong password and the attempt that failed");
    sqlx::raw_sql("DROP TRIGGER fail_mail ON email_outbox")
        .execute(&app.db)
        .await
        .unwrap();
    delete_me(&app, &tokens.access_token, PASSWORD).await.unwrap();
}
