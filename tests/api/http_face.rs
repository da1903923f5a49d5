//! The HTTP face on the gRPC port: documents, the key set, the token and
//! introspection endpoints answered to a plain HTTP/1.1 client.

use base64::Engine as _;
use serde_json::Value;

use crate::helpers::spawn_app_with;
use crate::http1::{Request, basic};

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish().into_bytes()
}

fn post_form<'a>(path: &'a str, pairs: &[(&str, &str)]) -> Request<'a> {
    let mut request = Request::new("POST", path).header("content-type", "application/x-www-form-urlencoded");
    request.body = form(pairs);
    request
}

#[tokio::test]
async fn the_metadata_names_endpoints_that_answer() {
    let app = spawn_app_with(|c| c.audiences = vec!["billing".into()]).await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let response = Request::new("GET", path).send(app.addr).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert!(response.header("cache-control").unwrap().contains("max-age"));
        let doc = response.json();
        assert_eq!(doc["issuer"], app.config.issuer.as_str());
        assert_eq!(
            doc["token_endpoint"],
            format!("{}/oauth2/token", app.config.issuer)
        );
    }
    let jwks = Request::new("GET", "/.well-known/jwks.json").send(app.addr).await;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.header("content-type"), Some("application/jwk-set+json"));
    let keys = jwks.json();
    assert!(keys["keys"][0]["kid"].is_string(), "{keys}");
    let wrong = Request::new("DELETE", "/.well-known/jwks.json")
        .send(app.addr)
        .await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET"));
}

#[tokio::test]
async fn a_service_trades_its_key_for_a_token_and_introspects_it() {
    let app = spawn_app_with(|c| c.audiences = vec!["billing".into()]).await;
    let key = app
        .service_key("reports", &["tokens.introspect", "users.read"])
        .await;
    let response = post_form(
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("audience", "billing"),
            ("scope", "users.read"),
        ],
    )
    .header("authorization", basic("reports", &key))
    .send(app.addr)
    .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let granted = response.json();
    assert_eq!(granted["token_type"], "Bearer");
    assert_eq!(granted["scope"], "users.read");
    assert!(granted["expires_in"].as_u64().unwrap() <= 300);
    let token = granted["access_token"].as_str().unwrap();

    let answer = post_form("/oauth2/introspect", &[("token", token)])
        .header("authorization", basic("reports", &key))
        .send(app.addr)
        .await;
    assert_eq!(answer.status, 200);
    let about = answer.json();
    assert_eq!(about["active"], true, "{about}");
    assert_eq!(about["aud"], "billing");
    assert_eq!(about["sub"], "svc:reports");
    assert_eq!(about["client_id"], "reports");

    let nonsense = post_form("/oauth2/introspect", &[("token", "nonsense")])
        .header("authorization", basic("reports", &key))
        .send(app.addr)
        .await;
    assert_eq!(nonsense.json(), serde_json::json!({"active": false}));
}

#[tokio::test]
async fn a_users_token_is_exchanged_for_one_service_over_http() {
    let app = spawn_app_with(|c| c.audiences = vec!["billing".into()]).await;
    let (_, tokens) = app.signed_in_user().await;
    let key = app.service_key("frontend", &["tokens.exchange"]).await;
    let response = post_form(
        "/oauth2/token",
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", &tokens.access_token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", "billing"),
            ("client_id", "frontend"),
            ("client_secret", &key),
        ],
    )
    .send(app.addr)
    .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let granted = response.json();
    assert_eq!(
        granted["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let token = granted["access_token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "billing");
    assert_eq!(claims["act"]["sub"], "svc:frontend");

    let unregistered = post_form(
        "/oauth2/token",
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", &tokens.access_token),
            ("audience", "payroll"),
        ],
    )
    .header("authorization", basic("frontend", &key))
    .send(app.addr)
    .await;
    assert_eq!(unregistered.status, 400);
    assert_eq!(unregistered.json()["error"], "invalid_target");

    let no_client = post_form("/oauth2/token", &[("grant_type", "client_credentials")])
        .send(app.addr)
        .await;
    assert_eq!(no_client.status, 401);
    assert_eq!(no_client.json()["error"], "invalid_client");
    assert!(no_client.header("www-authenticate").unwrap().starts_with("Basic"));
}

#[tokio::test]
async fn browsers_of_configured_origins_may_read_the_documents() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["http://localhost:3000".into()]).await;
    let allowed = Request::new("GET", "/.well-known/openid-configuration")
        .header("origin", "http://localhost:3000")
        .send(app.addr)
        .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let elsewhere = Request::new("GET", "/.well-known/jwks.json")
        .header("origin", "https://evil.example")
        .send(app.addr)
        .await;
    assert_eq!(elsewhere.status, 200);
    assert_eq!(elsewhere.header("access-control-allow-origin"), None);
}
