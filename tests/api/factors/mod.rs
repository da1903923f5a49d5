//! Second factors from the outside: TOTP enrolment, Login with a second
//! step, recovery codes, step-up and freshness, factor management, and the
//! assurance (`amr`, `acr`, `auth_time`) every token carries. Codes come
//! from the tests' own RFC 6238 implementation (`crate::totp`).

mod assurance;
mod at_rest;
mod enforcement;
mod enrollment;
mod login;
mod management;
mod recovery_codes;
mod step_up;

use std::time::Duration;

use authd::pb::auth::v1::{self as pb, complete_login_request, step_up_request};
use tonic::{Code, Status};

use crate::helpers::*;
use crate::totp::Authenticator;

pub use crate::lifecycle::{change_email, list_sessions};

pub const FACTOR_ADDED: &str = "Two-step verification: an authenticator app was added";
pub const FACTOR_REMOVED: &str = "Two-step verification: a factor was removed";
pub const RECOVERY_CODE_USED: &str = "A recovery code was used to sign in";
pub const CODES_REGENERATED: &str = "New recovery codes were created";
pub const FACTORS_RESET: &str = "Your two-step verification was reset";

/// An account with one live authenticator app.
pub struct MfaUser {
    pub user: pb::User,
    pub email: String,
    pub app: Authenticator,
    pub factor_id: String,
    pub recovery_codes: Vec<String>,
    /// The session that enrolled, refreshed after ConfirmTotp: aal2, fresh.
    pub tokens: pb::TokenPair,
}

