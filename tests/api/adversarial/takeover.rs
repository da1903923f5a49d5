//! Account takeover through links kept from before the owner took the
//! account back: someone who knew the password asks for an email change to
//! their own mailbox and keeps the link. Every change of who controls the
//! account must kill it, and the old address must hear of a switch when it
//! happens.

use authd::pb::auth::v1 as pb;
use tonic::Code;

use crate::admin::{admin_key, disable, enable, revoke_sessions};
use crate::helpers::*;
use crate::lifecycle::{
    CHANGE_SUBJECT, app_with_mail, change_email, link_token, nth_mail, registered, revoke_others, verify,
};
use crate::smtp::SmtpServer;

const NEW_PASSWORD: &str = "the owner's brand new passphrase";
const SWITCHED_SUBJECT: &str = "Your email address was changed";

/// The intruder, signed in with the password they learnt, asks to move the
/// owner's account to their own mailbox and reads the link there.
async fn intruder_keeps_a_change_link(app: &TestApp, smtp: &SmtpServer, owner_email: &str) -> String {
    let intruder = app.tokens_of(owner_email).await;
    let theirs = fresh_email();
    change_email(app, &intruder.access_token, &theirs, PASSWORD)
        .await
        .unwrap();
    link_token(&nth_mail(smtp, &theirs, CHANGE_SUBJECT, 1).await)
}

async fn assert_link_dead_and_account_kept(app: &TestApp, link: &str, owner_email: &str, password: &str) {
    assert_error(
        verify(app, link).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    // The account still has the owner's address, and the owner still gets in.
    app.login(owner_email, password).await.unwrap();
}

/// The owner takes the account back with ForgotPassword and the link mailed
/// to the account's address.
async fn reset_password_by_mail(app: &TestApp, smtp: &SmtpServer, email: &str) {
    app.forgot_password(email).await.unwrap();
    let reset = nth_mail(smtp, email, "Reset your password", 1)
        .await
        .reset_token();
    app.client
        .clone()
        .reset_password(pb::ResetPasswordRequest {
            token: reset,
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_kept_email_change_link_dies_when_the_owner_changes_the_password() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let owner_email = fresh_email();
    registered(&app, &smtp, &owner_email).await;
    let owner = app.tokens_of(&owner_email).await;
    let link = intruder_keeps_a_change_link(&app, &smtp, &owner_email).await;

    // The owner reads the notice and does what it says.
    app.change_password(&owner.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .unwrap();

    assert_link_dead_and_account_kept(&app, &link, &owner_email, NEW_PASSWORD).await;
}

#[tokio::test]
async fn a_kept_email_change_link_dies_when_the_owner_resets_the_password() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let owner_email = fresh_email();
    registered(&app, &smtp, &owner_email).await;
    let link = intruder_keeps_a_change_link(&app, &smtp, &owner_email).await;

    reset_password_by_mail(&app, &smtp, &owner_email).await;

    assert_link_dead_and_account_kept(&app, &link, &owner_email, NEW_PASSWORD).await;
}

/// Pre-hijacking: the intruder registers an address that is not theirs
/// (nothing requires it verified by default), asks to move the account to
/// their own mailbox and waits; the address's real owner recovers the
/// account with ForgotPassword. The kept link must not take it back.
#[tokio::test]
async fn a_pre_hijacked_account_stays_with_the_owner_who_recovered_it() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let victim_email = fresh_email();
    registered(&app, &smtp, &victim_email).await;
    let link = intruder_keeps_a_change_link(&app, &smtp, &victim_email).await;

    reset_password_by_mail(&app, &smtp, &victim_email).await;

    assert_link_dead_and_account_kept(&app, &link, &victim_email, NEW_PASSWORD).await;
    // And no later ForgotPassword can reach the intruder's mailbox.
    let me = app
        .login(&victim_email, NEW_PASSWORD)
        .await
        .unwrap()
        .user
        .unwrap();
    assert_eq!(me.email, victim_email);
}

#[tokio::test]
async fn a_kept_email_change_link_dies_when_the_account_is_disabled_even_once_enabled_again() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let key = admin_key(&app).await;
    let owner_email = fresh_email();
    let (user, _) = registered(&app, &smtp, &owner_email).await;
    let link = intruder_keeps_a_change_link(&app, &smtp, &owner_email).await;

    disable(&app, &key, &user.id).await.unwrap();
    assert_error(
        verify(&app, &link).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    enable(&app, &key, &user.id).await.unwrap();

    assert_link_dead_and_account_kept(&app, &link, &owner_email, PASSWORD).await;
}

#[tokio::test]
async fn a_kept_email_change_link_dies_when_a_service_ends_the_accounts_sessions() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let key = admin_key(&app).await;
    let owner_email = fresh_email();
    let (user, _) = registered(&app, &smtp, &owner_email).await;
    let link = intruder_keeps_a_change_link(&app, &smtp, &owner_email).await;

    revoke_sessions(&app, &key, &user.id).await.unwrap();

    assert_link_dead_and_account_kept(&app, &link, &owner_email, PASSWORD).await;
}

#[tokio::test]
async fn a_kept_email_change_link_dies_when_the_owner_signs_out_everywhere_else() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let owner_email = fresh_email();
    registered(&app, &smtp, &owner_email).await;
    let owner = app.tokens_of(&owner_email).await;
    let link = intruder_keeps_a_change_link(&app, &smtp, &owner_email).await;

    assert_eq!(revoke_others(&app, &owner.access_token).await.unwrap(), 1);

    assert_link_dead_and_account_kept(&app, &link, &owner_email, PASSWORD).await;
}

