//! The one mapping from the domain error to `tonic::Status`, with
//! `google.rpc` details: nothing else in the crate builds a `Status` by
//! hand, so codes, reasons and details stay consistent and nothing internal
//! reaches a caller.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::FieldReason;
use crate::error::{AppError, TokenProblem};
use crate::pb::auth::v1::{ErrorReason, FieldViolationReason};

/// `ErrorInfo.domain` of every error authd returns.
pub const ERROR_DOMAIN: &str = "authd";

fn token_reason(problem: TokenProblem) -> ErrorReason {
    match problem {
        TokenProblem::Missing => ErrorReason::TokenMissing,
        TokenProblem::Invalid => ErrorReason::TokenInvalid,
        TokenProblem::Expired => ErrorReason::TokenExpired,
        TokenProblem::SessionRevoked => ErrorReason::SessionRevoked,
    }
}

fn token_message(problem: TokenProblem) -> &'static str {
    match problem {
        TokenProblem::Missing => "missing bearer token",
        TokenProblem::Invalid => "invalid bearer token",
        TokenProblem::Expired => "bearer token expired",
        TokenProblem::SessionRevoked => "session has ended",
    }
}

/// A status whose only detail is its ErrorInfo.
fn plain(code: Code, message: impl Into<String>, reason: ErrorReason) -> Status {
    Status::with_error_details(code, message, info(reason))
}

/// INVALID_ARGUMENT naming one field, with `reason` rather than the plain
/// INVALID_ARGUMENT: the field is well formed but refused (RFC 6749/8693
/// errors of a token request).
fn field_error(field: &str, description: &str, reason: ErrorReason) -> Status {
    let mut details = ErrorDetails::with_bad_request(vec![FieldViolation {
        field: field.to_owned(),
        description: description.to_owned(),
        reason: FieldViolationReason::InvalidFormat.as_str_name().to_owned(),
        localized_message: None,
    }]);
    details.set_error_info(reason.as_str_name(), ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::InvalidArgument, format!("{field} {description}"), details)
}

fn info(reason: ErrorReason) -> ErrorDetails {
    ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, HashMap::new())
}

/// The proto's name for a field reason, so every reason sent is one the
/// contract lists.
fn field_reason(reason: FieldReason) -> FieldViolationReason {
    match reason {
        FieldReason::Required => FieldViolationReason::Required,
        FieldReason::TooShort => FieldViolationReason::TooShort,
        FieldReason::TooLong => FieldViolationReason::TooLong,
        FieldReason::InvalidFormat => FieldViolationReason::InvalidFormat,
        FieldReason::InvalidCharacters => FieldViolationReason::InvalidCharacters,
        FieldReason::TooCommon => FieldViolationReason::TooCommon,
        FieldReason::ContainsIdentifier => FieldViolationReason::ContainsIdentifier,
        FieldReason::UnknownField => FieldViolationReason::UnknownField,
    }
}

/// The reason of a status that authd's own mapping did not build (tonic
/// refused the message, no such method, a deadline...), so that every error
/// carries an ErrorInfo.
pub fn reason_for_code(code: Code) -> ErrorReason {
    match code {
        Code::InvalidArgument => ErrorReason::InvalidArgument,
        Code::OutOfRange => ErrorReason::MessageTooLarge,
        Code::Unimplemented => ErrorReason::UnknownMethod,
        Code::DeadlineExceeded | Code::Cancelled => ErrorReason::DeadlineExceeded,
        Code::ResourceExhausted => ErrorReason::Throttled,
        Code::Unauthenticated => ErrorReason::TokenInvalid,
        Code::PermissionDenied => ErrorReason::MissingScope,
        Code::NotFound => ErrorReason::UserNotFound,
        Code::Aborted => ErrorReason::ConcurrentUpdate,
        Code::Unavailable => ErrorReason::Unavailable,
        _ => ErrorReason::Internal,
    }
}

/// Adds an ErrorInfo to a status that has no details; returns it unchanged
/// otherwise.
pub fn with_error_info(status: Status) -> Status {
    if !status.details().is_empty() {
        return status;
    }
    let reason = reason_for_code(status.code());
    plain(status.code(), status.message(), reason)
}

