//! `amr`, `acr` and `auth_time` in every access token, in GetMe and in
//! IntrospectToken; Refresh copies them and never raises them.

use super::*;

#[tokio::test]
async fn a_password_login_is_pwd_at_aal1() {
    let app = spawn_app().await;
    let before = now_seconds();
    let (_, tokens) = app.signed_in_user().await;
    let access = &tokens.access_token;
    assert_eq!(amr(access), strings(&["pwd"]));
    assert_eq!(acr(access), "aal1");
    assert_near(auth_time(access), before, 5);

    let me = me(&app, access).await.unwrap();
    let assurance = me.assurance.expect("GetMe assurance");
    assert_eq!(assurance.amr, strings(&["pwd"]));
    assert_eq!(assurance.acr, "aal1");
    assert_eq!(assurance.auth_time.unwrap().seconds, auth_time(access));
    assert!(!me.mfa_enrollment_required);

    let introspected = app.introspect(access).await.unwrap();
    assert!(introspected.active);
    let assurance = introspected.assurance.expect("IntrospectToken assurance");
    assert_eq!(assurance.amr, strings(&["pwd"]));
    assert_eq!(assurance.acr, "aal1");
    assert_eq!(assurance.auth_time.unwrap().seconds, auth_time(access));
}

#[tokio::test]
async fn a_login_completed_with_a_code_is_mfa_otp_pwd_at_aal2() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let before = now_seconds();
    let tokens = mfa_login(&app, &user).await;
    let access = &tokens.access_token;
    assert_eq!(sorted(amr(access)), strings(&["mfa", "otp", "pwd"]));
    assert_eq!(acr(access), "aal2");
    assert_near(auth_time(access), before, 5);

    let assurance = me(&app, access).await.unwrap().assurance.unwrap();
    assert_eq!(sorted(assurance.amr), strings(&["mfa", "otp", "pwd"]));
    assert_eq!(assurance.acr, "aal2");
    assert_eq!(assurance.auth_time.unwrap().seconds, auth_time(access));
    let assurance = app.introspect(access).await.unwrap().assurance.unwrap();
    assert_eq!(assurance.acr, "aal2");
    assert_eq!(assurance.auth_time.unwrap().seconds, auth_time(access));
}

/// Refresh copies the session's assurance with its original `auth_time`: a
/// session that proved one factor stays aal1 however often it refreshes,
/// even after another session of the account enrolled a factor.
#[tokio::test]
async fn refresh_copies_the_assurance_and_never_raises_it() {
    let app = spawn_app().await;
    let (user, password_only) = app.signed_in_user().await;
    let enrolling = app.tokens_of(&user.email).await;
    let first_auth_time = auth_time(&password_only.access_token);
    add_totp(&app, &enrolling.access_token).await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = app.refresh(&password_only.refresh_token).await.unwrap();
    assert_eq!(amr(&refreshed.access_token), strings(&["pwd"]));
    assert_eq!(acr(&refreshed.access_token), "aal1");
    assert_eq!(auth_time(&refreshed.access_token), first_auth_time);

    // The enrolling session proved the app at ConfirmTotp.
    let raised = app.refresh(&enrolling.refresh_token).await.unwrap();
    assert_eq!(acr(&raised.access_token), "aal2");
    assert_eq!(sorted(amr(&raised.access_token)), strings(&["mfa", "otp", "pwd"]));
    let raised_at = auth_time(&raised.access_token);

    // And a refresh of that keeps its auth_time too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = app.refresh(&raised.refresh_token).await.unwrap();
    assert_eq!(acr(&again.access_token), "aal2");
    assert_eq!(auth_time(&again.access_token), raised_at);
}
