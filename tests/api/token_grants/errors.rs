//! Every error of ExchangeToken with its code, ErrorInfo reason and field:
//! the client (invalid_client), the subject (invalid_grant), the audience
//! (invalid_target), the scope (invalid_scope), the service's own scopes,
//! and the request's shape.

use serde_json::json;
use tonic::Code;

use super::*;
use crate::admin::{delete_key, disable, missing_scope};

/// `result` is INVALID_ARGUMENT with `reason`, naming `field` alone.
#[track_caller]
fn refused_on(result: Result<pb::ExchangeTokenResponse, Status>, reason: &str, field: &str) {
    let status = assert_error(result, Code::InvalidArgument, reason);
    assert_eq!(violated_fields(&status), vec![field.to_owned()], "{status:?}");
}

#[tokio::test]
async fn a_caller_without_a_live_key_is_an_invalid_client() {
    let app = spawn().await;
    let name = fresh_service("doomed");
    let key = app.service_key(&name, &[EXCHANGE, READ]).await;
    let (_, tokens) = app.signed_in_user().await;

    for request in [
        client_credentials("", ""),
        token_exchange(&tokens.access_token, BILLING, ""),
    ] {
        assert_error(
            exchange(&app, "", request.clone()).await,
            Code::Unauthenticated,
            "TOKEN_MISSING",
        );
        let made_up = format!("sk_{}", "A".repeat(43));
        assert_error(
            exchange(&app, &made_up, request.clone()).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
        assert_error(
            exchange(&app, "not even a token", request.clone()).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }

    // A deleted key's service token: refused at once, for every grant.
    let own = service_token(&app, &key, "", "").await;
    exchange(&app, &own, token_exchange(&tokens.access_token, BILLING, ""))
        .await
        .expect("accepted while the key lives");
    delete_key(&app, &key).await;
    let started = std::time::Instant::now();
    let status = loop {
        match exchange(&app, &own, token_exchange(&tokens.access_token, BILLING, "")).await {
            Err(status) => break status,
            Ok(_) => assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "the deleted key's token still exchanges after 1 s"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    assert_error(
        exchange(&app, &key, client_credentials("", "")).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

#[tokio::test]
async fn an_expired_subject_token_is_an_invalid_grant() {
    let app = spawn().await;
    let (_, tokens) = app.signed_in_user().await;
    let key = app.service_key(&fresh_service("gateway"), &[EXCHANGE]).await;
    // The session's own token, signed by authd's key, expired a minute ago.
    let expired = resigned(&app, &tokens.access_token, |c| {
        c["iat"] = json!(now() - 960);
        c["nbf"] = json!(now() - 960);
        c["exp"] = json!(now() - 60);
    });
    refused_on(
        exchange(&app, &key, token_exchange(&expired, BILLING, "")).await,
        "GRANT_INVALID",
        "subject_token",
    );
    // The control: the same session's live token is exchanged.
    exchanged(&app, &key, &tokens.access_token, BILLING).await;
}

#[tokio::test]
async fn a_subject_token_of_an_ended_session_is_an_invalid_grant() {
    let app = spawn().await;
    let (_, tokens) = app.signed_in_user().await;
    let key = app.service_key(&fresh_service("gateway"), &[EXCHANGE]).await;
    exchanged(&app, &key, &tokens.access_token, BILLING).await;
    app.logout(&tokens.refresh_token).await.unwrap();
    refused_on(
        exchange(&app, &key, token_exchange(&tokens.access_token, BILLING, "")).await,
        "GRANT_INVALID",
        "subject_token",
    );
}

#[tokio::test]
async fn a_subject_token_of_another_issuer_key_or_audience_is_an_invalid_grant() {
    let app = spawn().await;
    let (_, tokens) = app.signed_in_user().await;
    let key = app.service_key(&fresh_service("gateway"), &[EXCHANGE]).await;
    let header = jwt_header(&tokens.access_token);
    let claims = jwt_claims(&tokens.access_token);
    // The control: the genuine claims re-signed with authd's key pass.
    let control = sign_ed25519(&app.signing_pem, &header, &claims);
    exchanged(&app, &key, &control, BILLING).await;

    let attacker = authd::crypto::keys::generate_ed25519_pem().unwrap();
    let mut unregistered = claims.clone();
    unregistered["aud"] = json!(ELSEWHERE);
    let mut foreign_issuer = claims.clone();
    foreign_issuer["iss"] = json!("https://evil.example");
    let mut unknown_kid = header.clone();
    unknown_kid["kid"] = json!("someone-elses");
    for (what, subject) in [
        (
            "another issuer",
            sign_ed25519(&app.signing_pem, &header, &foreign_issuer),
        ),
        (
            "another key under authd's kid",
            sign_ed25519(&attacker, &header, &claims),
        ),
        (
            "another key under its own kid",
            sign_ed25519(&attacker, &unknown_kid, &claims),
        ),
        (
            "an unregistered audience",
            sign_ed25519(&app.signing_pem, &header, &unregistered),
        ),
        ("not a JWT", "garbage".to_owned()),
        ("a refresh token", tokens.refresh_token.clone()),
    ] {
        let status = assert_error(
            exchange(&app, &key, token_exchange(&subject, BILLING, "")).await,
            Code::InvalidArgument,
            "GRANT_INVALID",
        );
        assert_eq!(violated_fields(&status), vec!["subject_token"], "{what}");
    }
}

#[tokio::test]
async fn a_service_token_is_no_subject_token() {
    let app = spawn().await;
    let key = app.service_key(&fresh_service("gateway"), &[EXCHANGE]).await;
    for audience in [OWN, BILLING] {
        let own = service_token(&app, &key, audience, "").await;
        refused_on(
            exchange(&app, &key, token_exchange(&own, LEDGER, "")).await,
            "GRANT_INVALID",
            "subject_token",
        );
    }
}

#[tokio::test]
async fn an_unregistered_audience_is_an_invalid_target_for_every_grant() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let key = app
        .service_key(&fresh_service("everything"), &[READ, EXCHANGE, IMPERSONATE])
        .await;
    for audience in [ELSEWHERE, "Billing", "billing/", "test-services2"] {
        refused_on(
            exchange(&app, &key, client_credentials(audience, "")).await,
            "TARGET_INVALID",
            "audience",
        );
        refused_on(
            exchange(&app, &key, token_exchange(&tokens.access_token, audience, "")).await,
            "TARGET_INVALID",
            "audience",
        );
        refused_on(
            exchange(&app, &key, impersonation(&user.id, audience, "")).await,
            "TARGET_INVALID",
            "audience",
        );
    }
    // No impersonation session was started by the refusals.
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1::uuid")
        .bind(&user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(started, 1, "the login's session only");
}

#[tokio::test]
async fn asking_for_more_than_the_caller_or_the_subject_has_is_an_invalid_scope() {
    let app = spawn().await;
    let (user, tokens) = user_with_roles(&app, &["reader"]).await;
    let key = app
        .service_key(&fresh_service("narrow"), &[READ, EXCHANGE, IMPERSONATE])
        .await;
    for scope in ["users.write", "users.read users.write", "admin", "USERS.READ"] {
        refused_on(
            exchange(&app, &key, client_credentials(BILLING, scope)).await,
            "SCOPE_INVALID",
            "scope",
        );
    }
    for roles in ["admin", "reader admin", "Reader"] {
        refused_on(
            exchange(&app, &key, token_exchange(&tokens.access_token, BILLING, roles)).await,
            "SCOPE_INVALID",
            "scope",
        );
        refused_on(
            exchange(&app, &key, impersonation(&user.id, BILLING, roles)).await,
            "SCOPE_INVALID",
            "scope",
        );
    }
    // A role the account gained after the subject token was issued is not
    // the subject's: exchange narrows the token, not the account.
    let writer = app.service_key("role-setter", &[WRITE]).await;
    crate::admin::set_roles(&app, &writer, &user.id, &["reader", "admin"])
        .await
        .unwrap();
    refused_on(
        exchange(&app, &key, token_exchange(&tokens.access_token, BILLING, "admin")).await,
        "SCOPE_INVALID",
        "scope",
    );
}

#[tokio::test]
async fn exchange_and_impersonation_need_their_scopes() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let plain = app
        .service_key(&fresh_service("plain"), &[READ, WRITE, INTROSPECT])
        .await;
    let exchanger = app.service_key(&fresh_service("exchanger"), &[EXCHANGE]).await;
    let impersonator = app
        .service_key(&fresh_service("impersonator"), &[IMPERSONATE])
        .await;

    for key in [&plain, &impersonator] {
        let status = assert_error(
            exchange(&app, key, token_exchange(&tokens.access_token, BILLING, "")).await,
            Code::PermissionDenied,
            "MISSING_SCOPE",
        );
        assert_eq!(missing_scope(&status), EXCHANGE);
    }
    for key in [&plain, &exchanger] {
        let status = assert_error(
            exchange(&app, key, impersonation(&user.id, BILLING, "")).await,
            Code::PermissionDenied,
            "MISSING_SCOPE",
        );
        assert_eq!(missing_scope(&status), IMPERSONATE);
    }
    // client_credentials needs no particular scope.
    exchange(&app, &exchanger, client_credentials("", ""))
        .await
        .unwrap();
}

#[tokio::test]
async fn impersonating_a_disabled_or_unknown_account_is_an_invalid_grant() {
    let app = spawn().await;
    let key = app.service_key(&fresh_service("helpdesk"), &[IMPERSONATE]).await;
    let admin = app.service_key("test-admin", &[READ, WRITE]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    exchange(&app, &key, impersonation(&user.id, BILLING, ""))
        .await
        .expect("the control: an enabled account");
    disable(&app, &admin, &user.id).await.unwrap();
    refused_on(
        exchange(&app, &key, impersonation(&user.id, BILLING, "")).await,
        "GRANT_INVALID",
        "requested_subject",
    );
    refused_on(
        exchange(
            &app,
            &key,
            impersonation(&uuid::Uuid::new_v4().to_string(), BILLING, ""),
        )
        .await,
        "GRANT_INVALID",
        "requested_subject",
    );
    // Enabled again: impersonable again.
    crate::admin::enable(&app, &admin, &user.id).await.unwrap();
    exchange(&app, &key, impersonation(&user.id, BILLING, ""))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unsupported_or_missing_grant_type_is_an_invalid_argument_on_grant_type() {
    let app = spawn().await;
    let key = app.service_key(&fresh_service("any"), &[READ]).await;
    for (grant_type, field_reason) in [
        ("password", "INVALID_FORMAT"),
        ("authorization_code", "INVALID_FORMAT"),
        ("refresh_token", "INVALID_FORMAT"),
        ("CLIENT_CREDENTIALS", "INVALID_FORMAT"),
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", "INVALID_FORMAT"),
        ("", "REQUIRED"),
    ] {
        let status = assert_error(
            exchange(
                &app,
                &key,
                pb::ExchangeTokenRequest {
                    grant_type: grant_type.into(),
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(
            field_reasons(&status),
            pairs(&[("grant_type", field_reason)]),
            "{grant_type:?}"
        );
    }
}

#[tokio::test]
async fn malformed_parameters_are_invalid_arguments_naming_the_field() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let key = app
        .service_key(&fresh_service("shape"), &[EXCHANGE, IMPERSONATE])
        .await;
    let cases: Vec<(pb::ExchangeTokenRequest, Vec<(&str, &str)>)> = vec![
        (
            pb::ExchangeTokenRequest {
                subject_token: tokens.access_token.clone(),
                ..client_credentials("", "")
            },
            vec![("subject_token", "INVALID_FORMAT")],
        ),
        (
            pb::ExchangeTokenRequest {
                requested_subject: user.id.clone(),
                ..client_credentials("", "")
            },
            vec![("requested_subject", "INVALID_FORMAT")],
        ),
        (
            token_exchange(&tokens.access_token, "", ""),
            vec![("audience", "REQUIRED")],
        ),
        (
            token_exchange("", BILLING, ""),
            vec![("subject_token", "REQUIRED")],
        ),
        (
            pb::ExchangeTokenRequest {
                requested_subject: user.id.clone(),
                ..token_exchange(&tokens.access_token, BILLING, "")
            },
            vec![("requested_subject", "INVALID_FORMAT")],
        ),
        (
            impersonation("not-a-uuid", BILLING, ""),
            vec![("requested_subject", "INVALID_FORMAT")],
        ),
        (
            pb::ExchangeTokenRequest {
                subject_token_type: "urn:ietf:params:oauth:token-type:refresh_token".into(),
                ..token_exchange(&tokens.access_token, BILLING, "")
            },
            vec![("subject_token_type", "INVALID_FORMAT")],
        ),
        (
            client_credentials("bill ing", ""),
            vec![("audience", "INVALID_FORMAT")],
        ),
        (
            client_credentials(&"a".repeat(300), ""),
            vec![("audience", "INVALID_FORMAT")],
        ),
        (
            client_credentials("", "users.read \"x\""),
            vec![("scope", "INVALID_CHARACTERS")],
        ),
        (
            client_credentials("", &"s ".repeat(1100)),
            vec![("scope", "TOO_LONG")],
        ),
        (
            client_credentials(
                "",
                &(0..33).map(|i| format!("s{i}")).collect::<Vec<_>>().join(" "),
            ),
            vec![("scope", "TOO_LONG")],
        ),
    ];
    for (request, expected) in cases {
        let status = assert_error(
            exchange(&app, &key, request.clone()).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(field_reasons(&status), pairs(&expected), "{request:?}");
    }
}
