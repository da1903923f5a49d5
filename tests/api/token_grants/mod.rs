//! ExchangeToken from outside: every grant's success (client_credentials,
//! token exchange, re-exchange, impersonation), every error it answers,
//! what ends the tokens it mints, and a property run over arbitrary
//! requests. The adversarial cases are in `adversarial::token_grants`.

mod client_credentials;
mod errors;
mod exchange;
mod http;
mod properties;
mod revocation;

use authd::domain::token_request::{GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS};
use authd::pb::auth::v1 as pb;
use serde_json::Value;
use tonic::Status;

use crate::helpers::*;

/// authd's own audience in the harness (`Config.audience`).
pub const OWN: &str = "test-services";
/// Two further registered audiences.
pub const BILLING: &str = "billing";
pub const LEDGER: &str = "ledger";
/// An audience nobody registered.
pub const ELSEWHERE: &str = "elsewhere";

pub const READ: &str = "users.read";
pub const WRITE: &str = "users.write";
pub const INTROSPECT: &str = "tokens.introspect";
pub const EXCHANGE: &str = "tokens.exchange";
pub const IMPERSONATE: &str = "users.impersonate";

pub const CLIENT_CREDENTIALS: &str = GRANT_CLIENT_CREDENTIALS;
pub const TOKEN_EXCHANGE: &str = GRANT_TOKEN_EXCHANGE;
pub const ACCESS_TOKEN_TYPE: &str = TOKEN_TYPE_ACCESS;

/// A server whose further audiences are `billing` and `ledger`.
pub async fn spawn() -> TestApp {
    spawn_app_with(|c| c.audiences = vec![BILLING.into(), LEDGER.into()]).await
}

/// ExchangeToken with `credential` as the bearer (none when empty).
pub async fn exchange(
    app: &TestApp,
    credential: &str,
    request: pb::ExchangeTokenRequest,
) -> Result<pb::ExchangeTokenResponse, Status> {
    let request = if credential.is_empty() {
        tonic::Request::new(request)
    } else {
        with_bearer(request, credential)
    };
    app.client
        .clone()
        .exchange_token(request)
        .await
        .map(tonic::Response::into_inner)
}

pub fn client_credentials(audience: &str, scope: &str) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        grant_type: CLIENT_CREDENTIALS.into(),
        audience: audience.into(),
        scope: scope.into(),
        ..Default::default()
    }
}

pub fn token_exchange(subject_token: &str, audience: &str, scope: &str) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        grant_type: TOKEN_EXCHANGE.into(),
        audience: audience.into(),
        scope: scope.into(),
        subject_token: subject_token.into(),
        ..Default::default()
    }
}

pub fn impersonation(user_id: &str, audience: &str, scope: &str) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        grant_type: TOKEN_EXCHANGE.into(),
        audience: audience.into(),
        scope: scope.into(),
        requested_subject: user_id.into(),
        ..Default::default()
    }
}

/// A service token minted by `key` (client_credentials).
pub async fn service_token(app: &TestApp, key: &str, audience: &str, scope: &str) -> String {
    exchange(app, key, client_credentials(audience, scope))
        .await
        .expect("client_credentials")
        .access_token
}

/// `subject` exchanged by the service of `key` for `audience`.
pub async fn exchanged(app: &TestApp, key: &str, subject: &str, audience: &str) -> String {
    exchange(app, key, token_exchange(subject, audience, ""))
        .await
        .expect("token exchange")
        .access_token
}

/// A fresh account with these roles, logged in after they were set.
pub async fn user_with_roles(app: &TestApp, roles: &[&str]) -> (pb::User, pb::TokenPair) {
    let email = fresh_email();
    let user = app.register(&email, PASSWORD).await;
    if !roles.is_empty() {
        let writer = app.service_key("role-setter", &[WRITE]).await;
        crate::admin::set_roles(app, &writer, &user.id, roles)
            .await
            .unwrap();
    }
    let tokens = app.tokens_of(&email).await;
    (user, tokens)
}

/// A service account name no other call of the test uses.
pub fn fresh_service(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A claim that is a space-separated list, as a sorted vector.
pub fn words(value: &str) -> Vec<String> {
    let mut words: Vec<String> = value.split_ascii_whitespace().map(str::to_owned).collect();
    words.sort();
    words
}

/// `values` sorted, as owned strings.
pub fn sorted(values: &[&str]) -> Vec<String> {
    let mut values: Vec<String> = values.iter().map(|s| (*s).to_owned()).collect();
    values.sort();
    values
}

/// `token` with its claims replaced and signed again by the app's own
/// key: a token authd could have minted.
pub fn resigned(app: &TestApp, token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = jwt_claims(token);
    edit(&mut claims);
    sign_ed25519(&app.signing_pem, &jwt_header(token), &claims)
}

/// The `act` chain of a token's claims, the current actor first.
pub fn actors(claims: &Value) -> Vec<String> {
    let mut chain = Vec::new();
    let mut act = &claims["act"];
    while let Some(sub) = act["sub"].as_str() {
        chain.push(sub.to_owned());
        act = &act["act"];
    }
    chain
}

pub use crate::metrics::caches_on;
