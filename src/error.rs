//! The one domain error of authd and its single mapping to `tonic::Status`.
//!
//! Handlers return `Result<_, AppError>`; nothing else in the crate builds a
//! `Status` by hand, so codes, reasons and details stay consistent and nothing
//! internal reaches a caller.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::{FieldReason, Invalid, Scope};
use crate::pb::auth::v1::{ErrorReason, FieldViolationReason};

/// `ErrorInfo.domain` of every error authd returns.
pub const ERROR_DOMAIN: &str = "authd";

/// One invalid field of a request: which, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: &'static str,
    pub problem: Invalid,
}

impl Violation {
    pub fn new(field: &'static str, problem: Invalid) -> Self {
        Self { field, problem }
    }
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Missing,
    Invalid,
    Expired,
    SessionRevoked,
}

impl TokenProblem {
    pub fn reason(self) -> ErrorReason {
        match self {
            Self::Missing => ErrorReason::TokenMissing,
            Self::Invalid => ErrorReason::TokenInvalid,
            Self::Expired => ErrorReason::TokenExpired,
            Self::SessionRevoked => ErrorReason::SessionRevoked,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Missing => "missing bearer token",
            Self::Invalid => "invalid bearer token",
            Self::Expired => "bearer token expired",
            Self::SessionRevoked => "session has ended",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid request ({} field(s))", .0.len())]
    Validation(Vec<Violation>),
    #[error("email already registered")]
    EmailTaken,
    #[error("username already taken")]
    UsernameTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The bearer is fine but the password it re-entered is wrong: not
    /// UNAUTHENTICATED, which makes clients log the user out.
    #[error("current password is wrong")]
    WrongCurrentPassword,
    /// A concurrent change won: the caller may read again and retry.
    #[error("lost a race with a concurrent change")]
    Conflict,
    /// The caller's credential lacks the scope the method needs (a user's
    /// access token has none).
    #[error("missing scope {0}")]
    MissingScope(Scope),
    #[error("user not found")]
    UserNotFound,
    /// Only ever answered after the password checked out.
    #[error("account disabled")]
    AccountDisabled,
    #[error("bearer token refused: {0:?}")]
    Token(TokenProblem),
    #[error("refresh token invalid")]
    InvalidRefreshToken,
    #[error("refresh token reused; session ended")]
    RefreshTokenReused,
    #[error("reset token invalid")]
    InvalidResetToken,
    #[error("verification token invalid")]
    InvalidVerifyToken,
    /// Only ever answered after the password checked out.
    #[error("email address not verified")]
    EmailNotVerified,
    /// Not the bearer's session, whether or not it exists.
    #[error("session not found")]
    SessionNotFound,
    #[error("throttled for {0:?}")]
    Throttled(Duration),
    /// The password workers could not finish this call's work before its
    /// deadline: refused at once, with the expected wait.
    #[error("overloaded; expected wait {0:?}")]
    Overloaded(Duration),
    /// A WatchRevocations cursor older than the retention, or never issued.
    #[error("revocation cursor expired")]
    CursorExpired,
    /// The server is draining: long-lived calls end so clients reconnect to
    /// another replica.
    #[error("shutting down")]
    ShuttingDown,
    #[error("database unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn invalid(field: &'static str, problem: Invalid) -> Self {
        Self::Validation(vec![Violation::new(field, problem)])
    }

    /// An unexpected failure, with the spans it happened in (use case,
    /// query, RPC) so the log says which step failed.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(with_spans(err.into()))
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        if is_connectivity_error(&err) {
            Self::Unavailable(err.into())
        } else if is_lost_race(&err) {
            Self::Conflict
        } else {
            Self::internal(err)
        }
    }
}

/// `err` with the active spans as context, when a span layer records them
/// (`telemetry` installs `tracing_error::ErrorLayer`).
fn with_spans(err: anyhow::Error) -> anyhow::Error {
    let spans = tracing_error::SpanTrace::capture();
    if spans.status() == tracing_error::SpanTraceStatus::CAPTURED {
        err.context(format!("in spans:\n{spans}"))
    } else {
        err
    }
}

/// serialization_failure and deadlock_detected: PostgreSQL aborted the
/// transaction because a concurrent one won; retrying is safe.
fn is_lost_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// True for errors that mean "the database cannot be reached right now" as
/// opposed to a bug in a query.
pub fn is_connectivity_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now and friends.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

/// A status whose only detail is its ErrorInfo.
fn plain(code: Code, message: impl Into<String>, reason: ErrorReason) -> Status {
    Status::with_error_details(code, message, info(reason))
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
            AppError::Token(problem) => plain(Code::Unauthenticated, problem.message(), problem.reason()),
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
                 start again from 0",
                ErrorReason::CursorExpired,
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
