//! The one domain error of authd. It knows no transport and no storage:
//! the gRPC transport maps it to its wire form in one place
//! (`grpc::status`), and the storage layer turns its own failures into it
//! (`db::error`).

use std::time::Duration;

use crate::domain::{Invalid, Scope, TokenRequestError};

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

    /// Records the failure of one field's parse, so a request hears of
    /// every bad field at once, not just the first.
    pub fn note<T>(field: &'static str, parsed: &Result<T, Invalid>, violations: &mut Vec<Self>) {
        if let Err(e) = parsed {
            violations.push(Self::new(field, e.clone()));
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
    /// A WatchRevocations subscriber that stopped taking messages, cut off
    /// after the last event it was sent.
    #[error("revocation subscriber too slow")]
    SubscriberTooSlow { after_event_id: i64 },
    /// The call needs a second factor proven within `max_age` (StepUp).
    #[error("reauthentication required")]
    ReauthenticationRequired { max_age: Duration },
    /// The account must enrol a second factor before anything else.
    #[error("second factor enrollment required")]
    MfaEnrollmentRequired,
    #[error("mfa token invalid")]
    MfaTokenInvalid,
    /// A second-factor code that does not match, where the bearer itself is
    /// fine (ConfirmTotp, StepUp).
    #[error("code does not match")]
    InvalidCode,
    /// No such factor of the bearer.
    #[error("factor not found")]
    FactorNotFound,
    /// The account has no second factor where one is needed.
    #[error("no second factor")]
    NoFactor,
    #[error("enrollment expired")]
    EnrollmentExpired,
    #[error("factor limit reached")]
    FactorLimitReached,
    /// A passkey's answer at a login does not hold (unknown or foreign
    /// credential, bad signature, no user verification, a counter that went
    /// backwards); the answer says no more.
    #[error("passkey invalid")]
    PasskeyInvalid,
    /// The same at StepUp, where the bearer is fine and only the proof is
    /// wrong (as a wrong code there).
    #[error("passkey proof invalid")]
    PasskeyProofInvalid,
    /// A new passkey's credential does not answer its ceremony, or is
    /// registered already.
    #[error("passkey refused")]
    PasskeyRefused,
    /// The passkey ceremony is unknown, used, expired or another account's.
    #[error("ceremony expired")]
    CeremonyExpired,
    /// No Shared Signals stream with that id is the caller's.
    #[error("stream not found")]
    StreamNotFound,
    /// A poll of a stream delivered by push.
    #[error("stream not polled")]
    StreamNotPolled,
    /// A grant type authd does not offer.
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    /// The subject of a token request (its `field`) is no valid subject:
    /// an invalid, expired or ended token, or an unknown or disabled
    /// account.
    #[error("invalid grant ({field})")]
    GrantInvalid { field: &'static str },
    /// An audience that is not registered.
    #[error("invalid target")]
    TargetInvalid,
    /// A scope wider than the caller may have.
    #[error("invalid scope")]
    ScopeInvalid,
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

impl From<TokenRequestError> for AppError {
    fn from(e: TokenRequestError) -> Self {
        match e {
            TokenRequestError::UnsupportedGrant => Self::UnsupportedGrantType,
            TokenRequestError::Invalid(problems) => Self::Validation(
                problems
                    .into_iter()
                    .map(|(field, problem)| Violation::new(field, problem))
                    .collect(),
            ),
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
