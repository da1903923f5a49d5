//! Why a token was refused, and how that reaches a gRPC client: the same
//! codes and `ErrorInfo` reasons authd itself answers with, so a client
//! handles a refusal by the service exactly like one by authd.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of the refusals: the reasons are authd's
/// (`auth.v1.ErrorReason`), so they keep authd's domain.
pub const ERROR_DOMAIN: &str = "authd";

/// Why [`Verifier::verify`](crate::Verifier::verify) refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `authorization: Bearer` header (UNAUTHENTICATED `TOKEN_MISSING`).
    #[error("missing bearer token")]
    Missing,
    /// Not an access token of this issuer for this route: malformed, bad
    /// signature, unknown key, wrong `typ` or `iss`, an `aud` other than
    /// the route's, not yet valid, a lifetime longer than configured, or a
    /// kind of token the route does not admit (a service's own token where
    /// a user's is required, or the other way round) (UNAUTHENTICATED
    /// `TOKEN_INVALID`).
    #[error("invalid bearer token")]
    Invalid,
    /// Past its `exp` (UNAUTHENTICATED `TOKEN_EXPIRED`).
    #[error("bearer token expired")]
    Expired,
    /// Its session ended, or its account was disabled or deleted
    /// (UNAUTHENTICATED `SESSION_REVOKED`).
    #[error("session has ended ({0})")]
    Revoked(Revocation),
    /// The verifier cannot vouch for the token's revocation state right now
    /// and is configured to fail closed, or the introspection fallback could
    /// not reach authd (UNAVAILABLE `UNAVAILABLE`): retry later.
    #[error("token verification is unavailable")]
    Unavailable,
    /// Valid, but the route's [`Policy`](crate::Policy) wants a stronger or
    /// more recent proof than the token's (`acr`, `amr`, `auth_time`), or
    /// the account's factors changed since (FAILED_PRECONDITION
    /// `REAUTHENTICATION_REQUIRED`, `ErrorInfo` metadata `max_age` in
    /// seconds when the policy has one): step up at authd and retry.
    #[error("a stronger or more recent proof of identity is required")]
    ReauthenticationRequired {
        /// The policy's largest accepted age of the proof, if it has one.
        max_age: Option<std::time::Duration>,
    },
    /// Valid, but the account must enrol a second factor before anything
    /// else (FAILED_PRECONDITION `MFA_ENROLLMENT_REQUIRED`).
    #[error("a second factor must be enrolled first")]
    MfaEnrollmentRequired,
    /// A valid service token without a scope the route's
    /// [`Policy`](crate::Policy) requires (PERMISSION_DENIED
    /// `MISSING_SCOPE`).
    #[error("the service token lacks a required scope")]
    MissingScope,
}

/// What ended a token's validity before its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Its session ended (Logout, refresh-token reuse, a password change…).
    SessionEnded,
    /// Its account was disabled after the token was issued.
    UserDisabled,
    /// Its account was deleted.
    UserDeleted,
    /// IntrospectToken said the token is no longer active.
    Inactive,
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Revocation::SessionEnded => "session ended",
            Revocation::UserDisabled => "account disabled",
            Revocation::UserDeleted => "account deleted",
            Revocation::Inactive => "inactive at authd",
        })
    }
}

impl VerifyError {
    /// The gRPC code a client receives.
    pub fn code(&self) -> Code {
        match self {
            VerifyError::Unavailable => Code::Unavailable,
            VerifyError::MissingScope => Code::PermissionDenied,
            VerifyError::ReauthenticationRequired { .. } | VerifyError::MfaEnrollmentRequired => {
                Code::FailedPrecondition
            }
            _ => Code::Unauthenticated,
        }
    }

    /// The `ErrorInfo.reason` a client receives (authd's names).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Missing => "TOKEN_MISSING",
            VerifyError::Invalid => "TOKEN_INVALID",
            VerifyError::Expired => "TOKEN_EXPIRED",
            VerifyError::Revoked(_) => "SESSION_REVOKED",
            VerifyError::Unavailable => "UNAVAILABLE",
            VerifyError::ReauthenticationRequired { .. } => "REAUTHENTICATION_REQUIRED",
            VerifyError::MfaEnrollmentRequired => "MFA_ENROLLMENT_REQUIRED",
            VerifyError::MissingScope => "MISSING_SCOPE",
        }
    }

    /// The message a client receives; like authd's, it says what is wrong
    /// with the token, never anything about the token itself.
    fn message(&self) -> &'static str {
        match self {
            VerifyError::Missing => "missing bearer token",
            VerifyError::Invalid => "invalid bearer token",
            VerifyError::Expired => "bearer token expired",
            VerifyError::Revoked(_) => "session has ended",
            VerifyError::Unavailable => "token verification is unavailable, retry later",
            VerifyError::ReauthenticationRequired { .. } => {
                "a more recent or stronger proof of identity is required: step up and retry"
            }
            VerifyError::MfaEnrollmentRequired => "a second factor must be enrolled first",
            VerifyError::MissingScope => "the service token lacks a scope this call requires",
        }
    }

    /// The refusal as a gRPC status with its `ErrorInfo`.
    pub fn to_status(&self) -> Status {
        let mut metadata = HashMap::new();
        if let VerifyError::ReauthenticationRequired {
            max_age: Some(max_age),
        } = self
        {
            metadata.insert("max_age".to_owned(), max_age.as_secs().to_string());
        }
        let info = ErrorDetails::with_error_info(self.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(self.code(), self.message(), info)
    }
}

impl From<VerifyError> for Status {
    fn from(error: VerifyError) -> Self {
        error.to_status()
    }
}

/// Why [`Verifier::start`](crate::Verifier::start) failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is out of range.
    #[error("invalid verifier configuration: {0}")]
    Config(&'static str),
    /// GetJwks failed, so no token could be verified.
    #[error("fetching authd's signing keys failed: {0}")]
    Jwks(#[source] Status),
    /// authd published no key this verifier can use (EdDSA or ES256).
    #[error("authd published no usable signing key")]
    NoUsableKeys,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_authds_codes_and_reasons() {
        let cases = [
            (VerifyError::Missing, Code::Unauthenticated, "TOKEN_MISSING"),
            (VerifyError::Invalid, Code::Unauthenticated, "TOKEN_INVALID"),
            (VerifyError::Expired, Code::Unauthenticated, "TOKEN_EXPIRED"),
            (
                VerifyError::Revoked(Revocation::UserDeleted),
                Code::Unauthenticated,
                "SESSION_REVOKED",
            ),
            (VerifyError::Unavailable, Code::Unavailable, "UNAVAILABLE"),
            (
                VerifyError::ReauthenticationRequired { max_age: None },
                Code::FailedPrecondition,
                "REAUTHENTICATION_REQUIRED",
            ),
            (
                VerifyError::MfaEnrollmentRequired,
                Code::FailedPrecondition,
                "MFA_ENROLLMENT_REQUIRED",
            ),
            (VerifyError::MissingScope, Code::PermissionDenied, "MISSING_SCOPE"),
        ];
        for (error, code, reason) in cases {
            let status = error.to_status();
            assert_eq!(status.code(), code, "{error:?}");
            let info = status.get_details_error_info().expect("an ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert!(info.metadata.is_empty());
        }
        let status = VerifyError::ReauthenticationRequired {
            max_age: Some(std::time::Duration::from_secs(600)),
        }
        .to_status();
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.metadata.get("max_age").map(String::as_str), Some("600"));
    }
}
