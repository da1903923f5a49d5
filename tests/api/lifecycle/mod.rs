//! The account lifecycle, end to end: verified addresses, profile and
//! address changes, sessions a user can see and end, and account deletion,
//! against a real PostgreSQL, a real SMTP listener and a real gRPC client.

mod deletion;
mod email_change;
mod lock_order;
mod profile;
mod session_list;
mod verification;

use std::time::Duration;

use authd::config::Config;
use authd::pb::auth::v1 as pb;
use secrecy::SecretString;
use tonic::Status;

use crate::helpers::*;
use crate::smtp::{ReceivedMail, SmtpServer};

pub const VERIFY_URL: &str = "https://app.example/verify-email?token={token}";
pub const RESET_URL: &str = "https://app.example/reset-password?token={token}";
/// Generous: the suite runs many servers on two cores.
pub const MAIL_WAIT: Duration = Duration::from_secs(15);

pub const VERIFY_SUBJECT: &str = "Verify your email address";
pub const CHANGE_SUBJECT: &str = "Confirm your new email address";
pub const CHANGE_NOTICE_SUBJECT: &str = "Your email address is about to change";
pub const DELETED_SUBJECT: &str = "Your account was deleted";

/// An app whose mail goes to a real SMTP listener in this process.
pub async fn app_with_mail(tweak: impl FnOnce(&mut Config)) -> (TestApp, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let app = spawn_app_with(|c| {
        c.smtp_url = Some(SecretString::from(url));
        c.mail_from = "Accounts <accounts@app.example>".into();
        c.reset_url = RESET_URL.into();
        c.verify_url = VERIFY_URL.into();
        c.mail_poll_interval = Duration::from_millis(100);
        c.mail_retry_base = Duration::from_millis(100);
        tweak(c);
    })
    .await;
    (app, smtp)
}

/// The mails to `to` (in any letter case) with `subject`, oldest first.
pub fn mails(smtp: &SmtpServer, to: &str, subject: &str) -> Vec<ReceivedMail> {
    smtp.received()
        .into_iter()
        .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))
        .filter(|m| m.header("Subject").as_deref() == Some(subject))
        .collect()
}

/// Waits until `n` mails to `to` with `subject` arrived; returns them all.
pub async fn wait_for_mails(smtp: &SmtpServer, to: &str, subject: &str, n: usize) -> Vec<ReceivedMail> {
    smtp.wait_until(MAIL_WAIT, |s| mails(s, to, subject).len() >= n)
        .await;
    mails(smtp, to, subject)
}

/// The newest mail to `to` with `subject`, once there are `n`.
pub async fn nth_mail(smtp: &SmtpServer, to: &str, subject: &str, n: usize) -> ReceivedMail {
    wait_for_mails(smtp, to, subject, n)
        .await
        .into_iter()
        .nth(n - 1)
        .unwrap()
}

/// The verification token of a mailed link, checked to be a well-formed
/// `ev_` token inside the configured template.
pub fn link_token(mail: &ReceivedMail) -> String {
    let token = mail.reset_token();
    assert!(
        token.starts_with("ev_") && token.len() == 46,
        "{token}: {}",
        mail.text()
    );
    let link = VERIFY_URL.replace("{token}", &token);
    assert!(mail.text().contains(&link), "{}", mail.text());
    assert!(
        mail.html().contains(&format!("href=\"{link}\"")),
        "{}",
        mail.html()
    );
    token
}

/// Registers `email` and returns the account and the token of the
/// verification mail Register queued.
pub async fn registered(app: &TestApp, smtp: &SmtpServer, email: &str) -> (pb::User, String) {
    let user = app.register(email, PASSWORD).await;
    let mail = nth_mail(smtp, email, VERIFY_SUBJECT, 1).await;
    (user, link_token(&mail))
}

pub async fn verify(app: &TestApp, token: &str) -> Result<pb::User, Status> {
    app.client
        .clone()
        .verify_email(pb::VerifyEmailRequest { token: token.into() })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

pub async fn send_verification(app: &TestApp, access: &str) -> Result<(), Status> {
    app.client
        .clone()
        .send_verification_email(with_bearer(pb::SendVerificationEmailRequest {}, access))
        .await
        .map(drop)
}

pub async fn change_email(
    app: &TestApp,
    access: &str,
    new_email: &str,
    password: &str,
) -> Result<(), Status> {
    app.client
        .clone()
        .change_email(with_bearer(
            pb::ChangeEmailRequest {
                new_email: new_email.into(),
                current_password: password.into(),
            },
            access,
        ))
        .await
        .map(drop)
}

pub async fn delete_me(app: &TestApp, access: &str, password: &str) -> Result<(), Status> {
    app.client
        .clone()
        .delete_me(with_bearer(
            pb::DeleteMeRequest {
                current_password: password.into(),
            },
            access,
        ))
        .await
        .map(drop)
}

pub async fn update_me(
    app: &TestApp,
    access: &str,
    user: pb::User,
    paths: &[&str],
) -> Result<pb::User, Status> {
    app.client
        .clone()
        .update_me(with_bearer(
            pb::UpdateMeRequest {
                user: Some(user),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            access,
        ))
        .await
        .map(|r| r.into_inner().user.unwrap())
}

pub async fn list_sessions(app: &TestApp, access: &str) -> Result<Vec<pb::Session>, Status> {
    app.client
        .clone()
        .list_sessions(with_bearer(pb::ListSessionsRequest {}, access))
        .await
        .map(|r| r.into_inner().sessions)
}

pub async fn revoke_session(app: &TestApp, access: &str, session_id: &str) -> Result<(), Status> {
    app.client
        .clone()
        .revoke_session(with_bearer(
            pb::RevokeSessionRequest {
                session_id: session_id.into(),
            },
            access,
        ))
        .await
        .map(drop)
}

pub async fn revoke_others(app: &TestApp, access: &str) -> Result<i32, Status> {
    app.client
        .clone()
        .revoke_other_sessions(with_bearer(pb::RevokeOtherSessionsRequest {}, access))
        .await
        .map(|r| r.into_inner().revoked_count)
}

/// Mail rows in the outbox of `kind`.
pub async fn outbox_count(app: &TestApp, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE kind = $1")
        .bind(kind)
        .fetch_one(&app.db)
        .await
        .unwrap()
}
