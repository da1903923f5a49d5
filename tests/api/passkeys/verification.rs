//! A passkey must verify its user (it is both factors at once), and answer
//! from a page of one of the configured origins.

use super::*;

/// The options as a browser would have them with `userVerification`
/// downgraded: an authenticator then skips verifying its user.
fn without_user_verification(options: &Option<prost_types::Struct>) -> prost_types::Struct {
    let mut options = json(options);
    options["userVerification"] = "preferred".into();
    to_struct(options)
}

#[tokio::test]
async fn a_login_without_user_verification_is_refused() {
    let app = spawn_app().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let before = written(&app).await;

    // webauthn-rs's own SoftPasskey, answering downgraded options: no UV
    // flag in what it signs.
    let started = start_login(&app, "").await;
    let answer = holder.key.get(&without_user_verification(&started.options));
    assert_login_refused(finish_login(&app, &started.ceremony_id, answer).await);
    let started = start_login(&app, &holder.email).await;
    let answer = holder.key.get(&without_user_verification(&started.options));
    assert_login_refused(finish_login(&app, &started.ceremony_id, answer).await);

    // As a second factor and for a step-up as well.
    let challenge = crate::factors::challenge(&app, &holder.email).await;
    let answer = holder
        .key
        .get(&without_user_verification(&challenge.passkey_options));
    assert_second_factor_refused(
        crate::factors::complete(
            &app,
            &challenge.mfa_token,
            pb::complete_login_request::Proof::PasskeyAssertion(to_struct(answer)),
        )
        .await,
    );
    let started = start_login(&app, "").await;
    let answer = holder.key.get(&without_user_verification(&started.options));
    assert_step_up_refused(
        crate::factors::step_up(
            &app,
            &holder.tokens.access_token,
            pb::step_up_request::Proof::PasskeyAssertion(to_struct(answer)),
        )
        .await,
    );
    assert_nothing_written(&app, &before).await;
    passkey_login(&app, &mut holder.key)
        .await
        .expect("with UV it logs in");
}

#[tokio::test]
async fn a_key_that_never_verifies_its_user_is_not_registered() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let mut key = RawKey::new();
    key.verifies_user = false;
    let before = written(&app).await;
    let started = start_registration(&app, &tokens.access_token).await.unwrap();
    let credential = key.create(started.options.as_ref().unwrap());
    assert_registration_refused(
        finish_registration(&app, &tokens.access_token, &started.ceremony_id, credential).await,
    );
    assert_nothing_written(&app, &before).await;
}

#[tokio::test]
async fn an_answer_from_another_origin_is_refused() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let before = written(&app).await;

    // A page on another port of the RP id: a browser lets it run the
    // ceremony, authd must not accept it.
    let mut elsewhere = SoftKey::at("http://localhost:4000");
    let started = start_registration(&app, &tokens.access_token).await.unwrap();
    let credential = elsewhere.create(started.options.as_ref().unwrap());
    assert_registration_refused(
        finish_registration(&app, &tokens.access_token, &started.ceremony_id, credential).await,
    );
    assert_nothing_written(&app, &before).await;

    // A registered key answering from a phishing page.
    let mut holder = passkey_user(&app, RawKey::new()).await;
    let before = written(&app).await;
    holder.key.origin = "https://login.example-phish.test".into();
    assert_login_refused(passkey_login(&app, &mut holder.key).await);
    let challenge = crate::factors::challenge(&app, &holder.email).await;
    let answer = holder.key.get(challenge.passkey_options.as_ref().unwrap());
    assert_second_factor_refused(
        crate::factors::complete(
            &app,
            &challenge.mfa_token,
            pb::complete_login_request::Proof::PasskeyAssertion(to_struct(answer)),
        )
        .await,
    );
    assert_nothing_written(&app, &before).await;
}

/// Credential ids outside what the table holds (16 to 1023 bytes: WebAuthn
/// caps them at 1023, and fewer than 16 bytes cannot be a random id) are
/// refused as any bad registration, never INTERNAL; the bounds register.
#[tokio::test]
async fn credential_ids_of_unusable_length_are_refused_cleanly() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let access = tokens.access_token.clone();
    let before = written(&app).await;
    for len in [0usize, 1, 15, 1024, 1500] {
        let mut key = RawKey::new();
        key.credential_id = vec![7u8; len];
        let started = start_registration(&app, &access).await.unwrap();
        let credential = key.create(started.options.as_ref().unwrap());
        let refused = finish_registration(&app, &access, &started.ceremony_id, credential).await;
        let status = refused.expect_err("refused");
        assert_eq!(
            (status.code(), reason(&status)),
            (Code::InvalidArgument, "PASSKEY_INVALID".to_owned()),
            "{len} bytes: {status:?}"
        );
    }
    assert_nothing_written(&app, &before).await;
    let mut tokens = tokens;
    for len in [16usize, 1023] {
        let mut key = RawKey::new();
        key.credential_id = vec![u8::try_from(len % 256).unwrap(); len];
        // Fresh: the account has a factor after the first.
        tokens = app.refresh(&tokens.refresh_token).await.unwrap();
        register_passkey(&app, &tokens.access_token, &mut key).await;
        passkey_login(&app, &mut key).await.expect("logs in");
    }
}
