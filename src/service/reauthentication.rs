//! The bearer typing their password again before a change that a stolen
//! access token alone must not be able to make (ChangeEmail, DeleteMe).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Core;
use super::attempts::Charged;
use crate::crypto::password::Verified;
use crate::db;
use crate::db::throttle::Backoff;
use crate::domain::{Password, ThrottleKey};
use crate::error::AppError;
use crate::metrics::ThrottleKind;

impl Core {
    /// Checks `current` against the account's password, counted like a
    /// Login of the account (the same back-off, so a stolen access token
    /// cannot be used to guess the password any faster). A wrong password
    /// is `WrongCurrentPassword`: the bearer is fine. Returns the throttle
    /// key, for the caller to forgive in the transaction of its change, and
    /// the attempt's charge, which the caller marks checked once that
    /// change committed: a right password is never a failed attempt, so a
    /// change that does not happen (its deadline, a conflict) gives it back.
    pub(super) async fn confirm_current_password(
        &self,
        user_id: Uuid,
        current: &Password,
        now: DateTime<Utc>,
    ) -> Result<(ThrottleKey, Charged), AppError> {
        let throttle_key = ThrottleKey::account(user_id);
        let charge = match self.charge_attempt(&throttle_key, &Backoff::LOGIN, now).await {
            Err(e @ AppError::Throttled(_)) => {
                self.metrics.throttled(ThrottleKind::LoginBackoff);
                return Err(e);
            }
            other => other?,
        };
        let stored = db::users::password_hash(&self.db, user_id).await?;
        let verified = self.hasher.verify(current, stored.as_deref()).await?;
        if verified == Verified::No {
            charge.checked();
            return Err(AppError::WrongCurrentPassword);
        }
        Ok((throttle_key, charge))
    }
}
