//! Attacks on the account lifecycle: a stolen access token guessing the
//! password through ChangeEmail or DeleteMe, guessing verification links,
//! probing which addresses and sessions exist, and secrets of these flows
//! in logs or the database.

use std::time::Duration;

use authd::pb::auth::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use super::fresh_password;
use crate::helpers::*;
use crate::lifecycle::{
    CHANGE_SUBJECT, VERIFY_SUBJECT, VERIFY_URL, app_with_mail, change_email, delete_me, link_token, nth_mail,
    revoke_session, verify,
};

/// A password check through ChangeEmail or, if not, DeleteMe.
async fn guess(
    app: &TestApp,
    access: &str,
    through_change_email: bool,
    password: &str,
) -> Result<(), Status> {
    if through_change_email {
        change_email(app, access, &fresh_email(), password).await
    } else {
        delete_me(app, access, password).await
    }
}

/// A stolen access token is not the password: each wrong guess through
/// ChangeEmail or DeleteMe counts like a failed Login of the account, the
/// sixth starts the back-off, and then not even the right password is
/// evaluated, on these RPCs or at Login.
#[tokio::test]
async fn password_guesses_through_change_email_and_delete_me_back_off_like_logins() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    // Six wrong guesses, alternating between the two RPCs: one counter.
    for i in 0..6 {
        assert_error(
            guess(&app, &tokens.access_token, i % 2 == 0, &fresh_password()).await,
            Code::InvalidArgument,
            "INVALID_CREDENTIALS",
        );
    }
    for through_change_email in [true, false] {
        let status = assert_error(
            guess(&app, &tokens.access_token, through_change_email, PASSWORD).await,
            Code::ResourceExhausted,
            "THROTTLED",
        );
        let delay = retry_delay(&status);
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_secs(1),
            "{delay:?}"
        );
    }
    let status = assert_error(
        app.login(&user.email, PASSWORD).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    tokio::time::sleep(retry_delay(&status) + Duration::from_millis(100)).await;
    // The owner, with the right password, is through after the wait.
    app.login(&user.email, PASSWORD).await.unwrap();
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().id, user.id);
}

