//! Password recovery and mail: ForgotPassword → a real SMTP listener →
//! ResetPassword, the outbox under outage and rejection, and what the
//! database keeps.

use std::time::{Duration, Instant};

use authd::config::Config;
use authd::pb::auth::v1 as pb;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use crate::helpers::*;
use crate::register::futures_join_all;
use crate::smtp::{self, SmtpServer};

const NEW_PASSWORD: &str = "a brand new passphrase for recovery";
const RESET_URL: &str = "https://app.example/reset-password?token={token}";
/// Generous: the suite runs many servers on two cores.
const MAIL_WAIT: Duration = Duration::from_secs(15);
/// Register mails a verification link too; these tests are about the other
/// mail (the lifecycle tests cover that one).
const VERIFICATION_SUBJECT: &str = "Verify your email address";

fn mail_config(config: &mut Config, smtp_url: &str) {
    config.smtp_url = Some(SecretString::from(smtp_url.to_owned()));
    config.mail_from = "Accounts <accounts@app.example>".into();
    config.reset_url = RESET_URL.into();
    config.mail_poll_interval = Duration::from_millis(100);
    config.mail_retry_base = Duration::from_millis(100);
}

pub(crate) async fn app_with_mail(tweak: impl FnOnce(&mut Config)) -> (TestApp, SmtpServer) {
    let server = SmtpServer::start_ignoring("127.0.0.1:0".parse().unwrap(), &[VERIFICATION_SUBJECT]).await;
    let url = server.url();
    let app = spawn_app_with(|c| {
        mail_config(c, &url);
        tweak(c);
    })
    .await;
    (app, server)
}

pub(crate) async fn reset(app: &TestApp, token: &str, new_password: &str) -> Result<(), Status> {
    app.client
        .clone()
        .reset_password(pb::ResetPasswordRequest {
            token: token.into(),
            new_password: new_password.into(),
        })
        .await
        .map(drop)
}

/// Registers an account, asks for a reset mail and returns the address and
/// the token from the mail.
pub(crate) async fn requested_reset(app: &TestApp, server: &SmtpServer) -> (String, String) {
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let before = server.received().len();
    app.forgot_password(&email).await.unwrap();
    let mail = server.wait_for(before + 1, MAIL_WAIT).await.pop().unwrap();
    assert_eq!(mail.to, vec![email.clone()]);
    (email, mail.reset_token())
}

#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    kind: String,
    attempts: i32,
    body_text: Option<String>,
    body_html: Option<String>,
    last_error: Option<String>,
    sent: bool,
    discarded: bool,
}

