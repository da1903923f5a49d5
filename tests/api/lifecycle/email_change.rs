//! ChangeEmail: a link to the new address, a notice to the old one, and the
//! switch only when the link is used.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use super::*;

#[tokio::test]
async fn the_address_changes_only_when_the_new_address_link_is_used() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let old = fresh_email();
    let (user, old_link) = registered(&app, &smtp, &old).await;
    let tokens = app.tokens_of(&old).await;
    // A reset link mailed to the old address before the move.
    app.forgot_password(&old).await.unwrap();
    let reset_token = nth_mail(&smtp, &old, "Reset your password", 1)
        .await
        .reset_token();

    let new = fresh_email();
    change_email(&app, &tokens.access_token, &new, PASSWORD)
        .await
        .unwrap();

    // The old address is told, with no link and without the new address.
    let notice = nth_mail(&smtp, &old, CHANGE_NOTICE_SUBJECT, 1).await;
    assert!(!notice.text().contains("token=") && !notice.text().contains(&new));
    assert!(!notice.html().contains("href") && !notice.html().contains(&new));
    let link = nth_mail(&smtp, &new, CHANGE_SUBJECT, 1).await;
    assert!(
        !link.text().contains(&old),
        "the new address learns nothing of the old"
    );
    let token = link_token(&link);

    // Nothing changed yet.
    let me = app.get_me(&tokens.access_token).await.unwrap();
    assert_eq!(me.email, old);
    assert_error(
        app.login(&new, PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.tokens_of(&old).await;

    let switched = verify(&app, &token).await.unwrap();
    assert_eq!(switched.id, user.id);
    assert_eq!(switched.email, new);
    assert!(switched.email_verified);
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().email, new);

    // Login works with the new address only.
    assert_error(
        app.login(&old, PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.tokens_of(&new).await;
    // Links mailed to the old address no longer work.
    assert_error(
        verify(&app, &old_link).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    assert_error(
        app.client
            .clone()
            .reset_password(pb::ResetPasswordRequest {
                token: reset_token,
                new_password: "a brand new passphrase for recovery".into(),
            })
            .await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    // And the change link itself is spent.
    assert_error(
        verify(&app, &token).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
}

#[tokio::test]
async fn an_address_taken_by_then_is_email_taken_at_the_switch() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let mine = fresh_email();
    registered(&app, &smtp, &mine).await;
    let tokens = app.tokens_of(&mine).await;

    let wanted = fresh_email();
    change_email(&app, &tokens.access_token, &wanted, PASSWORD)
        .await
        .unwrap();
    let token = link_token(&nth_mail(&smtp, &wanted, CHANGE_SUBJECT, 1).await);
    // Someone else registers the address (in other letters) meanwhile.
    app.register(&wanted.to_uppercase(), PASSWORD).await;

    assert_error(verify(&app, &token).await, Code::AlreadyExists, "EMAIL_TAKEN");
    let me = app.get_me(&tokens.access_token).await.unwrap();
    assert_eq!(me.email, mine, "the account keeps its address");
    app.tokens_of(&mine).await;
}

#[tokio::test]
async fn an_address_taken_already_gets_the_same_answer_and_fails_at_the_switch() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let taken = fresh_email();
    app.register(&taken, PASSWORD).await;
    let mine = fresh_email();
    registered(&app, &smtp, &mine).await;
    let tokens = app.tokens_of(&mine).await;

    let free = fresh_email();
    // The same (empty) answer whether or not the address is taken.
    change_email(&app, &tokens.access_token, &free, PASSWORD)
        .await
        .unwrap();
    change_email(&app, &tokens.access_token, &taken, PASSWORD)
        .await
        .unwrap();

    // The newer request superseded the link to the free address.
    let to_free_link = link_token(&nth_mail(&smtp, &free, CHANGE_SUBJECT, 1).await);
    assert_error(
        verify(&app, &to_free_link).await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );
    let token = link_token(&nth_mail(&smtp, &taken, CHANGE_SUBJECT, 1).await);
    assert_error(verify(&app, &token).await, Code::AlreadyExists, "EMAIL_TAKEN");
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().email, mine);
}

#[tokio::test]
async fn a_wrong_current_password_is_invalid_argument_and_mails_nothing() {
    let (app, _smtp) = app_with_mail(|_| {}).await;
    let (user, tokens) = app.signed_in_user().await;
    let status = assert_error(
        change_email(
            &app,
            &tokens.access_token,
            &fresh_email(),
            "not my password at all",
        )
        .await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    assert!(
        status.get_details_bad_request().is_none(),
        "no field is wrong: {status:?}"
    );
    assert_eq!(outbox_count(&app, "email_change").await, 0);
    assert_eq!(outbox_count(&app, "email_change_notice").await, 0);
    // The bearer is fine.
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().email, user.email);
}

#[tokio::test]
async fn every_bad_field_is_reported_at_once() {
    let (app, _smtp) = app_with_mail(|_| {}).await;
    let (_, tokens) = app.signed_in_user().await;
    let status = assert_error(
        change_email(&app, &tokens.access_token, "not an address", "").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["current_password", "new_email"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(outbox_count(&app, "email_change").await, 0);
}
