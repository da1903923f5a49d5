//! Recovery codes: single use, forgiving about spacing and case, counted
//! down in ListFactors, replaced by RegenerateRecoveryCodes.

use super::*;

#[tokio::test]
async fn a_recovery_code_completes_a_login_once() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let code = &user.recovery_codes[3];

    let first = challenge(&app, &user.email).await;
    let tokens = complete_recovery(&app, &first.mfa_token, code)
        .await
        .expect("a recovery code")
        .tokens
        .unwrap();
    assert_eq!(acr(&tokens.access_token), "aal2");
    assert_eq!(sorted(amr(&tokens.access_token)), strings(&["mfa", "otp", "pwd"]));
    assert_eq!(
        list_factors(&app, &tokens.access_token).await.recovery_codes_left,
        9
    );

    let second = challenge(&app, &user.email).await;
    assert_error(
        complete_recovery(&app, &second.mfa_token, code).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // Nor as a step-up.
    assert_error(
        step_up(
            &app,
            &user.tokens.access_token,
            step_up_request::Proof::RecoveryCode(code.clone()),
        )
        .await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    assert_eq!(
        list_factors(&app, &tokens.access_token).await.recovery_codes_left,
        9
    );
}

#[tokio::test]
async fn spaces_hyphens_and_letter_case_are_ignored() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let shouted = user.recovery_codes[0].replace('-', " ").to_uppercase();
    let pending = challenge(&app, &user.email).await;
    complete_recovery(&app, &pending.mfa_token, &format!("  {shouted} "))
        .await
        .expect("the code in capitals with spaces");
    let squashed = user.recovery_codes[1].replace('-', "");
    let pending = challenge(&app, &user.email).await;
    complete_recovery(&app, &pending.mfa_token, &squashed)
        .await
        .expect("the code without hyphens");
    assert_eq!(
        list_factors(&app, &user.tokens.access_token)
            .await
            .recovery_codes_left,
        8
    );
}

#[tokio::test]
async fn the_challenge_offers_recovery_codes_only_while_some_are_left() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    for code in &user.recovery_codes {
        let pending = challenge(&app, &user.email).await;
        assert!(pending.factors().any(|f| f == pb::FactorKind::RecoveryCode));
        complete_recovery(&app, &pending.mfa_token, code).await.unwrap();
    }
    let listed = list_factors(&app, &user.tokens.access_token).await;
    assert_eq!(listed.recovery_codes_left, 0);
    let pending = challenge(&app, &user.email).await;
    assert_eq!(pending.factors().collect::<Vec<_>>(), [pb::FactorKind::Totp]);
    // The app still works.
    complete_totp(&app, &pending.mfa_token, &user.app.code().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn regenerated_codes_replace_the_old_ones() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let fresh = regenerate_codes(&app, &user.tokens.access_token)
        .await
        .expect("RegenerateRecoveryCodes from a fresh session");
    assert_eq!(fresh.len(), 10);
    for code in &fresh {
        assert_recovery_code_format(code);
        assert!(!user.recovery_codes.contains(code));
    }
    assert_eq!(
        list_factors(&app, &user.tokens.access_token)
            .await
            .recovery_codes_left,
        10
    );

    let pending = challenge(&app, &user.email).await;
    assert_error(
        complete_recovery(&app, &pending.mfa_token, &user.recovery_codes[0]).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    complete_recovery(&app, &pending.mfa_token, &fresh[0])
        .await
        .expect("a new code");
}

#[tokio::test]
async fn regenerating_without_a_factor_is_factor_not_found() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    assert_error(
        regenerate_codes(&app, &tokens.access_token).await,
        Code::FailedPrecondition,
        "FACTOR_NOT_FOUND",
    );
}
