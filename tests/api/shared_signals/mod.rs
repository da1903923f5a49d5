//! Shared Signals end to end: streams configured over the HTTP face, the
//! changes of real RPCs delivered as SETs to examples/ssf/receiver.py (an
//! independent receiver that checks them against the RFCs), by push and by
//! poll.

mod adversarial;
mod delivery;
mod streams;

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, with_bearer};
use crate::http1::{HttpResponse, Request};
use crate::ssf_receiver_kit::{Poll, PollRun, PushReceiver, jwks_url, run_poll};

pub const ISSUER: &str = "https://authd.test";
pub const PUSH: &str = "urn:ietf:rfc:8935";
pub const POLL: &str = "urn:ietf:rfc:8936";

pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
pub const TOKEN_CLAIMS_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
pub const ACCOUNT_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
pub const ACCOUNT_ENABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";
pub const ACCOUNT_PURGED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-purged";
pub const IDENTIFIER_CHANGED: &str = "https://schemas.openid.net/secevent/risc/event-type/identifier-changed";
#[allow(dead_code)] // the stream tests use them
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
#[allow(dead_code)]
pub const STREAM_UPDATED: &str = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";

/// Generous: the suite runs many servers on two cores.
pub const WAIT: Duration = Duration::from_secs(30);

/// A request to the app's SSF endpoints with a receiver's credential.
pub async fn ssf(app: &TestApp, method: &str, path: &str, key: &str, body: Option<&Value>) -> HttpResponse {
    let mut request = Request::new(method, path).bearer(key);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send(app.addr).await
}

/// Creates a stream; panics unless 201.
pub async fn create_stream(app: &TestApp, key: &str, body: &Value) -> Value {
    let response = ssf(app, "POST", "/ssf/streams", key, Some(body)).await;
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

/// A push stream to `receiver`, with its Authorization value.
pub async fn push_stream(app: &TestApp, key: &str, receiver: &PushReceiver, authorization: &str) -> Value {
    create_stream(
        app,
        key,
        &json!({"delivery": {"method": PUSH, "endpoint_url": receiver.url,
                             "authorization_header": authorization}}),
    )
    .await
}

/// A receiver for the app's SETs to `audience`.
pub async fn receiver(app: &TestApp, audience: &str, authorization: &str) -> Option<PushReceiver> {
    PushReceiver::spawn(&jwks_url(app.addr), ISSUER, audience, Some(authorization)).await
}

/// The event type of a recorded SET (one event per SET).
pub fn event_type(line: &Value) -> String {
    let events = line["events"].as_object().expect("events");
    assert_eq!(events.len(), 1, "one event per SET: {line}");
    events.keys().next().cloned().unwrap_or_default()
}

pub fn event_types<'a>(lines: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    lines.into_iter().map(event_type).collect()
}

/// Polls `stream` with receiver.py until it recorded `until` SETs.
pub async fn poll_until(
    app: &TestApp,
    key: &str,
    stream: &Value,
    audience: &str,
    until: u32,
) -> Option<PollRun> {
    let url = stream["delivery"]["endpoint_url"].as_str().expect("poll URL");
    // The receiver polls the app itself, by its real address.
    let url = url.replace(ISSUER, &format!("http://{}", app.addr));
    let authorization = format!("Bearer {key}");
    let jwks = jwks_url(app.addr);
    run_poll(&Poll {
        url: &url,
        authorization: &authorization,
        issuer: ISSUER,
        audience,
        jwks_url: &jwks,
        max_events: 50,
        return_immediately: false,
        until: Some(until),
        timeout: WAIT,
        expect_state: None,
    })
    .await
}

/// The app's address as a receiver's URL sees it.
pub fn base(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

/// An admin key that may change accounts.
pub async fn admin_key(app: &TestApp) -> String {
    app.service_key("ssf-admin", &["users.read", "users.write"]).await
}

pub async fn disable(app: &TestApp, key: &str, user_id: &str) {
    app.admin()
        .disable_user(with_bearer(
            authd::pb::auth::v1::DisableUserRequest {
                user_id: user_id.into(),
            },
            key,
        ))
        .await
        .unwrap();
}

pub async fn enable(app: &TestApp, key: &str, user_id: &str) {
    app.admin()
        .enable_user(with_bearer(
            authd::pb::auth::v1::EnableUserRequest {
                user_id: user_id.into(),
            },
            key,
        ))
        .await
        .unwrap();
}

/// A new account, disabled then enabled: one account-disabled and one
/// account-enabled SET for a stream that asked for those. Its id.
pub async fn disable_and_enable(app: &TestApp, admin: &str) -> String {
    let user = app
        .register(&crate::helpers::fresh_email(), crate::helpers::PASSWORD)
        .await;
    disable(app, admin, &user.id).await;
    enable(app, admin, &user.id).await;
    user.id
}

/// The account events the status and delivery tests count on: one SET per
/// change, whatever else the change writes to the log.
pub fn account_events() -> Value {
    json!([ACCOUNT_DISABLED, ACCOUNT_ENABLED])
}

/// The stream's row as the tests look at it: (cursor_event, cursor_sets,
/// acked, last_error).
pub async fn stream_row(app: &TestApp, stream_id: &str) -> (i64, i32, Vec<String>, Option<String>) {
    sqlx::query_as("SELECT cursor_event, cursor_sets, acked, last_error FROM ssf_streams WHERE id = $1::uuid")
        .bind(stream_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// The `sub` a SET is about (its user, in a complex subject too).
pub fn subject(set: &Value) -> Option<&str> {
    let sub_id = &set["sub_id"];
    let user = if sub_id["format"] == "complex" {
        &sub_id["user"]
    } else {
        sub_id
    };
    user["sub"].as_str()
}

/// Asks for a verification SET carrying `state`; authd must accept (204).
pub async fn verify(app: &TestApp, key: &str, id: &str, state: &str) {
    let response = ssf(
        app,
        "POST",
        "/ssf/verify",
        key,
        Some(&json!({"stream_id": id, "state": state})),
    )
    .await;
    assert_eq!(
        response.status,
        204,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}
