//! The one domain error of authd and its single mapping to `tonic::Status`.
//!
//! Handlers return `Result<_, AppError>`; nothing else in the crate builds a
//! `Status` by hand, so codes, reasons and details stay consistent and nothing
//! internal reaches a caller.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// `ErrorInfo.domain` of every error authd returns.
pub const ERROR_DOMAIN: &str = "authd";

/// One invalid field of a request, with a description a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: &'static str,
    pub description: String,
}

impl Violation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
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
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "TOKEN_MISSING",
            Self::Invalid => "TOKEN_INVALID",
            Self::Expired => "TOKEN_EXPIRED",
            Self::SessionRevoked => "SESSION_REVOKED",
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
    #[error("bearer token refused: {0:?}")]
    Token(TokenProblem),
    #[error("refresh token invalid")]
    InvalidRefreshToken,
    #[error("refresh token reused; session ended")]
    RefreshTokenReused,
    #[error("reset token invalid")]
    InvalidResetToken,
    #[error("throttled for {0:?}")]
    Throttled(Duration),
    #[error("database unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::Validation(vec![Violation::new(field, description)])
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        if is_connectivity_error(&err) {
            Self::Unavailable(err.into())
        } else {
            Self::Internal(err.into())
        }
    }
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

fn info(reason: &str) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new())
}

impl From<AppError> for Status {
    fn from(err: AppError) -> Self {
        match err {
            AppError::Validation(violations) => {
                let fields: Vec<FieldViolation> = violations
                    .into_iter()
                    .map(|v| FieldViolation::new(v.field, v.description))
                    .collect();
                let message = format!(
                    "invalid request: {}",
                    fields
                        .iter()
                        .map(|f| format!("{}: {}", f.field, f.description))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(fields),
                )
            }
            AppError::EmailTaken => Status::with_error_details(
                Code::AlreadyExists,
                "an account with this email already exists",
                info("EMAIL_TAKEN"),
            ),
            AppError::UsernameTaken => Status::with_error_details(
                Code::AlreadyExists,
                "this username is taken",
                info("USERNAME_TAKEN"),
            ),
            AppError::InvalidCredentials => Status::with_error_details(
                Code::Unauthenticated,
                "invalid login or password",
                info("INVALID_CREDENTIALS"),
            ),
            AppError::Token(problem) => {
                Status::with_error_details(Code::Unauthenticated, problem.message(), info(problem.reason()))
            }
            AppError::InvalidRefreshToken => Status::with_error_details(
                Code::Unauthenticated,
                "invalid refresh token",
                info("REFRESH_TOKEN_INVALID"),
            ),
            AppError::RefreshTokenReused => Status::with_error_details(
                Code::Unauthenticated,
                "refresh token was already used; the session has been ended",
                info("REFRESH_TOKEN_REUSED"),
            ),
            AppError::InvalidResetToken => Status::with_error_details(
                Code::Unauthenticated,
                "invalid or expired reset token",
                info("RESET_TOKEN_INVALID"),
            ),
            AppError::Throttled(delay) => {
                let mut details = ErrorDetails::with_retry_info(Some(delay));
                details.set_error_info("THROTTLED", ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!("too many attempts; retry in {} s", delay.as_secs().max(1)),
                    details,
                )
            }
            AppError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "database unavailable");
                Status::with_error_details(
                    Code::Unavailable,
                    "service temporarily unavailable",
                    info("UNAVAILABLE"),
                )
            }
            AppError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::with_error_details(Code::Internal, "internal error", info("INTERNAL"))
            }
        }
    }
}
