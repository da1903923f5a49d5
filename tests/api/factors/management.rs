//! RemoveFactor, AdminService.ResetUserFactors, the notice mails and
//! revocation events factor changes cause, and the secret at rest.

use authd::pb::auth::v1::RevocationKind;
use secrecy::SecretString;
use tonic::Streaming;

use crate::smtp::SmtpServer;

use super::*;

const EVENT_WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn removing_another_users_or_an_unknown_factor_is_factor_not_found() {
    let app = spawn_app().await;
    let alice = mfa_user(&app).await;
    let bob = mfa_user(&app).await;
    assert_error(
        remove_factor(&app, &alice.tokens.access_token, &bob.factor_id).await,
        Code::NotFound,
        "FACTOR_NOT_FOUND",
    );
    assert_error(
        remove_factor(
            &app,
            &alice.tokens.access_token,
            &uuid::Uuid::new_v4().to_string(),
        )
        .await,
        Code::NotFound,
        "FACTOR_NOT_FOUND",
    );
    let status = assert_error(
        remove_factor(&app, &alice.tokens.access_token, "not-a-uuid").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["factor_id"]);
    assert_eq!(
        list_factors(&app, &bob.tokens.access_token).await.factors.len(),
        1
    );
}

#[tokio::test]
async fn removing_the_last_factor_removes_the_codes_and_login_gives_tokens_again() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    remove_factor(&app, &user.tokens.access_token, &user.factor_id)
        .await
        .expect("RemoveFactor from a fresh session");
    let listed = list_factors(&app, &user.tokens.access_token).await;
    assert!(listed.factors.is_empty(), "{listed:?}");
    assert_eq!(listed.recovery_codes_left, 0);
    let login = app.login(&user.email, PASSWORD).await.unwrap();
    assert!(login.mfa_required.is_none(), "{login:?}");
    let tokens = login.tokens.expect("tokens at once");
    assert_eq!(acr(&tokens.access_token), "aal1");
    // The old recovery codes are gone with it: nothing to step up with.
    assert_error(
        step_up(
            &app,
            &tokens.access_token,
            step_up_request::Proof::RecoveryCode(user.recovery_codes[0].clone()),
        )
        .await,
        Code::FailedPrecondition,
        "FACTOR_NOT_FOUND",
    );
}

#[tokio::test]
async fn removing_one_of_two_factors_keeps_the_other_and_the_codes() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let (second, _) = add_totp(&app, &user.tokens.access_token).await;
    remove_factor(&app, &user.tokens.access_token, &user.factor_id)
        .await
        .unwrap();
    let listed = list_factors(&app, &user.tokens.access_token).await;
    assert_eq!(listed.factors.len(), 1);
    assert_eq!(listed.recovery_codes_left, 10);
    let pending = challenge(&app, &user.email).await;
    // The removed app's codes no longer work; the remaining one's do.
    assert_error(
        complete_totp(&app, &pending.mfa_token, &user.app.code().await).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    complete_totp(&app, &pending.mfa_token, &second.code().await)
        .await
        .expect("the remaining app");
}

