use authd::crypto::keys::Key;
use authd::pb::auth::v1 as pb;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::*;

/// Signs `claims` with the app's real key (as an attacker who stole nothing
/// cannot; used to build tokens that differ in one claim only).
fn sign(pem: &str, claims: &Value, typ: Option<&str>) -> String {
    let key = Key::from_pkcs8_pem(pem).unwrap();
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    h.typ = typ.map(str::to_owned);
    let encoding = match key.alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()),
    };
    jsonwebtoken::encode(&h, claims, &encoding.unwrap()).unwrap()
}

#[tokio::test]
async fn get_me_returns_the_bearer() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let me = app.get_me(&tokens.access_token).await.unwrap();
    assert_eq!(me, user);
}

#[tokio::test]
async fn access_tokens_carry_the_documented_header_and_claims() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let h = jwt_header(&tokens.access_token);
    assert_eq!(h["alg"], "EdDSA");
    assert_eq!(h["typ"], "at+jwt");
    assert!(h["kid"].is_string());
    let c = jwt_claims(&tokens.access_token);
    assert_eq!(c["iss"], "https://authd.test");
    assert_eq!(c["aud"], "test-services");
    assert_eq!(c["sub"], user.id.as_str());
    for claim in ["sid", "jti"] {
        assert!(c[claim].is_string(), "{claim}");
    }
    let (iat, nbf, exp) = (
        c["iat"].as_i64().unwrap(),
        c["nbf"].as_i64().unwrap(),
        c["exp"].as_i64().unwrap(),
    );
    assert_eq!(nbf, iat);
    assert_eq!(exp - iat, 900);
}

#[tokio::test]
async fn a_missing_bearer_is_token_missing() {
    let app = spawn_app().await;
    let result = app.client.clone().get_me(pb::GetMeRequest {}).await;
    assert_error(result, Code::Unauthenticated, "TOKEN_MISSING");
}

#[tokio::test]
async fn malformed_bearers_are_token_invalid() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    for header_value in [
        "garbage".to_owned(),
        "Bearer garbage".to_owned(),
        "Bearer a.b.c".to_owned(),
        format!("Basic {}", tokens.access_token),
        tokens.access_token.clone(),
        format!("Bearer {}", tokens.refresh_token),
    ] {
        let mut request = tonic::Request::new(pb::GetMeRequest {});
        request
            .metadata_mut()
            .insert("authorization", header_value.parse().unwrap());
        let result = app.client.clone().get_me(request).await;
        assert_error(result, Code::Unauthenticated, "TOKEN_INVALID");
    }
}

#[tokio::test]
async fn tampered_tokens_are_token_invalid() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let parts: Vec<&str> = tokens.access_token.split('.').collect();
    let mut claims = jwt_claims(&tokens.access_token);
    claims["sub"] = json!(uuid::Uuid::new_v4().to_string());
    let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_error(
        app.get_me(&tampered).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    // A truncated signature.
    let truncated = &tokens.access_token[..tokens.access_token.len() - 4];
    assert_error(
        app.get_me(truncated).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

#[tokio::test]
async fn expired_tokens_are_token_expired() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let mut claims = jwt_claims(&tokens.access_token);
    claims["iat"] = json!(now() - 3600);
    claims["nbf"] = json!(now() - 3600);
    claims["exp"] = json!(now() - 60);
    let expired = sign(&app.signing_pem, &claims, Some("at+jwt"));
    assert_error(app.get_me(&expired).await, Code::Unauthenticated, "TOKEN_EXPIRED");
}

#[tokio::test]
async fn tokens_differing_in_one_rule_are_token_invalid() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let good = jwt_claims(&tokens.access_token);
    // The control: the same claims signed the same way are accepted.
    let control = sign(&app.signing_pem, &good, Some("at+jwt"));
    app.get_me(&control).await.unwrap();

    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut c = good.clone();
    c["aud"] = json!("another-service");
    cases.push(("wrong audience", sign(&app.signing_pem, &c, Some("at+jwt"))));
    let mut c = good.clone();
    c["iss"] = json!("https://evil.example");
    cases.push(("wrong issuer", sign(&app.signing_pem, &c, Some("at+jwt"))));
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("aud");
    cases.push(("no audience", sign(&app.signing_pem, &c, Some("at+jwt"))));
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("exp");
    cases.push(("no expiry", sign(&app.signing_pem, &c, Some("at+jwt"))));
    let mut c = good.clone();
    c["nbf"] = json!(now() + 600);
    cases.push(("not yet valid", sign(&app.signing_pem, &c, Some("at+jwt"))));
    cases.push(("typ JWT", sign(&app.signing_pem, &good, Some("JWT"))));
    cases.push(("no typ", sign(&app.signing_pem, &good, None)));
    let other_key = authd::crypto::keys::generate_ed25519_pem().unwrap();
    cases.push(("unknown key", sign(&other_key, &good, Some("at+jwt"))));
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
    cases.push((
        "alg none",
        format!("{none_header}.{}.", URL_SAFE_NO_PAD.encode(good.to_string())),
    ));
    for (what, token) in cases {
        let status = app.get_me(&token).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert_eq!(reason(&status), "TOKEN_INVALID", "{what}");
    }
}

#[tokio::test]
async fn jwks_lets_a_service_verify_tokens_locally() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let jwks = app
        .client
        .clone()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.keys.len(), 1);
    let jwk = &jwks.keys[0];
    assert_eq!(
        (
            jwk.kty.as_str(),
            jwk.crv.as_str(),
            jwk.alg.as_str(),
            jwk.r#use.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    assert_eq!(jwt_header(&tokens.access_token)["kid"], jwk.kid.as_str());
    let doc: Value = serde_json::from_str(&jwks.jwks_json).unwrap();
    assert_eq!(doc["keys"][0]["x"], jwk.x.as_str());
    assert!(!jwks.jwks_json.contains("\"d\""), "no private material");

    // What a microservice does: verify with nothing but the JWK.
    let key = DecodingKey::from_ed_components(&jwk.x).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["test-services"]);
    validation.set_issuer(&["https://authd.test"]);
    let data = jsonwebtoken::decode::<Value>(&tokens.access_token, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], user.id.as_str());
}

#[tokio::test]
async fn introspection_tells_active_tokens_from_the_rest() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let answer = app.introspect(&tokens.access_token).await.unwrap();
    assert!(answer.active);
    assert_eq!(answer.user_id, user.id);
    assert_eq!(answer.session_id, session_of(&tokens.access_token));
    assert_eq!(
        answer.expires_at.unwrap().seconds,
        jwt_claims(&tokens.access_token)["exp"].as_i64().unwrap()
    );

    for inactive in ["garbage", tokens.refresh_token.as_str()] {
        let answer = app.introspect(inactive).await.unwrap();
        assert_eq!(answer, pb::IntrospectTokenResponse::default());
    }
    let status = app.introspect("").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["access_token"]);
}

#[tokio::test]
async fn a_token_of_an_ended_session_is_refused_at_once() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    sqlx::query("UPDATE sessions SET revoked_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    assert_error(
        app.get_me(&tokens.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    let answer = app.introspect(&tokens.access_token).await.unwrap();
    assert!(!answer.active);
}
