use authd::pb::auth::v1 as pb;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn login_by_email_in_any_case_or_by_username() {
    let app = spawn_app().await;
    app.register_as(pb::RegisterRequest {
        email: "dora@example.com".into(),
        password: PASSWORD.into(),
        username: "dora".into(),
        ..Default::default()
    })
    .await;
    for login in ["dora@example.com", "DORA@Example.com", "dora", "DoRa"] {
        let response = app.login(login, PASSWORD).await.unwrap();
        let tokens = response.tokens.unwrap();
        assert_eq!(tokens.token_type, "Bearer");
        assert_eq!(tokens.expires_in, 900);
        assert_eq!(tokens.refresh_expires_in, 7 * 86_400);
        assert!(tokens.refresh_token.starts_with("rt_"));
        assert_eq!(tokens.access_token.split('.').count(), 3);
        assert_eq!(response.user.unwrap().email, "dora@example.com");
    }
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sessions, 4, "every login starts a session");
}

#[tokio::test]
async fn refresh_tokens_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].len(), 32);
    assert!(
        !stored[0]
            .windows(8)
            .any(|w| tokens.refresh_token.as_bytes().windows(8).any(|t| t == w))
    );
}

#[tokio::test]
async fn unknown_account_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    app.register("erin@example.com", PASSWORD).await;
    let wrong = assert_error(
        app.login("erin@example.com", "not the password").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let unknown = assert_error(
        app.login("nobody@example.com", "not the password").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let unknown_username = assert_error(
        app.login("nobody", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(wrong.message(), unknown_username.message());
    assert_eq!(wrong.details(), unknown.details());
}

#[tokio::test]
async fn login_validates_its_input() {
    let app = spawn_app().await;
    let status = app.login("  ", "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["login", "password"]);
    let status = app.login("x@example.com", &"p".repeat(600)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["password"]);
}
