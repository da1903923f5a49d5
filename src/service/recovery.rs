//! ForgotPassword and ResetPassword, and what every password change does
//! besides replacing the hash.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Core, chrono_duration};
use crate::crypto::opaque::{self, NewToken, TokenKind};
use crate::db::revocations::EventKind;
use crate::db::{self, throttle::Backoff};
use crate::domain::mail as outbox;
use crate::domain::{Email, EndReason, Invalid, ThrottleKey};
use crate::error::AppError;

/// Reset mails per account per hour; requests beyond it are answered alike
/// but send nothing, so nobody can flood a mailbox through authd.
const RESET_MAILS_PER_HOUR: i64 = 5;

impl Core {
    /// Records the request; [`Core::resolve_reset_requests`] queues the
    /// mail if the address names an account. The answer is the same either
    /// way, and so is the work done before it (one insert), so neither the
    /// answer nor its timing tells which addresses have accounts.
    #[tracing::instrument(skip_all)]
    pub async fn forgot_password(&self, email: &str, now: DateTime<Utc>) -> Result<(), AppError> {
        let email = Email::parse(email).map_err(|e| AppError::invalid("email", e))?;
        db::recovery::record_request(&self.db, email.as_str(), now).await?;
        self.mail.reset_requested.notify_one();
        Ok(())
    }

    /// Resolves recorded ForgotPassword requests until aborted: woken by a
    /// request in this process, and every `poll` for those recorded by
    /// other replicas (or left by one that died).
    #[allow(clippy::disallowed_methods)] // a job's loop top: each request is resolved at its own now
    pub async fn resolve_reset_requests(self, poll: std::time::Duration) {
        loop {
            loop {
                match self.resolve_one_reset_request(Utc::now()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "could not resolve a reset request");
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.mail.reset_requested.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Takes the oldest request and, if its address names an enabled
    /// account under the hourly cap, issues a token and queues the mail, in
    /// one transaction. Returns whether there was a request.
    async fn resolve_one_reset_request(&self, now: DateTime<Utc>) -> Result<bool, AppError> {
        let mut tx = super::begin(&self.db).await?;
        let Some(request) = db::recovery::take_request(&mut tx).await? else {
            return Ok(false);
        };
        let Some(account) = db::recovery::lock_account_by_email(&mut tx, &request.email).await? else {
            tx.commit().await?;
            return Ok(true);
        };
        let issued =
            db::recovery::tokens_issued_since(&mut tx, account.id, now - chrono::Duration::hours(1)).await?;
        if issued >= RESET_MAILS_PER_HOUR {
            tx.commit().await?;
            tracing::info!(user_id = %account.id, "hourly reset mail cap reached; no mail queued");
            return Ok(true);
        }
        let token = NewToken::generate(TokenKind::PasswordReset).map_err(AppError::internal)?;
        // The link lives from the request, not from this moment.
        let expires_at = request.requested_at + chrono_duration(self.mail.reset_ttl);
        db::recovery::supersede_all(&mut tx, account.id, now).await?;
        db::recovery::insert_token(&mut tx, &token.hash, account.id, now, expires_at).await?;
        let link = outbox::reset_link(&self.mail.reset_url, token.expose());
        let mail = outbox::password_reset(&account.email, &link, self.mail.reset_ttl, expires_at);
        let outbox_id = db::outbox::enqueue(&mut tx, &mail, Some(account.id), now).await?;
        tx.commit().await?;
        self.mail.queued.notify_one();
        tracing::info!(user_id = %account.id, %outbox_id, "reset mail queued");
        Ok(true)
    }

    /// Sets a new password with a reset token and ends every session of the
    /// account. The policy is applied before the token is consumed, so a
    /// refused password leaves the link usable; consuming the token,
    /// replacing the hash and ending the sessions are one transaction.
    #[tracing::instrument(skip_all)]
    pub async fn reset_password(
        &self,
        presented: &str,
        new_password: &str,
        client: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        if presented.trim().is_empty() {
            return Err(AppError::invalid("token", Invalid::required()));
        }
        // Reset tokens are 256 random bits, so guessing is hopeless; the
        // durable cap still keeps a client that tries from hammering the
        // database through every replica at once.
        let guess_key = client.map(ThrottleKey::reset_guesses);
        if let Some(key) = &guess_key
            && let Some(wait) = db::throttle::charge(&self.db, key, &Backoff::RESET_GUESSES, now).await?
        {
            return Err(AppError::Throttled(wait));
        }
        self.reset_password_checked(presented, new_password, guess_key.as_deref(), now)
            .await
    }

    async fn reset_password_checked(
        &self,
        presented: &str,
        new_password: &str,
        guess_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let hash = opaque::parse_presented(TokenKind::PasswordReset, presented)
            .ok_or(AppError::InvalidResetToken)?;
        let account = db::recovery::usable_token_owner(&self.db, &hash, now)
            .await?
            .ok_or(AppError::InvalidResetToken)?;
        let identifiers = [
            account.email.as_str(),
            account.username.as_deref().unwrap_or_default(),
        ];
        let password = self
            .check_new_password(new_password, &identifiers)
            .await?
            .map_err(|e| AppError::invalid("new_password", e))?;
        let new_hash = self.hasher.hash(&password).await?;

        let mut tx = super::begin(&self.db).await?;
        // The account before its token, in the order ForgotPassword,
        // ChangePassword and an address change lock them (they supersede
        // the account's reset links under its lock): the other way round,
        // a reset while one of them runs is a deadlock. Disabled meanwhile,
        // it keeps its password.
        match db::users::lock(&mut tx, account.id).await? {
            Some(user) if !user.disabled => {}
            _ => return Err(AppError::InvalidResetToken),
        }
        // Checked again under the row lock: another call may have used,
        // or a newer request superseded, the token since the lookup.
        if db::recovery::consume(&mut tx, &hash, now).await? != Some(account.id) {
            return Err(AppError::InvalidResetToken);
        }
        db::users::set_password_hash(&mut *tx, account.id, &new_hash, now).await?;
        self.record_password_change(&mut tx, account.id, &account.email, now)
            .await?;
        if let Some(key) = guess_key {
            // Only wrong guesses count: a right one gives its charge back,
            // with the reset it made.
            db::throttle::refund(&mut *tx, key, &Backoff::RESET_GUESSES).await?;
        }
        // Last: the revocation log's counter, which every revocation waits
        // for until this commits, must not be held while waiting for a lock.
        db::sessions::revoke_all_for_user(&mut *tx, account.id, None, EndReason::PasswordReset, now).await?;
        db::revocations::record(&mut *tx, EventKind::PasswordChanged, account.id, None).await?;
        tx.commit().await?;
        self.cache.evict_user(account.id);
        self.mail.queued.notify_one();
        tracing::info!(user_id = %account.id, "password reset; every session ended");
        Ok(())
    }

    /// What every password change does inside its transaction besides
    /// replacing the hash: every outstanding link (reset, verification,
    /// address change) stops working, so one kept by whoever knew the old
    /// password cannot move the account afterwards, and the owner is told
    /// by mail. The caller wakes the mail worker after commit.
    pub(super) async fn record_password_change(
        &self,
        tx: &mut PgConnection,
        user_id: Uuid,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        db::recovery::supersede_all(tx, user_id, now).await?;
        db::users::rotate_security_stamp(tx, user_id).await?;
        db::outbox::enqueue(tx, &outbox::password_changed(email, now), Some(user_id), now).await?;
        Ok(())
    }
}