async fn watch(
    app: &TestApp,
    key: &str,
    include_factor_changes: bool,
) -> Streaming<pb::WatchRevocationsResponse> {
    app.admin()
        .watch_revocations(with_bearer(
            pb::WatchRevocationsRequest {
                include_factor_changes,
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The next event that is neither a heartbeat nor one that ended sessions
/// (the admin reset ends them besides changing the factors).
async fn next_event(stream: &mut Streaming<pb::WatchRevocationsResponse>) -> pb::WatchRevocationsResponse {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("no revocation event in time")
            .expect("stream failed")
            .expect("stream ended");
        let ended_sessions =
            message.kind() == RevocationKind::UserSessionsEnded && !message.session_ids.is_empty();
        if message.kind() != RevocationKind::Heartbeat && !ended_sessions {
            return message;
        }
    }
}

/// Every change of an account's factors is one event: FACTORS_CHANGED for
/// watchers that asked for it, a USER_SESSIONS_ENDED naming no session for
/// the others, with the same gapless ids. Each sends its notice mail.
#[tokio::test]
async fn factor_changes_mail_a_notice_and_reach_revocation_watchers() {
    let smtp = SmtpServer::start().await;
    let smtp_url = smtp.url();
    let app = spawn_app_with(|c| {
        c.smtp_url = Some(SecretString::from(smtp_url));
        c.mail_poll_interval = Duration::from_millis(100);
    })
    .await;
    let key = app
        .service_key("watcher", &["revocations.watch", "users.write"])
        .await;
    let mut knows = watch(&app, &key, true).await;
    let mut older = watch(&app, &key, false).await;

    let (user, tokens) = app.signed_in_user().await;
    let (authenticator, confirmed) = add_totp(&app, &tokens.access_token).await;
    let fresh = app.refresh(&tokens.refresh_token).await.unwrap();
    let codes = confirmed.recovery_codes;
    let factor_id = confirmed.factor.unwrap().id;

    let pending = challenge(&app, &user.email).await;
    complete_recovery(&app, &pending.mfa_token, &codes[0])
        .await
        .unwrap();
    regenerate_codes(&app, &fresh.access_token).await.unwrap();
    remove_factor(&app, &fresh.access_token, &factor_id)
        .await
        .unwrap();
    // One more, for the admin reset.
    add_totp(&app, &fresh.access_token).await;
    reset_user_factors(&app, &key, &user.id).await.unwrap();
    drop(authenticator);

    // Confirm, code used, regenerate, remove, confirm, reset.
    let mut last_id = None;
    for change in 0..6 {
        let new = next_event(&mut knows).await;
        assert_eq!(
            new.kind(),
            RevocationKind::FactorsChanged,
            "change {change}: {new:?}"
        );
        assert_eq!(new.user_id, user.id);
        let old = next_event(&mut older).await;
        assert_eq!(
            old.kind(),
            RevocationKind::UserSessionsEnded,
            "change {change}: {old:?}"
        );
        assert!(old.session_ids.is_empty(), "{old:?}");
        assert_eq!(old.user_id, user.id);
        assert_eq!(old.event_id, new.event_id);
        if let Some(last) = last_id
            && change < 5
        {
            assert_eq!(new.event_id, last + 1, "ids stay gapless");
        }
        last_id = Some(new.event_id);
    }

    let subjects = [
        FACTOR_ADDED,
        RECOVERY_CODE_USED,
        CODES_REGENERATED,
        FACTOR_REMOVED,
        FACTOR_ADDED,
        FACTORS_RESET,
    ];
    // Register's verification mail goes to the same address; only the
    // notices about factors count here.
    let notices = |smtp: &SmtpServer| -> Vec<String> {
        smtp.received()
            .iter()
            .filter(|m| m.to.iter().any(|t| t.contains(&user.email)))
            .filter_map(|m| m.header("subject"))
            .filter(|s| s != "Verify your email address")
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while notices(&smtp).len() < subjects.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got = notices(&smtp);
    let mut expected = strings(&subjects);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    // Each went to the account's address only.
    for mail in smtp.received() {
        if mail
            .header("subject")
            .is_some_and(|s| subjects.contains(&s.as_str()))
        {
            assert_eq!(mail.to.len(), 1, "{:?}", mail.to);
        }
    }
}

#[tokio::test]
async fn reset_user_factors_ends_sessions_and_login_needs_only_the_password() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let writer = app.service_key("support", &["users.write"]).await;
    let reader = app.service_key("auditor", &["users.read"]).await;
    assert_error(
        reset_user_factors(&app, &reader, &user.user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_error(
        reset_user_factors(&app, &writer, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    let reset = reset_user_factors(&app, &writer, &user.user.id).await.unwrap();
    assert_eq!(reset.id, user.user.id);
    assert_error(
        app.get_me(&user.tokens.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    let login = app.login(&user.email, PASSWORD).await.unwrap();
    assert!(login.mfa_required.is_none(), "{login:?}");
    let tokens = login.tokens.expect("tokens with the password alone");
    let listed = list_factors(&app, &tokens.access_token).await;
    assert!(listed.factors.is_empty());
    assert_eq!(listed.recovery_codes_left, 0);
    // And the owner may enrol again, with its codes.
    let (_, confirmed) = add_totp(&app, &tokens.access_token).await;
    assert_eq!(confirmed.recovery_codes.len(), 10);
}
