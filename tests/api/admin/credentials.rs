//! The credential check in front of AdminService: no key, a key without
//! the scope, a user's token, a deleted key.

use authd::pb::auth::v1 as pb;
use tonic::Code;

use super::*;
use crate::helpers::*;

#[tokio::test]
async fn every_admin_rpc_without_authorization_is_token_missing() {
    let app = spawn_app().await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    for method in READ_RPCS.into_iter().chain(WRITE_RPCS) {
        let status = call_admin(&app, method, &[], &user.id).await.expect_err(method);
        assert_eq!(status.code(), Code::Unauthenticated, "{method}: {status:?}");
        assert_eq!(reason(&status), "TOKEN_MISSING", "{method}");
    }
}

#[tokio::test]
async fn a_key_without_the_scope_is_told_which_scope_it_lacks() {
    let app = spawn_app().await;
    let reader = app.service_key("reader", &[READ]).await;
    let writer = app.service_key("writer", &[WRITE]).await;
    let introspector = app.service_key("introspector", &[INTROSPECT]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;

    let status = assert_error(
        disable(&app, &reader, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "users.write");
    assert!(!get_user(&app, &reader, &user.id).await.unwrap().disabled);

    let status = assert_error(
        get_user(&app, &writer, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(
        missing_scope(&status),
        "users.read",
        "writing does not imply reading"
    );

    let status = assert_error(
        get_user(&app, &introspector, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "users.read");
}

#[tokio::test]
async fn a_users_access_token_is_refused_by_every_admin_rpc_with_missing_scope() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let authorization = bearer(&tokens.access_token);
    for (method, scope) in READ_RPCS
        .into_iter()
        .map(|m| (m, "users.read"))
        .chain(WRITE_RPCS.into_iter().map(|m| (m, "users.write")))
    {
        let status = call_admin(&app, method, &[&authorization], &user.id)
            .await
            .expect_err(method);
        assert_eq!(status.code(), Code::PermissionDenied, "{method}: {status:?}");
        assert_eq!(missing_scope(&status), scope, "{method}");
    }
    // Nothing happened to the account, and its session is live.
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap(), user);
}

#[tokio::test]
async fn introspect_token_answers_only_a_key_with_the_introspect_scope() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let request = || pb::IntrospectTokenRequest {
        access_token: tokens.access_token.clone(),
    };
    let mut client = app.client.clone();

    assert_error(
        client.introspect_token(request()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    let status = assert_error(
        client
            .introspect_token(with_bearer(request(), &tokens.access_token))
            .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "tokens.introspect");
    let reader = app.service_key("reader", &[READ, WRITE]).await;
    let status = assert_error(
        client.introspect_token(with_bearer(request(), &reader)).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "tokens.introspect");

    let introspector = app.service_key("introspector", &[INTROSPECT]).await;
    let answer = client
        .introspect_token(with_bearer(request(), &introspector))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
    assert_eq!(answer.user_id, user.id);
    assert!(!answer.disabled);
}

#[tokio::test]
async fn a_key_deleted_from_the_database_is_refused_at_once() {
    let app = spawn_app().await;
    wait_for_listeners(&app, 1).await;
    let key = app.service_key("doomed", &[READ]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    // Used twice, so it is cached.
    get_user(&app, &key, &user.id).await.unwrap();
    get_user(&app, &key, &user.id).await.unwrap();
    delete_key(&app, &key).await;
    let status = key_refused_within_a_second(&app, &key, &user.id).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
}
