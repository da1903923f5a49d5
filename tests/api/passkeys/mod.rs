//! Passkeys from the outside, refusal by refusal (issue 25, items 4 and 6):
//! ceremonies across replicas and replays, counters and cloned keys,
//! credentials of other accounts, user verification and origins, passkeys
//! as second factors, named logins, malformed answers, throttling and the
//! account's state. Keys are `crate::passkey_kit`'s: webauthn-rs's
//! `SoftPasskey`, or the kit's hand-made `RawKey` where a test needs to copy
//! a key or choose what it signs.
//!
//! Every refusal is checked for its code and `ErrorInfo` reason, and for
//! leaving nothing half-written (`Written`).

mod accounts;
mod ceremonies;
mod counters;
mod malformed;
mod named_login;
mod ownership;
mod second_factor;
mod throttling;
mod verification;

use authd::pb::auth::v1 as pb;
use serde_json::Value;
use tonic::{Code, Status};

use crate::helpers::*;
pub use crate::passkey_kit::{Authenticator, RawKey, SoftKey, passkey_login, register_passkey, to_struct};

pub const PASSKEY_CLONED: &str = "A sign-in with a copy of your passkey was refused";

pub fn json(options: &Option<prost_types::Struct>) -> Value {
    authd::grpc::convert::struct_to_json(options.clone().expect("options"))
}

pub async fn start_registration(
    app: &TestApp,
    access: &str,
) -> Result<pb::StartPasskeyRegistrationResponse, Status> {
    app.client
        .clone()
        .start_passkey_registration(with_bearer(
            pb::StartPasskeyRegistrationRequest { name: "Key".into() },
            access,
        ))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn finish_registration(
    app: &TestApp,
    access: &str,
    ceremony_id: &str,
    credential: Value,
) -> Result<pb::FinishPasskeyRegistrationResponse, Status> {
    app.client
        .clone()
        .finish_passkey_registration(with_bearer(
            pb::FinishPasskeyRegistrationRequest {
                ceremony_id: ceremony_id.into(),
                credential: Some(to_struct(credential)),
            },
            access,
        ))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn start_login(app: &TestApp, login: &str) -> pb::StartPasskeyLoginResponse {
    app.client
        .clone()
        .start_passkey_login(pb::StartPasskeyLoginRequest { login: login.into() })
        .await
        .expect("StartPasskeyLogin")
        .into_inner()
}

pub async fn finish_login(
    app: &TestApp,
    ceremony_id: &str,
    credential: Value,
) -> Result<pb::FinishPasskeyLoginResponse, Status> {
    app.client
        .clone()
        .finish_passkey_login(pb::FinishPasskeyLoginRequest {
            ceremony_id: ceremony_id.into(),
            credential: Some(to_struct(credential)),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A started login (discoverable when `login` is empty) and the key's
/// answer to it.
pub async fn answered(app: &TestApp, login: &str, key: &mut impl Authenticator) -> (String, Value) {
    let started = start_login(app, login).await;
    let answer = key.get(started.options.as_ref().unwrap());
    (started.ceremony_id, answer)
}

/// An account with a password and one passkey, and the session that
/// registered it (fresh, proven by the passkey).
pub struct PasskeyUser<K> {
    pub user: pb::User,
    pub email: String,
    pub key: K,
    pub factor: pb::Factor,
    pub tokens: pb::TokenPair,
}

pub async fn passkey_user<K: Authenticator>(app: &TestApp, mut key: K) -> PasskeyUser<K> {
    let (user, tokens) = app.signed_in_user().await;
    let factor = register_passkey(app, &tokens.access_token, &mut key).await;
    let tokens = app.refresh(&tokens.refresh_token).await.expect("Refresh");
    PasskeyUser {
        email: user.email.clone(),
        user,
        key,
        factor,
        tokens,
    }
}

/// Row counts of everything a passkey ceremony may write: a refusal
/// changes none of them (the ceremony it took aside).
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    passkeys: i64,
    factors: i64,
    sessions: i64,
    refresh_tokens: i64,
    recovery_codes: i64,
    mail: i64,
    last_used: i64,
    sign_counts: i64,
}

pub async fn written(app: &TestApp) -> Written {
    let (passkeys, factors, sessions, refresh_tokens, recovery_codes, mail, last_used, sign_counts): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM passkeys), (SELECT count(*) FROM factors),
                (SELECT count(*) FROM sessions), (SELECT count(*) FROM refresh_tokens),
                (SELECT count(*) FROM recovery_codes), (SELECT count(*) FROM email_outbox),
                (SELECT count(*) FROM factors WHERE last_used_at IS NOT NULL),
                (SELECT coalesce(sum(sign_count), 0)::bigint FROM passkeys)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    Written {
        passkeys,
        factors,
        sessions,
        refresh_tokens,
        recovery_codes,
        mail,
        last_used,
        sign_counts,
    }
}

/// Ceremonies waiting for an answer.
pub async fn ceremonies(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webauthn_ceremonies")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Mails of `kind` queued for the account.
pub async fn queued(app: &TestApp, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE kind = $1")
        .bind(kind)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// A refused login: UNAUTHENTICATED PASSKEY_INVALID, no session.
#[track_caller]
pub fn assert_login_refused(result: Result<impl std::fmt::Debug, Status>) -> Status {
    assert_error(result, Code::Unauthenticated, "PASSKEY_INVALID")
}

/// A refused passkey at StepUp: the bearer's session is fine, so
/// INVALID_ARGUMENT PASSKEY_INVALID (as a wrong code there), never the
/// UNAUTHENTICATED that tells a client its session is gone.
#[track_caller]
pub fn assert_step_up_refused(result: Result<impl std::fmt::Debug, Status>) -> Status {
    assert_error(result, Code::InvalidArgument, "PASSKEY_INVALID")
}

/// A refused second factor at CompleteLogin: as a wrong code there,
/// UNAUTHENTICATED INVALID_CREDENTIALS (its contract tells no proof's
/// failure from another's).
#[track_caller]
pub fn assert_second_factor_refused(result: Result<impl std::fmt::Debug, Status>) -> Status {
    assert_error(result, Code::Unauthenticated, "INVALID_CREDENTIALS")
}

/// A refused registration: INVALID_ARGUMENT PASSKEY_INVALID.
#[track_caller]
pub fn assert_registration_refused(result: Result<impl std::fmt::Debug, Status>) -> Status {
    assert_error(result, Code::InvalidArgument, "PASSKEY_INVALID")
}

#[track_caller]
pub fn assert_ceremony_expired(result: Result<impl std::fmt::Debug, Status>) -> Status {
    assert_error(result, Code::NotFound, "CEREMONY_EXPIRED")
}

/// Nothing was written since `before`.
pub async fn assert_nothing_written(app: &TestApp, before: &Written) {
    assert_eq!(&written(app).await, before, "a refusal wrote something");
}