/// The back-off is per account and in PostgreSQL, so a second token of the
/// same account (another session, another replica) does not reset it.
#[tokio::test]
async fn a_second_session_does_not_get_fresh_password_guesses() {
    let app = spawn_app().await;
    let (user, first) = app.signed_in_user().await;
    let second = app.tokens_of(&user.email).await;
    for _ in 0..6 {
        assert_error(
            delete_me(&app, &first.access_token, &fresh_password()).await,
            Code::InvalidArgument,
            "INVALID_CREDENTIALS",
        );
    }
    assert_error(
        delete_me(&app, &second.access_token, &fresh_password()).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    app.get_me(&second.access_token).await.unwrap();
}

/// Made-up verification links are counted per client address like reset
/// tokens: ten free, then the back-off; a right link gives its charge back.
#[tokio::test]
async fn verification_guesses_from_one_client_are_capped() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let real = link_token(&nth_mail(&smtp, &email, VERIFY_SUBJECT, 1).await);
    let made_up = || {
        let random = uuid::Uuid::new_v4().simple().to_string().repeat(2);
        format!("ev_{}", &random[..43])
    };
    for _ in 0..9 {
        assert_error(
            verify(&app, &made_up()).await,
            Code::Unauthenticated,
            "VERIFY_TOKEN_INVALID",
        );
    }
    verify(&app, &real).await.unwrap();
    // Had the success counted, this tenth guess would already wait.
    assert_error(
        verify(&app, &made_up()).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    assert_error(
        verify(&app, &made_up()).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    let status = assert_error(
        verify(&app, &made_up()).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert!(retry_delay(&status) > Duration::ZERO);
}

/// ChangeEmail does not say whether another account has the new address:
/// the answer and what gets mailed are the same either way.
#[tokio::test]
async fn change_email_does_not_reveal_whether_an_address_is_taken() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let taken = fresh_email();
    app.register(&taken, PASSWORD).await;
    let (_, tokens) = app.signed_in_user().await;
    let free = fresh_email();
    // Both succeed (the response is empty: there is nothing else to compare).
    change_email(&app, &tokens.access_token, &taken, PASSWORD)
        .await
        .unwrap();
    change_email(&app, &tokens.access_token, &free, PASSWORD)
        .await
        .unwrap();
    let to_taken = nth_mail(&smtp, &taken, CHANGE_SUBJECT, 1).await;
    let to_free = nth_mail(&smtp, &free, CHANGE_SUBJECT, 1).await;
    let shape = |text: String, address: &str| {
        let token = text.split("token=").nth(1).unwrap_or_default()[..46].to_owned();
        text.replace(&token, "TOKEN").replace(address, "ADDRESS")
    };
    assert_eq!(shape(to_taken.text(), &taken), shape(to_free.text(), &free));
}

/// Session ids of other users cannot be probed: NOT_FOUND for theirs is
/// byte for byte the answer for one that never existed, and theirs lives on.
#[tokio::test]
async fn another_users_session_id_is_indistinguishable_from_an_unknown_one() {
    let app = spawn_app().await;
    let (_, attacker) = app.signed_in_user().await;
    let (_, victim) = app.signed_in_user().await;
    let real = revoke_session(&app, &attacker.access_token, &session_of(&victim.access_token))
        .await
        .unwrap_err();
    let fake = revoke_session(&app, &attacker.access_token, &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(
        (
            real.code(),
            real.message(),
            real.details(),
            real.metadata().get("grpc-status-details-bin")
        ),
        (
            fake.code(),
            fake.message(),
            fake.details(),
            fake.metadata().get("grpc-status-details-bin")
        ),
    );
    assert_eq!(reason(&real), "SESSION_NOT_FOUND");
    app.get_me(&victim.access_token).await.unwrap();
}

/// Every line logged (DEBUG, all targets) while the lifecycle flows run is
/// searched for their passwords, tokens and links.
#[tokio::test]
async fn lifecycle_flows_log_no_password_token_or_link() {
    if captured_logs().is_none() {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    }
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let password = fresh_password();
    let wrong = fresh_password();
    let user = app.register(&email, &password).await;
    let verify_token = link_token(&nth_mail(&smtp, &email, VERIFY_SUBJECT, 1).await);
    verify(&app, &verify_token).await.unwrap();
    let tokens = app.login(&email, &password).await.unwrap().tokens.unwrap();
    assert_error(
        change_email(&app, &tokens.access_token, &fresh_email(), &wrong).await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    let new_email = fresh_email();
    change_email(&app, &tokens.access_token, &new_email, &password)
        .await
        .unwrap();
    let change_token = link_token(&nth_mail(&smtp, &new_email, CHANGE_SUBJECT, 1).await);
    verify(&app, &change_token).await.unwrap();
    app.client
        .clone()
        .update_me(with_bearer(
            pb::UpdateMeRequest {
                user: Some(pb::User {
                    full_name: "Logged Nowhere".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["full_name".into()],
                }),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap();
    delete_me(&app, &tokens.access_token, &password).await.unwrap();

    let secrets = [
        ("password", password.clone()),
        ("wrong password", wrong.clone()),
        ("access token", tokens.access_token.clone()),
        ("refresh token", tokens.refresh_token.clone()),
        ("verification token", verify_token.clone()),
        ("verification link", VERIFY_URL.replace("{token}", &verify_token)),
        ("change token", change_token.clone()),
        ("change link", VERIFY_URL.replace("{token}", &change_token)),
    ];
    // The worker's lines and the deletion's are written asynchronously.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = captured_logs().unwrap();
        if logs.contains("account deleted") && logs.contains(&user.id) || std::time::Instant::now() > deadline
        {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(logs.contains(&user.id), "the capture holds this flow's lines");
    for (what, secret) in &secrets {
        assert!(!logs.contains(secret.as_str()), "the logs hold the {what}");
    }
    // Addresses appear in logs by their domain only.
    assert!(!logs.contains(&email) && !logs.contains(&new_email));
}

/// The database holds a verification token only as its SHA-256, and the
/// mail that carried it loses its body once sent.
#[tokio::test]
async fn a_database_dump_holds_no_verification_link() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let token = link_token(&nth_mail(&smtp, &email, VERIFY_SUBJECT, 1).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE sent_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mail was never marked sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM email_verification_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, vec![Sha256::digest(token.as_bytes()).to_vec()]);
    let tables = app.base_tables().await;
    let random_part = token.trim_start_matches("ev_").to_owned();
    for table in tables {
        let hits = app.rows_holding_text_or_hex(&table, &random_part).await;
        assert_eq!(hits, 0, "the token appears in {table}");
    }
}
