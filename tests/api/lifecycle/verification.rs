//! Verified addresses: the mail Register queues, SendVerificationEmail,
//! VerifyEmail, and Login's gate when verification is required.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use super::*;

#[tokio::test]
async fn register_mails_a_link_that_verifies_the_address_once() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let user = app.register(&email, PASSWORD).await;
    assert!(!user.email_verified);

    let mail = nth_mail(&smtp, &email, VERIFY_SUBJECT, 1).await;
    assert_eq!(mail.from, "accounts@app.example");
    assert!(
        mail.header("Content-Type")
            .is_some_and(|t| t.starts_with("multipart/alternative")),
        "{}",
        mail.data
    );
    let token = link_token(&mail);

    let verified = verify(&app, &token).await.unwrap();
    assert_eq!(verified.id, user.id);
    assert!(verified.email_verified);
    assert!(
        verified.updated_at.unwrap().seconds >= user.updated_at.unwrap().seconds,
        "{verified:?}"
    );
    let tokens = app.tokens_of(&email).await;
    assert!(app.get_me(&tokens.access_token).await.unwrap().email_verified);

    // The link works once.
    assert_error(
        verify(&app, &token).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    // The mail's body is gone from the database once it was sent.
    let bodies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_outbox WHERE kind = 'email_verification' AND body_text IS NOT NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(bodies, 0);
}

#[tokio::test]
async fn a_newer_link_supersedes_the_older_one() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let (_, first) = registered(&app, &smtp, &email).await;
    let tokens = app.tokens_of(&email).await;

    send_verification(&app, &tokens.access_token).await.unwrap();
    let second = link_token(&nth_mail(&smtp, &email, VERIFY_SUBJECT, 2).await);
    assert_ne!(first, second);

    assert_error(
        verify(&app, &first).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    assert!(verify(&app, &second).await.unwrap().email_verified);
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    let ttl = Duration::from_secs(2);
    let (app, smtp) = app_with_mail(|c| c.verify_token_ttl = ttl).await;
    let email = fresh_email();
    let (_, token) = registered(&app, &smtp, &email).await;
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_error(
        verify(&app, &token).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    let tokens = app.tokens_of(&email).await;
    assert!(!app.get_me(&tokens.access_token).await.unwrap().email_verified);
}

#[tokio::test]
async fn unknown_and_malformed_links_get_the_same_answer() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let (_, token) = registered(&app, &smtp, &email).await;
    let tokens = app.tokens_of(&email).await;
    let mut messages = Vec::new();
    for bad in [
        format!("ev_{}", "A".repeat(43)),
        "ev_short".to_owned(),
        format!("pr_{}", &token[3..]),
        tokens.refresh_token.clone(),
        token[..token.len() - 1].to_owned(),
    ] {
        let status = assert_error(
            verify(&app, &bad).await,
            Code::Unauthenticated,
            "VERIFY_TOKEN_INVALID",
        );
        messages.push(status.message().to_owned());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let status = assert_error(verify(&app, " ").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["token"]);
    // None of that touched the real link.
    assert!(verify(&app, &token).await.unwrap().email_verified);
}

#[tokio::test]
async fn verification_mails_are_capped_at_five_an_hour_per_account() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    registered(&app, &smtp, &email).await;
    let tokens = app.tokens_of(&email).await;
    // Register's mail counts: four more this hour.
    for _ in 0..4 {
        send_verification(&app, &tokens.access_token).await.unwrap();
    }
    let status = assert_error(
        send_verification(&app, &tokens.access_token).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        delay > Duration::from_secs(3500) && delay <= Duration::from_secs(3600),
        "retry once the first mail leaves the hour: {delay:?}"
    );
    let mails = wait_for_mails(&smtp, &email, VERIFY_SUBJECT, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails.len(), 5);
    assert_eq!(super::mails(&smtp, &email, VERIFY_SUBJECT).len(), 5);
    assert_eq!(outbox_count(&app, "email_verification").await, 5);
    // The refused request superseded nothing: the fifth link works.
    assert!(verify(&app, &link_token(&mails[4])).await.unwrap().email_verified);
}

#[tokio::test]
async fn a_verified_address_is_answered_ok_and_mailed_nothing() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    let (_, token) = registered(&app, &smtp, &email).await;
    verify(&app, &token).await.unwrap();
    let tokens = app.tokens_of(&email).await;
    for _ in 0..6 {
        send_verification(&app, &tokens.access_token).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails(&smtp, &email, VERIFY_SUBJECT).len(), 1);
    assert_eq!(outbox_count(&app, "email_verification").await, 1);
}

#[tokio::test]
async fn send_verification_email_needs_a_live_session() {
    let (app, _smtp) = app_with_mail(|_| {}).await;
    let (_, tokens) = app.signed_in_user().await;
    assert_error(
        app.client
            .clone()
            .send_verification_email(authd::pb::auth::v1::SendVerificationEmailRequest {})
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    app.logout(&tokens.refresh_token).await.unwrap();
    assert_error(
        send_verification(&app, &tokens.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
}

#[tokio::test]
async fn a_register_that_fails_queues_no_mail() {
    let (app, _smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    // Taken address: no account, no link for anyone.
    let status = app
        .client
        .clone()
        .register(authd::pb::auth::v1::RegisterRequest {
            email: email.to_uppercase(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(outbox_count(&app, "email_verification").await, 1);
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM email_verification_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(tokens, 1);
}

#[tokio::test]
async fn with_verification_required_only_the_right_password_learns_of_it() {
    let (app, smtp) = app_with_mail(|c| c.require_verified_email = true).await;
    let email = fresh_email();
    let (_, token) = registered(&app, &smtp, &email).await;

    // Without the password nothing tells an unverified account apart.
    let wrong = assert_error(
        app.login(&email, "not the password at all").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let unknown = assert_error(
        app.login(&fresh_email(), "not the password at all").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_eq!(wrong.message(), unknown.message());
    // The right password: told to verify, as often as they try (no
    // back-off for a proven password).
    for _ in 0..8 {
        assert_error(
            app.login(&email, PASSWORD).await,
            Code::FailedPrecondition,
            "EMAIL_NOT_VERIFIED",
        );
    }
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "no session for an unverified account");

    verify(&app, &token).await.unwrap();
    let tokens = app.tokens_of(&email).await;
    assert!(app.get_me(&tokens.access_token).await.unwrap().email_verified);
}

#[tokio::test]
async fn without_the_requirement_an_unverified_account_logs_in() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    registered(&app, &smtp, &email).await;
    let tokens = app.tokens_of(&email).await;
    assert!(!app.get_me(&tokens.access_token).await.unwrap().email_verified);
}
