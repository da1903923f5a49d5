//! The RPCs that change accounts: DisableUser, EnableUser, SetUserRoles,
//! RevokeUserSessions, and their refusals of a bad or unknown user id.

use serde_json::json;
use tonic::Code;

use super::*;
use crate::helpers::*;

async fn outbox_rows_for(app: &TestApp, email: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM email_outbox WHERE lower(recipient) = lower($1) AND kind = 'password_reset'",
    )
    .bind(email)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn disable_user_ends_every_session_at_once() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, first) = app.signed_in_user().await;
    let second = app.tokens_of(&user.email).await;
    for tokens in [&first, &second] {
        // Twice, so the session cache holds them.
        app.get_me(&tokens.access_token).await.unwrap();
        app.get_me(&tokens.access_token).await.unwrap();
    }
    let disabled = disable(&app, &key, &user.id).await.unwrap();
    assert!(disabled.disabled);
    assert_eq!(disabled.id, user.id);
    for tokens in [&first, &second] {
        assert_error(
            app.get_me(&tokens.access_token).await,
            Code::Unauthenticated,
            "SESSION_REVOKED",
        );
        assert_error(
            app.refresh(&tokens.refresh_token).await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_INVALID",
        );
        let answer = app.introspect(&tokens.access_token).await.unwrap();
        assert!(!answer.active, "{answer:?}");
    }
    assert!(get_user(&app, &key, &user.id).await.unwrap().disabled);
}

#[tokio::test]
async fn a_disabled_account_says_so_only_to_the_right_password() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    disable(&app, &key, &user.id).await.unwrap();
    assert_error(
        app.login(&user.email, PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
    assert_error(
        app.login(&user.email, "not the password at all").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

#[tokio::test]
async fn a_disabled_account_is_sent_no_reset_mail() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    disable(&app, &key, &user.id).await.unwrap();
    app.forgot_password(&user.email).await.unwrap();
    app.reset_requests_resolved().await;
    assert_eq!(outbox_rows_for(&app, &user.email).await, 0, "no mail queued");
    // The control: enabled again, the same request queues one.
    enable(&app, &key, &user.id).await.unwrap();
    app.forgot_password(&user.email).await.unwrap();
    app.reset_requests_resolved().await;
    assert_eq!(outbox_rows_for(&app, &user.email).await, 1);
}

#[tokio::test]
async fn enable_user_lets_the_account_log_in_but_its_ended_sessions_stay_ended() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, old) = app.signed_in_user().await;
    disable(&app, &key, &user.id).await.unwrap();
    let enabled = enable(&app, &key, &user.id).await.unwrap();
    assert!(!enabled.disabled);
    let fresh = app.tokens_of(&user.email).await;
    app.get_me(&fresh.access_token).await.unwrap();
    assert_error(
        app.get_me(&old.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert_error(
        app.refresh(&old.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    assert!(!get_user(&app, &key, &user.id).await.unwrap().disabled);
}

#[tokio::test]
async fn disabling_or_enabling_twice_is_ok() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    assert!(disable(&app, &key, &user.id).await.unwrap().disabled);
    assert!(disable(&app, &key, &user.id).await.unwrap().disabled);
    assert!(!enable(&app, &key, &user.id).await.unwrap().disabled);
    assert!(!enable(&app, &key, &user.id).await.unwrap().disabled);
}

#[tokio::test]
async fn set_user_roles_stores_a_sorted_set_without_duplicates() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let updated = set_roles(
        &app,
        &key,
        &user.id,
        &["billing:read", "admin", "billing:read", "a-1"],
    )
    .await
    .unwrap();
    assert_eq!(updated.roles, ["a-1", "admin", "billing:read"]);
    assert_eq!(get_user(&app, &key, &user.id).await.unwrap().roles, updated.roles);
    // An empty set removes every role.
    assert!(
        set_roles(&app, &key, &user.id, &[])
            .await
            .unwrap()
            .roles
            .is_empty()
    );
    assert!(get_user(&app, &key, &user.id).await.unwrap().roles.is_empty());
}

#[tokio::test]
async fn set_user_roles_takes_32_roles_of_64_characters_and_refuses_more() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let long = "r".repeat(64);
    let mut most: Vec<String> = (0..31).map(|i| format!("role.{i:02}")).collect();
    most.push(long.clone());
    let most: Vec<&str> = most.iter().map(String::as_str).collect();
    assert_eq!(
        set_roles(&app, &key, &user.id, &most).await.unwrap().roles.len(),
        32
    );

    let too_many: Vec<String> = (0..33).map(|i| format!("role.{i:02}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let too_long = "r".repeat(65);
    let refused: [&[&str]; 6] = [
        &too_many,
        &["Admin"],
        &[too_long.as_str()],
        &["reader", ""],
        &["two words"],
        &["rôle"],
    ];
    for roles in refused {
        let status = assert_error(
            set_roles(&app, &key, &user.id, roles).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["roles"], "{roles:?}");
    }
    assert_eq!(
        get_user(&app, &key, &user.id).await.unwrap().roles.len(),
        32,
        "refused changes change nothing"
    );
}

#[tokio::test]
async fn new_roles_reach_the_next_login_and_refresh_but_not_tokens_already_issued() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, before) = app.signed_in_user().await;
    set_roles(&app, &key, &user.id, &["reader"]).await.unwrap();
    let reader = app.tokens_of(&user.email).await;
    assert_eq!(jwt_claims(&reader.access_token)["roles"], json!(["reader"]));

    set_roles(&app, &key, &user.id, &["reader", "editor"])
        .await
        .unwrap();
    let login = app.tokens_of(&user.email).await;
    assert_eq!(
        jwt_claims(&login.access_token)["roles"],
        json!(["editor", "reader"])
    );
    let refreshed = app.refresh(&before.refresh_token).await.unwrap();
    assert_eq!(
        jwt_claims(&refreshed.access_token)["roles"],
        json!(["editor", "reader"])
    );

    // Tokens already issued keep theirs.
    assert_eq!(jwt_claims(&reader.access_token)["roles"], json!(["reader"]));
    let old = app.introspect(&reader.access_token).await.unwrap();
    assert!(old.active);
    assert_eq!(old.roles, ["reader"]);
    let new = app.introspect(&login.access_token).await.unwrap();
    assert!(new.active);
    assert_eq!(new.roles, ["editor", "reader"]);
    // GetMe shows the account as it is now, whichever token asks.
    assert_eq!(
        app.get_me(&login.access_token).await.unwrap().roles,
        ["editor", "reader"]
    );
    assert_eq!(
        app.get_me(&reader.access_token).await.unwrap().roles,
        ["editor", "reader"]
    );
}

#[tokio::test]
async fn revoke_user_sessions_ends_every_live_session_and_counts_them() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, first) = app.signed_in_user().await;
    let sessions = [
        first,
        app.tokens_of(&user.email).await,
        app.tokens_of(&user.email).await,
    ];
    let (_, bystander) = app.signed_in_user().await;
    for tokens in &sessions {
        app.get_me(&tokens.access_token).await.unwrap();
    }
    assert_eq!(revoke_sessions(&app, &key, &user.id).await.unwrap(), 3);
    for tokens in &sessions {
        assert_error(
            app.get_me(&tokens.access_token).await,
            Code::Unauthenticated,
            "SESSION_REVOKED",
        );
        assert_error(
            app.refresh(&tokens.refresh_token).await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_INVALID",
        );
    }
    app.get_me(&bystander.access_token).await.unwrap();
    assert_eq!(
        revoke_sessions(&app, &key, &user.id).await.unwrap(),
        0,
        "none left"
    );
    // Not a ban: the account logs in again.
    app.tokens_of(&user.email).await;
}

