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
    assert_login_refused(
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