impl From<AppError> for Status {
    fn from(err: AppError) -> Self {
        match err {
            AppError::Validation(violations) => {
                let fields: Vec<FieldViolation> = violations
                    .into_iter()
                    .map(|v| FieldViolation {
                        field: v.field.to_owned(),
                        description: v.problem.description,
                        reason: field_reason(v.problem.reason).as_str_name().to_owned(),
                        localized_message: None,
                    })
                    .collect();
                let message = format!(
                    "invalid request: {}",
                    fields
                        .iter()
                        .map(|f| format!("{}: {}", f.field, f.description))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                let mut details = ErrorDetails::with_bad_request(fields);
                details.set_error_info(
                    ErrorReason::InvalidArgument.as_str_name(),
                    ERROR_DOMAIN,
                    HashMap::new(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            AppError::EmailTaken => plain(
                Code::AlreadyExists,
                "an account with this email already exists",
                ErrorReason::EmailTaken,
            ),
            AppError::UsernameTaken => plain(
                Code::AlreadyExists,
                "this username is taken",
                ErrorReason::UsernameTaken,
            ),
            AppError::InvalidCredentials => plain(
                Code::Unauthenticated,
                "invalid login or password",
                ErrorReason::InvalidCredentials,
            ),
            AppError::WrongCurrentPassword => plain(
                Code::InvalidArgument,
                "current_password is wrong",
                ErrorReason::InvalidCredentials,
            ),
            AppError::Conflict => plain(
                Code::Aborted,
                "a concurrent change won; read again and retry",
                ErrorReason::ConcurrentUpdate,
            ),
            AppError::MissingScope(scope) => {
                let metadata = HashMap::from([("scope".to_owned(), scope.as_str().to_owned())]);
                Status::with_error_details(
                    Code::PermissionDenied,
                    format!("this method needs a service key with scope {scope}"),
                    ErrorDetails::with_error_info(
                        ErrorReason::MissingScope.as_str_name(),
                        ERROR_DOMAIN,
                        metadata,
                    ),
                )
            }
            AppError::UserNotFound => plain(Code::NotFound, "no such user", ErrorReason::UserNotFound),
            AppError::AccountDisabled => plain(
                Code::PermissionDenied,
                "this account is disabled",
                ErrorReason::AccountDisabled,
            ),
            AppError::Token(problem) => plain(
                Code::Unauthenticated,
                token_message(problem),
                token_reason(problem),
            ),
            AppError::InvalidRefreshToken => plain(
                Code::Unauthenticated,
                "invalid refresh token",
                ErrorReason::RefreshTokenInvalid,
            ),
            AppError::RefreshTokenReused => plain(
                Code::Unauthenticated,
                "refresh token was already used; the session has been ended",
                ErrorReason::RefreshTokenReused,
            ),
            AppError::InvalidResetToken => plain(
                Code::Unauthenticated,
                "invalid or expired reset token",
                ErrorReason::ResetTokenInvalid,
            ),
            AppError::InvalidVerifyToken => plain(
                Code::Unauthenticated,
                "invalid or expired verification link",
                ErrorReason::VerifyTokenInvalid,
            ),
            AppError::EmailNotVerified => plain(
                Code::FailedPrecondition,
                "this account's email address is not verified yet; use the link mailed to it",
                ErrorReason::EmailNotVerified,
            ),
            AppError::SessionNotFound => {
                plain(Code::NotFound, "no such session", ErrorReason::SessionNotFound)
            }
            AppError::Throttled(delay) => {
                let mut details = ErrorDetails::with_retry_info(Some(delay));
                details.set_error_info(ErrorReason::Throttled.as_str_name(), ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!("too many attempts; retry in {} s", delay.as_secs().max(1)),
                    details,
                )
            }
            AppError::Overloaded(wait) => {
                let mut details = ErrorDetails::with_retry_info(Some(wait));
                details.set_error_info(
                    ErrorReason::Overloaded.as_str_name(),
                    ERROR_DOMAIN,
                    HashMap::new(),
                );
                Status::with_error_details(
                    Code::ResourceExhausted,
                    "authd is at capacity and could not answer before your deadline; retry after the delay, elsewhere if you can",
                    details,
                )
            }
            AppError::CursorExpired => plain(
                Code::FailedPrecondition,
                "this cursor is older than the retained revocations or was not issued here; \
                 start again from a recent `since` or from 0",
                ErrorReason::CursorExpired,
            ),
            AppError::SubscriberTooSlow { after_event_id } => {
                let metadata = HashMap::from([("after_event_id".to_owned(), after_event_id.to_string())]);
                // Like every RESOURCE_EXHAUSTED, with a RetryInfo: reconnect
                // at once, the log kept what this stream did not send.
                let mut details = ErrorDetails::with_retry_info(Some(std::time::Duration::ZERO));
                details.set_error_info(
                    ErrorReason::SubscriberTooSlow.as_str_name(),
                    ERROR_DOMAIN,
                    metadata,
                );
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "this stream took no message for too long and was cut off after event {after_event_id}; \
                         reconnect with after_event_id {after_event_id}"
                    ),
                    details,
                )
            }
            AppError::ReauthenticationRequired { max_age } => {
                let metadata = HashMap::from([("max_age".to_owned(), max_age.as_secs().to_string())]);
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!(
                        "this call needs a second factor proven within the last {} s; call StepUp and retry with its token",
                        max_age.as_secs()
                    ),
                    ErrorDetails::with_error_info(
                        ErrorReason::ReauthenticationRequired.as_str_name(),
                        ERROR_DOMAIN,
                        metadata,
                    ),
                )
            }
            AppError::MfaEnrollmentRequired => plain(
                Code::FailedPrecondition,
                "this account must enrol a second factor first (EnrollTotp and ConfirmTotp, or a passkey)",
                ErrorReason::MfaEnrollmentRequired,
            ),
            AppError::MfaTokenInvalid => plain(
                Code::Unauthenticated,
                "invalid or expired mfa_token; log in again",
                ErrorReason::MfaTokenInvalid,
            ),
            AppError::InvalidCode => plain(
                Code::InvalidArgument,
                "the code does not match",
                ErrorReason::InvalidCode,
            ),
            AppError::FactorNotFound => plain(Code::NotFound, "no such factor", ErrorReason::FactorNotFound),
            AppError::NoFactor => plain(
                Code::FailedPrecondition,
                "this account has no second factor",
                ErrorReason::FactorNotFound,
            ),
            AppError::EnrollmentExpired => plain(
                Code::NotFound,
                "no such enrollment, or it expired; call EnrollTotp again",
                ErrorReason::EnrollmentExpired,
            ),
            AppError::FactorLimitReached => plain(
                Code::FailedPrecondition,
                "this account has as many authenticator apps or passkeys as it may; remove one first",
                ErrorReason::FactorLimitReached,
            ),
            AppError::PasskeyInvalid => plain(
                Code::Unauthenticated,
                "the passkey's answer does not prove this login",
                ErrorReason::PasskeyInvalid,
            ),
            AppError::PasskeyProofInvalid => plain(
                Code::InvalidArgument,
                "the passkey's answer does not prove a factor of this account",
                ErrorReason::PasskeyInvalid,
            ),
            AppError::PasskeyRefused => plain(
                Code::InvalidArgument,
                "this credential cannot be registered (it does not answer the ceremony, or it is registered already)",
                ErrorReason::PasskeyInvalid,
            ),
            AppError::CeremonyExpired => plain(
                Code::NotFound,
                "no such passkey ceremony, or it was used or expired; start again",
                ErrorReason::CeremonyExpired,
            ),
            // The HTTP face's Shared Signals endpoints answer these; no
            // RPC does.
            AppError::StreamNotFound => plain(Code::NotFound, "no such stream", ErrorReason::Unspecified),
            AppError::StreamNotPolled => plain(
                Code::FailedPrecondition,
                "this stream is delivered by push",
                ErrorReason::Unspecified,
            ),
            AppError::UnsupportedGrantType => Status::from(AppError::invalid(
                "grant_type",
                crate::domain::Invalid::format(format!(
                    "must be {} or {}",
                    crate::domain::token_request::GRANT_CLIENT_CREDENTIALS,
                    crate::domain::token_request::GRANT_TOKEN_EXCHANGE
                )),
            )),
            AppError::GrantInvalid { field } => field_error(
                field,
                "is not valid: invalid, expired, ended, or no enabled account",
                ErrorReason::GrantInvalid,
            ),
            AppError::TargetInvalid => field_error(
                "audience",
                "is not one of the registered audiences",
                ErrorReason::TargetInvalid,
            ),
            AppError::ScopeInvalid => field_error(
                "scope",
                "asks for more than the caller or the subject has",
                ErrorReason::ScopeInvalid,
            ),
            AppError::ShuttingDown => plain(
                Code::Unavailable,
                "this authd replica is shutting down; reconnect",
                ErrorReason::Unavailable,
            ),
            AppError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "database unavailable");
                plain(
                    Code::Unavailable,
                    "service temporarily unavailable",
                    ErrorReason::Unavailable,
                )
            }
            AppError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                plain(Code::Internal, "internal error", ErrorReason::Internal)
            }
        }
    }
}