async fn outbox(app: &TestApp) -> Vec<OutboxRow> {
    sqlx::query_as(
        "SELECT kind, attempts, body_text, body_html, last_error,
                sent_at IS NOT NULL AS sent, discarded_at IS NOT NULL AS discarded
           FROM email_outbox WHERE kind <> 'email_verification' ORDER BY created_at",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// Polls the outbox until it has rows and `cond` holds for them.
async fn wait_for_outbox(app: &TestApp, cond: impl Fn(&[OutboxRow]) -> bool) -> Vec<OutboxRow> {
    let deadline = Instant::now() + MAIL_WAIT;
    loop {
        let rows = outbox(app).await;
        if !rows.is_empty() && cond(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "outbox never reached the state: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn forgot_then_reset_replaces_the_password_and_ends_every_session() {
    let (app, server) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let old = app.tokens_of(&email).await;

    app.forgot_password(&email).await.unwrap();
    let mail = server.wait_for(1, MAIL_WAIT).await.remove(0);
    assert_eq!(mail.from, "accounts@app.example");
    assert_eq!(mail.to, vec![email.clone()]);
    assert_eq!(mail.header("Subject").as_deref(), Some("Reset your password"));
    assert!(
        mail.header("Content-Type")
            .is_some_and(|t| t.starts_with("multipart/alternative")),
        "{}",
        mail.data
    );
    let token = mail.reset_token();
    assert!(token.starts_with("pr_") && token.len() == 46, "{token}");
    let link = RESET_URL.replace("{token}", &token);
    assert!(mail.text().contains(&link), "{}", mail.text());
    assert!(
        mail.html().contains(&format!("href=\"{link}\"")),
        "{}",
        mail.html()
    );

    reset(&app, &token, NEW_PASSWORD).await.unwrap();

    assert_error(
        app.login(&email, PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.login(&email, NEW_PASSWORD).await.unwrap();
    let refused = app.refresh(&old.refresh_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_error(
        app.get_me(&old.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );

    let notice = server.wait_for(2, MAIL_WAIT).await.remove(1);
    assert_eq!(notice.to, vec![email]);
    assert_eq!(
        notice.header("Subject").as_deref(),
        Some("Your password was changed")
    );
    assert!(!notice.text().contains("token="), "{}", notice.text());
}

#[tokio::test]
async fn an_unknown_address_gets_the_same_answer_and_no_mail() {
    let (app, server) = app_with_mail(|_| {}).await;
    let known = fresh_email();
    app.register(&known, PASSWORD).await;

    let unknown = app
        .client
        .clone()
        .forgot_password(pb::ForgotPasswordRequest {
            email: "nobody@example.com".into(),
        })
        .await
        .unwrap();
    let existing = app
        .client
        .clone()
        .forgot_password(pb::ForgotPasswordRequest {
            email: known.to_uppercase(),
        })
        .await
        .unwrap();
    assert_eq!(unknown.get_ref(), existing.get_ref());

    // The known address's mail was queued after the unknown one would have
    // been, so once it is here nothing else is coming.
    let received = server.wait_for(1, MAIL_WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.received().len(), 1);
    assert_eq!(received[0].to, vec![known]);
    assert_eq!(outbox(&app).await.len(), 1);

    let status = app.forgot_password("not an address").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["email"]);
}

#[tokio::test]
async fn a_reset_token_works_once() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (email, token) = requested_reset(&app, &server).await;
    reset(&app, &token, NEW_PASSWORD).await.unwrap();
    assert_error(
        reset(&app, &token, "yet another long passphrase").await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    app.login(&email, NEW_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn unknown_and_malformed_tokens_get_the_same_answer() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (_, token) = requested_reset(&app, &server).await;
    let (_, tokens) = app.signed_in_user().await;
    let unknown = format!("pr_{}", "A".repeat(43));
    let mut messages = Vec::new();
    for bad in [
        unknown.as_str(),
        "pr_short",
        "garbage",
        tokens.refresh_token.as_str(),
        &token[..token.len() - 1],
    ] {
        let status = assert_error(
            reset(&app, bad, NEW_PASSWORD).await,
            Code::Unauthenticated,
            "RESET_TOKEN_INVALID",
        );
        messages.push(status.message().to_owned());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");

    let status = reset(&app, " ", NEW_PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["token"]);
    // None of that touched the real token.
    reset(&app, &token, NEW_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let ttl = Duration::from_secs(2);
    let (app, server) = app_with_mail(|c| c.reset_token_ttl = ttl).await;
    let (email, token) = requested_reset(&app, &server).await;
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_error(
        reset(&app, &token, NEW_PASSWORD).await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    app.login(&email, PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_new_request_supersedes_the_older_token() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (email, first) = requested_reset(&app, &server).await;
    app.forgot_password(&email).await.unwrap();
    let second = server.wait_for(2, MAIL_WAIT).await[1].reset_token();
    assert_ne!(first, second);
    assert_error(
        reset(&app, &first, NEW_PASSWORD).await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    reset(&app, &second, NEW_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn concurrent_resets_with_one_token_have_exactly_one_winner() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (email, token) = requested_reset(&app, &server).await;
    let attempts = (0..10).map(|i| {
        let app_client = app.client.clone();
        let token = token.clone();
        async move {
            let password = format!("{NEW_PASSWORD} number {i}");
            let result = app_client
                .clone()
                .reset_password(pb::ResetPasswordRequest {
                    token,
                    new_password: password.clone(),
                })
                .await;
            (password, result)
        }
    });
    let results = futures_join_all(attempts).await;
    let winners: Vec<&String> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (_, result) in &results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert_eq!(reason(status), "RESET_TOKEN_INVALID");
        }
    }
    app.login(&email, winners[0]).await.unwrap();
}

#[tokio::test]
async fn a_password_the_policy_refuses_leaves_the_token_usable() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (email, token) = requested_reset(&app, &server).await;
    for refused in ["short", "password123", email.as_str(), ""] {
        let status = reset(&app, &token, refused).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{refused}: {status:?}");
        assert_eq!(violated_fields(&status), vec!["new_password"], "{refused}");
    }
    reset(&app, &token, NEW_PASSWORD).await.unwrap();
    app.login(&email, NEW_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn an_smtp_outage_delays_the_mail_and_loses_nothing() {
    let addr = smtp::reserve_port();
    let app = spawn_app_with(|c| mail_config(c, &smtp::url(addr))).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;

    let started = Instant::now();
    app.forgot_password(&email).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let rows = wait_for_outbox(&app, |rows| rows.first().is_some_and(|r| r.attempts >= 2)).await;
    assert!(!rows[0].sent && !rows[0].discarded, "{rows:?}");
    assert!(rows[0].last_error.is_some(), "{rows:?}");

    let server = SmtpServer::start_ignoring(addr, &[VERIFICATION_SUBJECT]).await;
    let mail = server.wait_for(1, MAIL_WAIT).await.remove(0);
    assert_eq!(mail.to, vec![email.clone()]);
    wait_for_outbox(&app, |rows| rows.iter().all(|r| r.sent)).await;
    // Further polls find nothing to send again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.received().len(), 1);
    reset(&app, &mail.reset_token(), NEW_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_rejected_mail_is_not_marked_sent_and_is_retried() {
    let (app, server) = app_with_mail(|_| {}).await;
    server.reject_data(true);
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    app.forgot_password(&email).await.unwrap();

    // Register's verification mail is refused too: wait for the reset mail's.
    let rows = wait_for_outbox(&app, |rows| {
        rows.first()
            .is_some_and(|r| r.attempts >= 2 && r.last_error.is_some())
    })
    .await;
    assert!(server.rejected() >= 2);
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].sent && !rows[0].discarded, "{rows:?}");
    assert!(rows[0].body_text.is_some(), "a pending mail keeps its body");
    assert!(
        rows[0].last_error.as_deref().is_some_and(|e| e.contains("554")),
        "{rows:?}"
    );
    assert!(server.received().is_empty());

    server.reject_data(false);
    let mail = server.wait_for(1, MAIL_WAIT).await.remove(0);
    assert_eq!(mail.to, vec![email]);
    wait_for_outbox(&app, |rows| rows.iter().all(|r| r.sent)).await;
}

#[tokio::test]
async fn change_password_sends_a_notification() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (user, tokens) = app.signed_in_user().await;
    app.change_password(&tokens.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .unwrap();
    let mail = server.wait_for(1, MAIL_WAIT).await.remove(0);
    assert_eq!(mail.to, vec![user.email]);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("Your password was changed")
    );
    assert!(mail.text().contains("was changed"), "{}", mail.text());
}

#[tokio::test]
async fn change_password_ends_outstanding_reset_links() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (email, token) = requested_reset(&app, &server).await;
    let tokens = app.tokens_of(&email).await;
    app.change_password(&tokens.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .unwrap();
    assert_error(
        reset(&app, &token, "someone else's passphrase here").await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
}

#[tokio::test]
async fn the_sixth_request_in_an_hour_is_answered_but_sends_nothing() {
    let (app, server) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    for _ in 0..6 {
        app.forgot_password(&email).await.unwrap();
    }
    let received = server.wait_for(5, MAIL_WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.received().len(), 5);
    assert_eq!(outbox(&app).await.len(), 5);
    // The fifth token is the live one; the sixth request did not replace it.
    reset(&app, &received[4].reset_token(), NEW_PASSWORD)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_sent_mail_keeps_no_body_and_no_token_is_stored_in_plain_text() {
    let (app, server) = app_with_mail(|_| {}).await;
    let (_, token) = requested_reset(&app, &server).await;
    let rows = wait_for_outbox(&app, |rows| rows.iter().all(|r| r.sent)).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kind, "password_reset");
    assert!(
        rows[0].body_text.is_none() && rows[0].body_html.is_none(),
        "{rows:?}"
    );

    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM password_reset_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, vec![Sha256::digest(token.as_bytes()).to_vec()]);

    // Neither the token nor its random part appears anywhere, as text or
    // as bytes, in any table.
    let tables = app.base_tables().await;
    assert!(tables.iter().any(|t| t == "email_outbox"));
    let random_part = token.trim_start_matches("pr_").to_owned();
    for table in tables {
        let hits = app.rows_holding_text_or_hex(&table, &random_part).await;
        assert_eq!(hits, 0, "the token appears in {table}");
    }
}

#[tokio::test]
async fn a_reset_mail_that_outlives_its_token_is_dropped_unsent() {
    let addr = smtp::reserve_port();
    let app = spawn_app_with(|c| {
        mail_config(c, &smtp::url(addr));
        c.reset_token_ttl = Duration::from_secs(1);
    })
    .await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    app.forgot_password(&email).await.unwrap();
    let rows = wait_for_outbox(&app, |rows| rows.iter().all(|r| r.discarded)).await;
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].body_text.is_none() && rows[0].body_html.is_none(),
        "{rows:?}"
    );

    let server = SmtpServer::start_ignoring(addr, &[VERIFICATION_SUBJECT]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn without_smtp_mail_is_dropped_as_not_sent() {
    let app = spawn_app_with(|c| {
        c.smtp_url = None;
        c.mail_poll_interval = Duration::from_millis(100);
    })
    .await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    app.forgot_password(&email).await.unwrap();
    let rows = wait_for_outbox(&app, |rows| rows.iter().all(|r| r.discarded)).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].body_text.is_none(), "{rows:?}");
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("AUTHD_SMTP_URL")),
        "{rows:?}"
    );
}

/// A well-formed reset token that was never issued.
fn made_up_token() -> String {
    format!("pr_{}", "A".repeat(43))
}

#[tokio::test]
async fn reset_guesses_from_one_client_are_capped_across_replicas() {
    let a = spawn_app().await;
    let url = a.database_url();
    let b = spawn_app_on(&url, |_| {}).await;
    // Ten free guesses, then a growing wait (the eleventh starts it).
    for _ in 0..11 {
        assert_error(
            reset(&a, &made_up_token(), NEW_PASSWORD).await,
            Code::Unauthenticated,
            "RESET_TOKEN_INVALID",
        );
    }
    let status = reset(&b, &made_up_token(), NEW_PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        tonic_types::StatusExt::get_details_retry_info(&status)
            .and_then(|r| r.retry_delay)
            .is_some(),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_successful_reset_does_not_count_as_a_guess() {
    let (app, server) = app_with_mail(|_| {}).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    for _ in 0..10 {
        assert_error(
            reset(&app, &made_up_token(), NEW_PASSWORD).await,
            Code::Unauthenticated,
            "RESET_TOKEN_INVALID",
        );
    }
    app.forgot_password(&email).await.unwrap();
    let token = server.wait_for(1, MAIL_WAIT).await.remove(0).reset_token();
    reset(&app, &token, NEW_PASSWORD).await.unwrap();
    // Had the success counted, the next guess would already wait.
    assert_error(
        reset(&app, &made_up_token(), NEW_PASSWORD).await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    assert_eq!(
        reset(&app, &made_up_token(), NEW_PASSWORD)
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
}
