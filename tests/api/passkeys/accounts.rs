//! The account's state after a proven passkey: disabled, unverified email
//! (AUTHD_REQUIRE_VERIFIED_EMAIL), and AUTHD_REQUIRE_MFA's enrolment.

use super::*;
use crate::factors::{acr, list_factors, me};

#[tokio::test]
async fn a_disabled_accounts_passkey_does_not_log_in() {
    let app = spawn_app().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let admin = app.service_key("admin", &["users.write"]).await;
    app.admin()
        .disable_user(with_bearer(
            pb::DisableUserRequest {
                user_id: holder.user.id.clone(),
            },
            &admin,
        ))
        .await
        .expect("DisableUser");
    let before = written(&app).await;
    let before_sessions = before.sessions;
    let refused = passkey_login(&app, &mut holder.key).await;
    assert_error(refused, Code::PermissionDenied, "ACCOUNT_DISABLED");
    let after = written(&app).await;
    assert_eq!(
        after.sessions, before_sessions,
        "no session for a disabled account"
    );
    assert_eq!(after.refresh_tokens, before.refresh_tokens);
}

#[tokio::test]
async fn with_verified_email_required_an_unverified_accounts_passkey_does_not_log_in() {
    let app = spawn_app().await;
    // A replica on the same database that requires verified addresses.
    let keys = app.config.signing_keys.clone();
    let data_keys = app.config.data_keys.clone();
    let strict = spawn_app_on(&app.database_url(), |c| {
        c.signing_keys = keys;
        c.data_keys = data_keys;
        c.require_verified_email = true;
    })
    .await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let before = written(&app).await;
    assert_error(
        passkey_login(&strict, &mut holder.key).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
    let after = written(&app).await;
    assert_eq!(
        (after.sessions, after.refresh_tokens),
        (before.sessions, before.refresh_tokens)
    );
    passkey_login(&app, &mut holder.key)
        .await
        .expect("where verification is not required");
}

#[tokio::test]
async fn an_account_that_must_enrol_may_register_a_passkey_and_is_then_free() {
    let app = spawn_app_with(|c| c.require_mfa = "all".into()).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let login = app.login(&email, PASSWORD).await.unwrap();
    assert!(login.mfa_enrollment_required);
    let tokens = login.tokens.expect("tokens to enrol with");
    assert_error(
        app.client
            .clone()
            .list_sessions(with_bearer(
                pb::ListSessionsRequest::default(),
                &tokens.access_token,
            ))
            .await,
        Code::FailedPrecondition,
        "MFA_ENROLLMENT_REQUIRED",
    );

    let mut key = SoftKey::new();
    register_passkey(&app, &tokens.access_token, &mut key).await;
    let free = app.refresh(&tokens.refresh_token).await.unwrap();
    assert_eq!(acr(&free.access_token), "aal2");
    assert!(
        !me(&app, &free.access_token)
            .await
            .unwrap()
            .mfa_enrollment_required
    );
    app.client
        .clone()
        .list_sessions(with_bearer(
            pb::ListSessionsRequest::default(),
            &free.access_token,
        ))
        .await
        .expect("ListSessions once enrolled");
    assert_eq!(list_factors(&app, &free.access_token).await.factors.len(), 1);
    // From now on the passkey logs in alone, unrestricted, and a password
    // Login asks for it.
    let done = passkey_login(&app, &mut key).await.unwrap();
    assert!(
        !me(&app, &done.tokens.unwrap().access_token)
            .await
            .unwrap()
            .mfa_enrollment_required
    );
    let challenge = crate::factors::challenge(&app, &email).await;
    assert!(challenge.factors.contains(&(pb::FactorKind::Passkey as i32)));
}
