//! Proving who you are again, and what a proof attempt costs.
//!
//! A sensitive change (ChangeEmail, ChangePassword, DeleteMe, the factor
//! changes) asks for a recent second factor where the account has one, and
//! the password ones for the current password. Password RPCs charge the
//! account's throttle before hashing (so concurrent guesses cannot outrun
//! the count) and forgive it on success; a call that never reached the
//! check (refused as overloaded, past its deadline, cancelled by its
//! caller) must not count as a wrong password, or an overload would lock
//! out the very users it kept waiting.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Core;
use crate::crypto::jwt::VerifiedAccess;
use crate::crypto::password::Verified;
use crate::db::{self, throttle::Backoff};
use crate::domain::{Password, ThrottleKey};
use crate::error::AppError;
use crate::metrics::ThrottleKind;

/// One charged attempt; refunded when dropped before [`Charged::checked`].
pub(super) struct Charged {
    db: PgPool,
    key: String,
    backoff: Backoff,
    checked: bool,
}

impl Charged {
    /// The password was checked: the charge stands (a success forgives it
    /// through its own statement).
    pub(super) fn checked(mut self) {
        self.checked = true;
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        if self.checked {
            return;
        }
        // Drop runs where the call was abandoned, possibly mid-poll: the
        // refund is its own small task.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (db, key, backoff) = (self.db.clone(), std::mem::take(&mut self.key), self.backoff);
        runtime.spawn(async move {
            if let Err(e) = db::throttle::refund(&db, &key, &backoff).await {
                tracing::warn!(error = %e, "could not refund an attempt that never checked a password");
            }
        });
    }
}

impl Core {
    /// Refuses at once when the password workers could not check a
    /// password before the call's deadline (nothing charged), else charges
    /// one attempt of `key`.
    pub(super) async fn charge_attempt(
        &self,
        key: &str,
        backoff: &Backoff,
        now: DateTime<Utc>,
    ) -> Result<Charged, AppError> {
        self.hasher.admit()?;
        self.charge_check(key, backoff, now).await
    }

    /// Charges one attempt of `key` for a check that hashes no password (a
    /// second-factor code): the password workers' load does not concern it.
    pub(super) async fn charge_check(
        &self,
        key: &str,
        backoff: &Backoff,
        now: DateTime<Utc>,
    ) -> Result<Charged, AppError> {
        if let Some(wait) = db::throttle::charge(&self.db, key, backoff, now).await? {
            return Err(AppError::Throttled(wait));
        }
        Ok(Charged {
            db: self.db.clone(),
            key: key.to_owned(),
            backoff: *backoff,
            checked: false,
        })
    }

    /// Refuses a sensitive change on an account with a factor unless the
    /// bearer proved a second factor within `AUTHD_REAUTH_MAX_AGE`.
    pub(super) async fn require_fresh(
        &self,
        bearer: &VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let max_age = self.factors.reauth_max_age;
        if bearer.assurance.second_factor_since(now, max_age) {
            return Ok(());
        }
        if db::factors::has_live_factor(&self.db, bearer.user_id).await? {
            return Err(AppError::ReauthenticationRequired { max_age });
        }
        Ok(())
    }

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