#[tokio::test]
async fn revoke_user_sessions_counts_only_sessions_that_were_live() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, live) = app.signed_in_user().await;
    let _also_live = app.tokens_of(&user.email).await;
    let logged_out = app.tokens_of(&user.email).await;
    app.logout(&logged_out.refresh_token).await.unwrap();
    let expired = app.tokens_of(&user.email).await;
    let expired_sid = session_of(&expired.access_token);
    sqlx::query("UPDATE sessions SET idle_expires_at = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&expired_sid)
        .execute(&app.db)
        .await
        .unwrap();
    assert_error(
        app.get_me(&expired.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    app.get_me(&live.access_token).await.unwrap();
    assert_eq!(
        revoke_sessions(&app, &key, &user.id).await.unwrap(),
        2,
        "the logged-out and the idle-expired session were not live"
    );
}

#[tokio::test]
async fn every_rpc_taking_a_user_id_answers_user_not_found_for_an_unknown_one() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    app.register(&fresh_email(), PASSWORD).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for method in BY_USER_ID {
        let result = call_admin(&app, method, &[&bearer(&key)], &unknown).await;
        let status = result.expect_err(method);
        assert_eq!(status.code(), Code::NotFound, "{method}: {status:?}");
        assert_eq!(reason(&status), "USER_NOT_FOUND", "{method}");
    }
}

#[tokio::test]
async fn every_rpc_taking_a_user_id_refuses_one_that_is_not_a_uuid() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    for bad in ["not-a-uuid", "", "00000000-0000-0000-0000-00000000000g"] {
        for method in BY_USER_ID {
            let status = call_admin(&app, method, &[&bearer(&key)], bad)
                .await
                .expect_err(method);
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} {bad:?}: {status:?}"
            );
            assert_eq!(reason(&status), "INVALID_ARGUMENT", "{method}");
            assert_eq!(violated_fields(&status), ["user_id"], "{method} {bad:?}");
        }
        let status = assert_error(
            batch_get(&app, &key, &[bad.to_owned()]).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["user_ids"], "{bad:?}");
    }
}