pub async fn enroll(app: &TestApp, access: &str, name: &str) -> Result<pb::EnrollTotpResponse, Status> {
    app.client
        .clone()
        .enroll_totp(with_bearer(pb::EnrollTotpRequest { name: name.into() }, access))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn confirm(
    app: &TestApp,
    access: &str,
    enrollment_id: &str,
    code: &str,
) -> Result<pb::ConfirmTotpResponse, Status> {
    app.client
        .clone()
        .confirm_totp(with_bearer(
            pb::ConfirmTotpRequest {
                enrollment_id: enrollment_id.into(),
                code: code.into(),
            },
            access,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Enrols and confirms an authenticator app on the session of `access`.
pub async fn add_totp(app: &TestApp, access: &str) -> (Authenticator, pb::ConfirmTotpResponse) {
    let enrollment = enroll(app, access, "").await.expect("EnrollTotp");
    let authenticator = Authenticator::new(&enrollment.secret);
    let code = authenticator.code().await;
    let confirmed = confirm(app, access, &enrollment.enrollment_id, &code)
        .await
        .expect("ConfirmTotp");
    (authenticator, confirmed)
}

/// Registers an account, logs it in, enrols and confirms an authenticator
/// app, and refreshes that session into an aal2 one.
pub async fn mfa_user(app: &TestApp) -> MfaUser {
    let (user, tokens) = app.signed_in_user().await;
    let (authenticator, confirmed) = add_totp(app, &tokens.access_token).await;
    let tokens = app.refresh(&tokens.refresh_token).await.expect("Refresh");
    MfaUser {
        email: user.email.clone(),
        user,
        app: authenticator,
        factor_id: confirmed.factor.expect("factor").id,
        recovery_codes: confirmed.recovery_codes,
        tokens,
    }
}

/// A password Login of an account with a factor: the challenge it answers.
pub async fn challenge(app: &TestApp, login: &str) -> pb::MfaChallenge {
    let response = app.login(login, PASSWORD).await.expect("Login");
    assert!(
        response.tokens.is_none(),
        "tokens before the second factor: {response:?}"
    );
    response.mfa_required.expect("mfa_required")
}

pub async fn complete(
    app: &TestApp,
    mfa_token: &str,
    proof: complete_login_request::Proof,
) -> Result<pb::CompleteLoginResponse, Status> {
    app.client
        .clone()
        .complete_login(pb::CompleteLoginRequest {
            mfa_token: mfa_token.into(),
            proof: Some(proof),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn complete_totp(
    app: &TestApp,
    mfa_token: &str,
    code: &str,
) -> Result<pb::CompleteLoginResponse, Status> {
    complete(
        app,
        mfa_token,
        complete_login_request::Proof::TotpCode(code.into()),
    )
    .await
}

pub async fn complete_recovery(
    app: &TestApp,
    mfa_token: &str,
    code: &str,
) -> Result<pb::CompleteLoginResponse, Status> {
    complete(
        app,
        mfa_token,
        complete_login_request::Proof::RecoveryCode(code.into()),
    )
    .await
}

/// CompleteLogin, waiting out the Login throttle's delays (the password
/// step and wrong codes count on it) so the answer is about the proof.
pub async fn complete_unthrottled(
    app: &TestApp,
    mfa_token: &str,
    proof: complete_login_request::Proof,
) -> Result<pb::CompleteLoginResponse, Status> {
    for _ in 0..6 {
        match complete(app, mfa_token, proof.clone()).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(retry_delay(&s) + Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
    panic!("still throttled after six waits");
}

/// Login plus CompleteLogin with the next code of the user's app.
pub async fn mfa_login(app: &TestApp, user: &MfaUser) -> pb::TokenPair {
    let challenge = challenge(app, &user.email).await;
    let code = user.app.code().await;
    complete_totp(app, &challenge.mfa_token, &code)
        .await
        .expect("CompleteLogin")
        .tokens
        .expect("tokens")
}

pub async fn step_up(
    app: &TestApp,
    access: &str,
    proof: step_up_request::Proof,
) -> Result<pb::StepUpResponse, Status> {
    app.client
        .clone()
        .step_up(with_bearer(pb::StepUpRequest { proof: Some(proof) }, access))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn step_up_totp(app: &TestApp, access: &str, code: &str) -> Result<pb::StepUpResponse, Status> {
    step_up(app, access, step_up_request::Proof::TotpCode(code.into())).await
}

pub async fn list_factors(app: &TestApp, access: &str) -> pb::ListFactorsResponse {
    app.client
        .clone()
        .list_factors(with_bearer(pb::ListFactorsRequest {}, access))
        .await
        .expect("ListFactors")
        .into_inner()
}

pub async fn remove_factor(
    app: &TestApp,
    access: &str,
    factor_id: &str,
) -> Result<pb::RemoveFactorResponse, Status> {
    app.client
        .clone()
        .remove_factor(with_bearer(
            pb::RemoveFactorRequest {
                factor_id: factor_id.into(),
            },
            access,
        ))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn regenerate_codes(app: &TestApp, access: &str) -> Result<Vec<String>, Status> {
    app.client
        .clone()
        .regenerate_recovery_codes(with_bearer(pb::RegenerateRecoveryCodesRequest {}, access))
        .await
        .map(|r| r.into_inner().recovery_codes)
}

pub async fn me(app: &TestApp, access: &str) -> Result<pb::GetMeResponse, Status> {
    app.client
        .clone()
        .get_me(with_bearer(pb::GetMeRequest {}, access))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn reset_user_factors(app: &TestApp, key: &str, user_id: &str) -> Result<pb::User, Status> {
    app.admin()
        .reset_user_factors(with_bearer(
            pb::ResetUserFactorsRequest {
                user_id: user_id.into(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().user.expect("user"))
}

/// The `amr` claim of an access token, as strings.
pub fn amr(access_token: &str) -> Vec<String> {
    jwt_claims(access_token)["amr"]
        .as_array()
        .unwrap_or_else(|| panic!("no amr array in {}", jwt_claims(access_token)))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

pub fn acr(access_token: &str) -> String {
    jwt_claims(access_token)["acr"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn auth_time(access_token: &str) -> i64 {
    jwt_claims(access_token)["auth_time"]
        .as_i64()
        .unwrap_or_else(|| panic!("no numeric auth_time in {}", jwt_claims(access_token)))
}

pub fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// `amr` as the two-factor sessions carry it (order not part of the
/// contract).
pub fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

pub fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Asserts `seconds` is within `slack` of `expected`.
#[track_caller]
pub fn assert_near(seconds: i64, expected: i64, slack: i64) {
    assert!(
        (seconds - expected).abs() <= slack,
        "{seconds} is not within {slack} s of {expected}"
    );
}

/// A recovery code looks like `xxxx-xxxx-xxxx-xxxx` in lowercase base32.
#[track_caller]
pub fn assert_recovery_code_format(code: &str) {
    let groups: Vec<&str> = code.split('-').collect();
    assert_eq!(groups.len(), 4, "{code:?}");
    for group in groups {
        assert_eq!(group.len(), 4, "{code:?}");
        assert!(
            group
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
            "{code:?}"
        );
    }
}

/// ErrorInfo metadata value `key` of an error.
pub fn metadata(status: &Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}

/// The refusal sensitive calls give a bearer without a fresh second factor.
#[track_caller]
pub fn assert_reauthentication_required(result: Result<impl std::fmt::Debug, Status>) {
    let status = assert_error(result, Code::FailedPrecondition, "REAUTHENTICATION_REQUIRED");
    assert_eq!(metadata(&status, "max_age").as_deref(), Some("600"), "{status:?}");
}
