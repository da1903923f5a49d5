//! AUTHD_REQUIRE_MFA (enrol first, nothing else) and AUTHD_REAUTH_MAX_AGE
//! (how recent a second factor must be for a sensitive call).

use super::*;

async fn update_me(app: &TestApp, access: &str) -> Result<pb::UpdateMeResponse, Status> {
    app.client
        .clone()
        .update_me(with_bearer(
            pb::UpdateMeRequest {
                user: Some(pb::User {
                    full_name: "Enforced".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["full_name".into()],
                }),
            },
            access,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_enrollment_required<T: std::fmt::Debug>(result: Result<T, Status>) {
    assert_error(result, Code::FailedPrecondition, "MFA_ENROLLMENT_REQUIRED");
}

#[tokio::test]
async fn require_mfa_all_lets_an_account_without_a_factor_only_enrol() {
    let app = spawn_app_with(|c| c.require_mfa = "all".into()).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let login = app.login(&email, PASSWORD).await.unwrap();
    assert!(login.mfa_enrollment_required, "{login:?}");
    assert!(login.mfa_required.is_none());
    let tokens = login.tokens.expect("tokens to enrol with");
    let other = app.tokens_of(&email).await;
    let leaving = app.tokens_of(&email).await;
    let access = &tokens.access_token;
    assert_eq!(acr(access), "aal1");

    let restricted = me(&app, access).await.expect("GetMe is allowed");
    assert!(restricted.mfa_enrollment_required);
    assert!(list_factors(&app, access).await.factors.is_empty());
    assert_enrollment_required(update_me(&app, access).await);
    assert_enrollment_required(list_sessions(&app, access).await);
    assert_enrollment_required(
        app.change_password(access, PASSWORD, "a completely new passphrase")
            .await,
    );
    assert_enrollment_required(change_email(&app, access, &fresh_email(), PASSWORD).await);
    assert_enrollment_required(list_sessions(&app, &other.access_token).await);
    app.logout(&leaving.refresh_token)
        .await
        .expect("Logout is allowed");
    let refreshed = app
        .refresh(&tokens.refresh_token)
        .await
        .expect("Refresh is allowed");
    assert_enrollment_required(list_sessions(&app, &refreshed.access_token).await);

    add_totp(&app, &refreshed.access_token).await;
    // Cleared on every session of the account: the next token of another
    // session is free too (the restriction travels in the access token, so
    // one minted before stays restricted until it is refreshed).
    let other = app.refresh(&other.refresh_token).await.unwrap();
    assert_eq!(acr(&other.access_token), "aal1", "that session proved no factor");
    let other_me = me(&app, &other.access_token).await.unwrap();
    assert!(!other_me.mfa_enrollment_required);
    list_sessions(&app, &other.access_token)
        .await
        .expect("the other session is free too");
    let raised = app.refresh(&refreshed.refresh_token).await.unwrap();
    assert_eq!(acr(&raised.access_token), "aal2");
    update_me(&app, &raised.access_token)
        .await
        .expect("UpdateMe after enrolling");
    assert!(
        !me(&app, &raised.access_token)
            .await
            .unwrap()
            .mfa_enrollment_required
    );
    // From now on Login asks for the factor.
    challenge(&app, &email).await;
}

#[tokio::test]
async fn require_mfa_for_a_role_lets_its_members_enrol_and_nothing_else() {
    let app = spawn_app_with(|c| c.require_mfa = "roles:admin".into()).await;
    let key = app.service_key("role-admin", &["users.write"]).await;
    let (admin, _) = app.signed_in_user().await;
    crate::admin::set_roles(&app, &key, &admin.id, &["admin"])
        .await
        .unwrap();
    let (plain, _) = app.signed_in_user().await;
    crate::admin::set_roles(&app, &key, &plain.id, &["billing:read"])
        .await
        .unwrap();

    // Not an admin: untouched.
    let login = app.login(&plain.email, PASSWORD).await.unwrap();
    assert!(!login.mfa_enrollment_required);
    let tokens = login.tokens.unwrap();
    list_sessions(&app, &tokens.access_token)
        .await
        .expect("ListSessions");
    update_me(&app, &tokens.access_token).await.expect("UpdateMe");

    // An admin: enrol first.
    let login = app.login(&admin.email, PASSWORD).await.unwrap();
    assert!(login.mfa_enrollment_required, "{login:?}");
    let tokens = login.tokens.unwrap();
    assert_enrollment_required(list_sessions(&app, &tokens.access_token).await);
    assert_enrollment_required(update_me(&app, &tokens.access_token).await);
    add_totp(&app, &tokens.access_token).await;
    let raised = app.refresh(&tokens.refresh_token).await.unwrap();
    list_sessions(&app, &raised.access_token)
        .await
        .expect("ListSessions after enrolling");
    update_me(&app, &raised.access_token)
        .await
        .expect("UpdateMe after enrolling");
}

/// A second factor proved longer ago than AUTHD_REAUTH_MAX_AGE is not
/// fresh; StepUp makes it so again.
#[tokio::test]
async fn a_second_factor_older_than_the_reauth_max_age_is_not_fresh() {
    let app = spawn_app_with(|c| c.reauth_max_age = Duration::from_secs(2)).await;
    let user = mfa_user(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = assert_error(
        regenerate_codes(&app, &user.tokens.access_token).await,
        Code::FailedPrecondition,
        "REAUTHENTICATION_REQUIRED",
    );
    assert_eq!(metadata(&status, "max_age").as_deref(), Some("2"));
    let raised = step_up_totp(&app, &user.tokens.access_token, &user.app.code().await)
        .await
        .unwrap();
    regenerate_codes(&app, &raised.access_token)
        .await
        .expect("fresh again after StepUp");
}
