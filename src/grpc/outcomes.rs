//! How a call's result counts on the metrics page: the transport sees the
//! domain error, metrics only the plain outcome.

use crate::error::AppError;
use crate::metrics::{LoginOutcome, Metrics, ThrottleKind};

fn login_outcome<T>(result: &Result<T, AppError>) -> LoginOutcome {
    match result {
        Ok(_) => LoginOutcome::Success,
        // A passkey ceremony that expired or was used is a proof that did
        // not hold, not a failure of authd's.
        Err(AppError::InvalidCredentials | AppError::PasskeyInvalid | AppError::CeremonyExpired) => {
            LoginOutcome::BadCredentials
        }
        Err(AppError::Throttled(_)) => LoginOutcome::Throttled,
        Err(AppError::Validation(_)) => LoginOutcome::InvalidArgument,
        Err(AppError::Unavailable(_)) => LoginOutcome::Unavailable,
        Err(AppError::AccountDisabled) => LoginOutcome::AccountDisabled,
        Err(AppError::EmailNotVerified) => LoginOutcome::EmailNotVerified,
        Err(_) => LoginOutcome::Error,
    }
}

pub(super) trait CountResults {
    /// Counts a Login by its result, and its throttling if any.
    fn count_login<T>(&self, result: &Result<T, AppError>);
    /// Counts a Refresh that rotated its token or detected a replay.
    fn count_refresh<T>(&self, result: &Result<T, AppError>);
    /// Counts `result` as refused by `kind` if it was throttled.
    fn count_throttle<T>(&self, kind: ThrottleKind, result: &Result<T, AppError>);
}

impl CountResults for Metrics {
    fn count_login<T>(&self, result: &Result<T, AppError>) {
        self.login(login_outcome(result));
    }

    fn count_refresh<T>(&self, result: &Result<T, AppError>) {
        match result {
            Ok(_) => self.refresh_rotated(),
            Err(AppError::RefreshTokenReused) => self.refresh_reuse_detected(),
            Err(_) => {}
        }
    }

    fn count_throttle<T>(&self, kind: ThrottleKind, result: &Result<T, AppError>) {
        if matches!(result, Err(AppError::Throttled(_))) {
            self.throttled(kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn results_count_as_their_outcome() {
        assert_eq!(login_outcome(&Ok::<(), AppError>(())), LoginOutcome::Success);
        assert_eq!(
            login_outcome(&Err::<(), _>(AppError::InvalidCredentials)),
            LoginOutcome::BadCredentials
        );
        assert_eq!(
            login_outcome(&Err::<(), _>(AppError::Throttled(Duration::from_secs(1)))),
            LoginOutcome::Throttled
        );
        assert_eq!(
            login_outcome(&Err::<(), _>(AppError::Unavailable(anyhow::anyhow!("down")))),
            LoginOutcome::Unavailable
        );
        assert_eq!(
            login_outcome(&Err::<(), _>(AppError::AccountDisabled)),
            LoginOutcome::AccountDisabled
        );
        assert_eq!(
            login_outcome(&Err::<(), _>(AppError::EmailNotVerified)),
            LoginOutcome::EmailNotVerified
        );
        assert_eq!(
            login_outcome(&Err::<(), _>(AppError::Conflict)),
            LoginOutcome::Error
        );
    }
}