/// The reset links of an account die with the same changes: one asked for
/// before a service ended every session is no longer usable.
#[tokio::test]
async fn a_reset_link_dies_when_a_service_ends_the_accounts_sessions() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let key = admin_key(&app).await;
    let owner_email = fresh_email();
    let (user, _) = registered(&app, &smtp, &owner_email).await;
    app.forgot_password(&owner_email).await.unwrap();
    let reset = nth_mail(&smtp, &owner_email, "Reset your password", 1)
        .await
        .reset_token();

    revoke_sessions(&app, &key, &user.id).await.unwrap();

    assert_error(
        app.client
            .clone()
            .reset_password(pb::ResetPasswordRequest {
                token: reset,
                new_password: NEW_PASSWORD.into(),
            })
            .await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    app.login(&owner_email, PASSWORD).await.unwrap();
}

#[tokio::test]
async fn the_old_address_is_told_when_the_switch_happens() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let old = fresh_email();
    registered(&app, &smtp, &old).await;
    let link = intruder_keeps_a_change_link(&app, &smtp, &old).await;
    assert!(
        crate::lifecycle::mails(&smtp, &old, SWITCHED_SUBJECT).is_empty(),
        "nothing switched yet"
    );

    let moved = verify(&app, &link).await.unwrap();

    let notice = nth_mail(&smtp, &old, SWITCHED_SUBJECT, 1).await;
    assert!(notice.text().contains(&old), "{}", notice.text());
    assert!(
        !notice.text().contains(&moved.email) && !notice.html().contains(&moved.email),
        "the old address does not learn the new one"
    );
    assert!(!notice.text().contains("token=") && !notice.html().contains("href"));
}

#[tokio::test]
async fn an_email_change_link_lives_an_hour_and_a_verification_link_a_day() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let owner_email = fresh_email();
    let (user, _) = registered(&app, &smtp, &owner_email).await;
    intruder_keeps_a_change_link(&app, &smtp, &owner_email).await;

    let lifetimes: Vec<(String, f64)> = sqlx::query_as(
        "SELECT purpose, extract(epoch FROM expires_at - created_at)::float8
           FROM email_verification_tokens WHERE user_id = $1::uuid ORDER BY purpose",
    )
    .bind(&user.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        lifetimes,
        vec![("change".to_owned(), 3_600.0), ("verify".to_owned(), 86_400.0)]
    );
}
