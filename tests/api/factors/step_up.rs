//! StepUp, and the calls that need a fresh second factor on an account that
//! has one.

use super::*;

/// An account with a factor and a session that only proved the password:
/// one logged in before the app was enrolled from another session.
async fn password_only_session(app: &TestApp) -> (MfaUser, pb::TokenPair) {
    let (user, tokens) = app.signed_in_user().await;
    let enrolling = app.tokens_of(&user.email).await;
    let (authenticator, confirmed) = add_totp(app, &enrolling.access_token).await;
    let enrolling = app.refresh(&enrolling.refresh_token).await.unwrap();
    let mfa = MfaUser {
        email: user.email.clone(),
        user,
        app: authenticator,
        factor_id: confirmed.factor.unwrap().id,
        recovery_codes: confirmed.recovery_codes,
        tokens: enrolling,
    };
    (mfa, tokens)
}

#[tokio::test]
async fn step_up_raises_the_session_and_refresh_keeps_it() {
    let app = spawn_app().await;
    let (user, session) = password_only_session(&app).await;
    assert_eq!(acr(&session.access_token), "aal1");
    let before = now_seconds();
    let raised = step_up_totp(&app, &session.access_token, &user.app.code().await)
        .await
        .expect("StepUp");
    let access = &raised.access_token;
    assert!(raised.expires_in > 0);
    assert_eq!(session_of(access), session_of(&session.access_token));
    assert_eq!(acr(access), "aal2");
    assert_eq!(sorted(amr(access)), strings(&["mfa", "otp", "pwd"]));
    assert_near(auth_time(access), before, 5);
    let assurance = me(&app, access).await.unwrap().assurance.unwrap();
    assert_eq!(assurance.acr, "aal2");

    let refreshed = app.refresh(&session.refresh_token).await.unwrap();
    assert_eq!(acr(&refreshed.access_token), "aal2");
    assert_eq!(auth_time(&refreshed.access_token), auth_time(access));
}

#[tokio::test]
async fn step_up_with_a_recovery_code_uses_it_up() {
    let app = spawn_app().await;
    let (user, session) = password_only_session(&app).await;
    let raised = step_up(
        &app,
        &session.access_token,
        step_up_request::Proof::RecoveryCode(user.recovery_codes[0].clone()),
    )
    .await
    .expect("StepUp with a recovery code");
    assert_eq!(acr(&raised.access_token), "aal2");
    assert_eq!(
        list_factors(&app, &raised.access_token).await.recovery_codes_left,
        9
    );
}

#[tokio::test]
async fn step_up_without_a_factor_is_factor_not_found() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    assert_error(
        step_up_totp(&app, &tokens.access_token, "123456").await,
        Code::FailedPrecondition,
        "FACTOR_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_wrong_step_up_code_is_invalid_code_and_counts_as_a_failed_login() {
    let app = spawn_app().await;
    let (user, session) = password_only_session(&app).await;
    let right = user.app.code().await;
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 7) % 1_000_000);
    assert_error(
        step_up_totp(&app, &session.access_token, &wrong).await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    app.wait_for_counted_failures(&user.user.id, 1).await;
    assert_eq!(
        acr(&app.refresh(&session.refresh_token).await.unwrap().access_token),
        "aal1"
    );
}

#[tokio::test]
async fn change_email_needs_a_fresh_second_factor_and_step_up_gives_it() {
    let app = spawn_app().await;
    let (user, session) = password_only_session(&app).await;
    assert_reauthentication_required(
        change_email(&app, &session.access_token, &fresh_email(), PASSWORD).await,
    );
    let raised = step_up_totp(&app, &session.access_token, &user.app.code().await)
        .await
        .unwrap();
    change_email(&app, &raised.access_token, &fresh_email(), PASSWORD)
        .await
        .expect("ChangeEmail after StepUp");
}

/// Every sensitive call refuses an aal1 token of an account with a factor,
/// and says how recent the proof must be.
#[tokio::test]
async fn sensitive_calls_refuse_a_password_only_session() {
    let app = spawn_app().await;
    let (user, session) = password_only_session(&app).await;
    let access = &session.access_token;
    let mut c = app.client.clone();
    assert_reauthentication_required(remove_factor(&app, access, &user.factor_id).await);
    assert_reauthentication_required(regenerate_codes(&app, access).await);
    assert_reauthentication_required(
        app.change_password(access, PASSWORD, "a completely new passphrase")
            .await,
    );
    assert_reauthentication_required(change_email(&app, access, &fresh_email(), PASSWORD).await);
    assert_reauthentication_required(
        c.delete_me(with_bearer(
            pb::DeleteMeRequest {
                current_password: PASSWORD.into(),
            },
            access,
        ))
        .await,
    );
    let second = enroll(&app, access, "").await.unwrap();
    let code = Authenticator::new(&second.secret).code().await;
    assert_reauthentication_required(confirm(&app, access, &second.enrollment_id, &code).await);

    // Nothing changed.
    let listed = list_factors(&app, access).await;
    assert_eq!(listed.factors.len(), 1);
    assert_eq!(listed.recovery_codes_left, 10);
    app.login(&user.email, PASSWORD)
        .await
        .expect("the password is unchanged");

    // The same calls from the fresh session work.
    let fresh = &user.tokens.access_token;
    regenerate_codes(&app, fresh)
        .await
        .expect("RegenerateRecoveryCodes");
    c.delete_me(with_bearer(
        pb::DeleteMeRequest {
            current_password: PASSWORD.into(),
        },
        fresh,
    ))
    .await
    .expect("DeleteMe");
}

#[tokio::test]
async fn accounts_without_a_factor_need_no_second_factor() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    change_email(&app, &tokens.access_token, &fresh_email(), PASSWORD)
        .await
        .expect("ChangeEmail with the password alone");
    app.change_password(&tokens.access_token, PASSWORD, "a completely new passphrase")
        .await
        .expect("ChangePassword with the password alone");
}
