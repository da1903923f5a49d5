//! A failed-password charge that is given back unless the password was
//! actually checked. Password RPCs charge the account's throttle before
//! hashing (so concurrent guesses cannot outrun the count) and forgive it
//! on success; a call that never reached the check (refused as overloaded,
//! past its deadline, cancelled by its caller) must not count as a wrong
//! password, or an overload would lock out the very users it kept waiting.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Core;
use crate::db::{self, throttle::Backoff};
use crate::error::AppError;

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
}
