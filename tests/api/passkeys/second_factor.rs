//! A passkey as the second factor of a password login, as the proof of a
//! step-up, and removed like any factor.

use super::*;
use crate::factors::{acr, amr, auth_time, list_factors, regenerate_codes, remove_factor};

fn is_key_method(amr: &[String]) -> bool {
    amr.iter().any(|m| m == "hwk" || m == "swk")
}

#[tokio::test]
async fn a_passkey_completes_a_password_login() {
    let app = spawn_app().await;
    let b = app.replica().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;

    let challenge = crate::factors::challenge(&app, &holder.email).await;
    assert!(challenge.factors.contains(&(pb::FactorKind::Passkey as i32)));
    let allowed: Vec<String> = json(&challenge.passkey_options)["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(allowed, vec![holder.key.credentials[0].0.clone()]);
    let answer = holder.key.get(challenge.passkey_options.as_ref().unwrap());
    let done = crate::factors::complete(
        &b,
        &challenge.mfa_token,
        pb::complete_login_request::Proof::PasskeyAssertion(to_struct(answer.clone())),
    )
    .await
    .expect("CompleteLogin with the passkey");
    let access = done.tokens.unwrap().access_token;
    assert_eq!(acr(&access), "aal2");
    let methods = amr(&access);
    assert!(methods.contains(&"pwd".to_owned()), "{methods:?}");
    assert!(is_key_method(&methods), "{methods:?}");
    // The same answer again: its ceremony is gone, the MFA token spent.
    let before = written(&app).await;
    assert!(
        crate::factors::complete(
            &app,
            &challenge.mfa_token,
            pb::complete_login_request::Proof::PasskeyAssertion(to_struct(answer)),
        )
        .await
        .is_err()
    );
    assert_nothing_written(&app, &before).await;
}

#[tokio::test]
async fn step_up_with_a_passkey_makes_the_session_fresh_for_sensitive_calls() {
    let app = spawn_app().await;
    let (user, old_session) = app.signed_in_user().await;
    // The passkey is registered on another session: the first one stays a
    // password-only session, not fresh enough for sensitive calls.
    let enrolling = app.tokens_of(&user.email).await;
    let mut key = SoftKey::new();
    register_passkey(&app, &enrolling.access_token, &mut key).await;
    let access = &old_session.access_token;
    crate::factors::assert_reauthentication_required(regenerate_codes(&app, access).await);
    // Adding another passkey is as sensitive.
    crate::factors::assert_reauthentication_required(start_registration(&app, access).await);
    let before_time = auth_time(access);

    let (_, answer) = answered(&app, &user.email, &mut key).await;
    let raised = crate::factors::step_up(
        &app,
        access,
        pb::step_up_request::Proof::PasskeyAssertion(to_struct(answer)),
    )
    .await
    .expect("StepUp with the passkey")
    .access_token;
    assert_eq!(acr(&raised), "aal2");
    let methods = amr(&raised);
    assert!(methods.contains(&"user".to_owned()), "{methods:?}");
    assert!(is_key_method(&methods), "{methods:?}");
    assert!(auth_time(&raised) >= before_time);
    crate::factors::assert_near(auth_time(&raised), crate::factors::now_seconds(), 5);
    regenerate_codes(&app, &raised)
        .await
        .expect("a sensitive call after the step-up");
    register_passkey(&app, &raised, &mut SoftKey::new()).await;
    let refreshed = app.refresh(&old_session.refresh_token).await.unwrap();
    assert_eq!(acr(&refreshed.access_token), "aal2");
}

#[tokio::test]
async fn a_removed_passkey_no_longer_logs_in() {
    let app = spawn_app().await;
    let b = app.replica().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let access = holder.tokens.access_token.clone();
    // A ceremony started while the passkey was still there.
    let (pending, pending_answer) = answered(&app, "", &mut holder.key).await;

    remove_factor(&app, &access, &holder.factor.id)
        .await
        .expect("RemoveFactor");
    assert!(
        list_factors(
            &app,
            &app.refresh(&holder.tokens.refresh_token)
                .await
                .unwrap()
                .access_token
        )
        .await
        .factors
        .is_empty()
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM passkeys")
            .fetch_one(&app.db)
            .await
            .unwrap(),
        0
    );
    let before = written(&app).await;
    assert_login_refused(finish_login(&b, &pending, pending_answer).await);
    assert_login_refused(passkey_login(&app, &mut holder.key).await);
    // A named login no longer lists it: the account gets stand-ins.
    let started = start_login(&app, &holder.email).await;
    let listed = json(&started.options)["allowCredentials"].clone();
    assert!(
        !listed.to_string().contains(&holder.key.credentials[0].0),
        "{listed}"
    );
    assert_nothing_written(&app, &before).await;
    // And a password alone logs in again.
    assert!(app.login(&holder.email, PASSWORD).await.unwrap().tokens.is_some());
}

/// An administrator's ResetUserFactors and the owner's DeleteMe take the
/// passkeys with them: they no longer log in.
#[tokio::test]
async fn passkeys_end_with_a_factor_reset_and_with_the_account() {
    let app = spawn_app().await;
    let admin = app.service_key("admin", &["users.write"]).await;
    let mut reset = passkey_user(&app, SoftKey::new()).await;
    let (pending, pending_answer) = answered(&app, "", &mut reset.key).await;
    crate::factors::reset_user_factors(&app, &admin, &reset.user.id)
        .await
        .expect("ResetUserFactors");
    assert_login_refused(finish_login(&app, &pending, pending_answer).await);
    assert_login_refused(passkey_login(&app, &mut reset.key).await);

    let mut deleted = passkey_user(&app, SoftKey::new()).await;
    app.client
        .clone()
        .delete_me(with_bearer(
            pb::DeleteMeRequest {
                current_password: PASSWORD.into(),
            },
            &deleted.tokens.access_token,
        ))
        .await
        .expect("DeleteMe");
    assert_login_refused(passkey_login(&app, &mut deleted.key).await);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM passkeys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Ten passkeys per account: the eleventh Start is FACTOR_LIMIT_REACHED,
/// and of two ceremonies started at nine, the second finish is refused
/// (the count is checked again under the account's lock), writing nothing.
#[tokio::test]
async fn an_account_holds_ten_passkeys() {
    let app = spawn_app().await;
    let (_, mut tokens) = app.signed_in_user().await;
    for _ in 0..9 {
        register_passkey(&app, &tokens.access_token, &mut RawKey::new()).await;
        tokens = app.refresh(&tokens.refresh_token).await.unwrap();
    }
    let access = tokens.access_token.clone();
    let one = start_registration(&app, &access).await.unwrap();
    let other = start_registration(&app, &access).await.unwrap();
    let one_answer = RawKey::new().create(one.options.as_ref().unwrap());
    let other_answer = RawKey::new().create(other.options.as_ref().unwrap());
    finish_registration(&app, &access, &one.ceremony_id, one_answer)
        .await
        .expect("the tenth");
    let before = written(&app).await;
    assert_error(
        finish_registration(&app, &access, &other.ceremony_id, other_answer).await,
        Code::FailedPrecondition,
        "FACTOR_LIMIT_REACHED",
    );
    assert_nothing_written(&app, &before).await;
    assert_error(
        start_registration(&app, &access).await,
        Code::FailedPrecondition,
        "FACTOR_LIMIT_REACHED",
    );
    assert_eq!(list_factors(&app, &access).await.factors.len(), 10);
}
