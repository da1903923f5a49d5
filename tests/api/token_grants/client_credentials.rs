//! client_credentials: a service trades its key for its own short-lived
//! token, for authd or another registered audience, with all its scopes or
//! fewer; authd then takes the token wherever it takes the key, with the
//! token's scopes only.

use std::time::Duration;

use tonic::Code;

use super::*;
use crate::admin::{disable, get_user, missing_scope};

#[tokio::test]
async fn client_credentials_without_an_audience_mints_a_service_token_for_authd() {
    let app = spawn().await;
    let name = fresh_service("reporting");
    let key = app.service_key(&name, &[READ, INTROSPECT]).await;

    let before = now();
    let granted = exchange(&app, &key, client_credentials("", "")).await.unwrap();
    assert_eq!(granted.token_type, "Bearer");
    assert_eq!(granted.expires_in, 300, "AUTHD_SERVICE_TOKEN_TTL's default");
    assert_eq!(granted.issued_token_type, ACCESS_TOKEN_TYPE);
    assert_eq!(
        words(&granted.scope),
        sorted(&[READ, INTROSPECT]),
        "all of its scopes"
    );

    let header = jwt_header(&granted.access_token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    let claims = jwt_claims(&granted.access_token);
    assert_eq!(claims["iss"], "https://authd.test");
    assert_eq!(claims["aud"], OWN);
    assert_eq!(claims["sub"], format!("svc:{name}"));
    assert_eq!(claims["client_id"], name.as_str());
    assert_eq!(
        words(claims["scope"].as_str().unwrap()),
        sorted(&[READ, INTROSPECT])
    );
    let iat = claims["iat"].as_i64().unwrap();
    assert!((before - 1..=now() + 1).contains(&iat), "iat {iat}");
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 300));
    uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).expect("a jti");
    uuid::Uuid::parse_str(claims["key_id"].as_str().unwrap()).expect("the minting key's id");
    for absent in ["sid", "act", "roles", "amr"] {
        assert!(
            claims.get(absent).is_none(),
            "a service token has no {absent}: {claims}"
        );
    }

    // Two calls, two tokens.
    let again = service_token(&app, &key, "", "").await;
    assert_ne!(jwt_claims(&again)["jti"], claims["jti"]);
}

#[tokio::test]
async fn client_credentials_for_a_registered_audience_names_it_and_introspects_so() {
    let app = spawn().await;
    let name = fresh_service("payments");
    let key = app.service_key(&name, &[READ, EXCHANGE]).await;

    let granted = exchange(&app, &key, client_credentials(BILLING, ""))
        .await
        .unwrap();
    let claims = jwt_claims(&granted.access_token);
    assert_eq!(claims["aud"], BILLING);
    assert_eq!(claims["sub"], format!("svc:{name}"));

    let answer = app.introspect(&granted.access_token).await.unwrap();
    assert!(answer.active, "{answer:?}");
    assert_eq!(answer.audience, BILLING);
    assert_eq!(answer.client_id, name);
    assert_eq!(words(&answer.scope), sorted(&[READ, EXCHANGE]));
    assert!(answer.user_id.is_empty() && answer.session_id.is_empty());
    assert_eq!(
        answer.expires_at.map(|t| t.seconds),
        claims["exp"].as_i64(),
        "{answer:?}"
    );
    // The same for authd's own audience, named explicitly.
    let own = service_token(&app, &key, OWN, "").await;
    assert_eq!(jwt_claims(&own)["aud"], OWN);
    assert_eq!(app.introspect(&own).await.unwrap().audience, OWN);
}

#[tokio::test]
async fn client_credentials_narrows_to_the_scopes_asked() {
    let app = spawn().await;
    let key = app
        .service_key(&fresh_service("narrow"), &[READ, WRITE, INTROSPECT])
        .await;
    let granted = exchange(&app, &key, client_credentials(LEDGER, "users.read"))
        .await
        .unwrap();
    assert_eq!(granted.scope, READ);
    assert_eq!(jwt_claims(&granted.access_token)["scope"], READ);

    // Repeats and extra spaces are one scope each.
    let granted = exchange(
        &app,
        &key,
        client_credentials(LEDGER, "  tokens.introspect users.read  tokens.introspect "),
    )
    .await
    .unwrap();
    assert_eq!(words(&granted.scope), sorted(&[READ, INTROSPECT]));
    assert_eq!(
        words(jwt_claims(&granted.access_token)["scope"].as_str().unwrap()),
        sorted(&[READ, INTROSPECT])
    );
}

#[tokio::test]
async fn the_service_token_lifetime_follows_the_setting() {
    let app = spawn_app_with(|c| {
        c.audiences = vec![BILLING.into()];
        c.service_token_ttl = Duration::from_secs(60);
    })
    .await;
    let key = app.service_key(&fresh_service("short"), &[READ]).await;
    let granted = exchange(&app, &key, client_credentials(BILLING, ""))
        .await
        .unwrap();
    assert_eq!(granted.expires_in, 60);
    let claims = jwt_claims(&granted.access_token);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
}

#[tokio::test]
async fn a_service_token_works_wherever_its_key_does_with_its_scopes_only() {
    let app = spawn().await;
    let key = app
        .service_key(&fresh_service("ops"), &[READ, WRITE, INTROSPECT])
        .await;
    let (user, tokens) = app.signed_in_user().await;

    // Every scope of the key: AdminService and IntrospectToken answer it.
    let full = service_token(&app, &key, "", "").await;
    assert_eq!(get_user(&app, &full, &user.id).await.unwrap().id, user.id);
    let answer = app
        .client
        .clone()
        .introspect_token(with_bearer(
            pb::IntrospectTokenRequest {
                access_token: tokens.access_token.clone(),
            },
            &full,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
    assert_eq!(answer.user_id, user.id);

    // Narrowed to users.read: reads, but neither writes nor introspects.
    let reader = service_token(&app, &key, "", READ).await;
    assert_eq!(get_user(&app, &reader, &user.id).await.unwrap().id, user.id);
    let status = assert_error(
        disable(&app, &reader, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), WRITE);
    let status = assert_error(
        app.client
            .clone()
            .introspect_token(with_bearer(
                pb::IntrospectTokenRequest {
                    access_token: tokens.access_token.clone(),
                },
                &reader,
            ))
            .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), INTROSPECT);
    assert!(!get_user(&app, &full, &user.id).await.unwrap().disabled);

    // The full token writes.
    assert!(disable(&app, &full, &user.id).await.unwrap().disabled);

    // A service token is no user's: authd's account RPCs refuse it.
    assert_error(app.get_me(&full).await, Code::Unauthenticated, "TOKEN_INVALID");
}
