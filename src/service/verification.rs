//! Proving an address: SendVerificationEmail, VerifyEmail and ChangeEmail,
//! and the verification mail Register queues.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Core, chrono_duration};
use crate::crypto::jwt::VerifiedAccess;
use crate::crypto::opaque::{self, NewToken, TokenKind};
use crate::db;
use crate::db::revocations::EventKind;
use crate::db::throttle::Backoff;
use crate::db::verification::{MailAccount, NewVerificationToken, Purpose};
use crate::domain::mail as outbox;
use crate::domain::{Email, Invalid, Password, ThrottleKey, User};
use crate::error::{AppError, TokenProblem, Violation};
use crate::metrics::ThrottleKind;

/// Verification and email-change mails per account per hour (Register's
/// included), so nobody can flood a mailbox, theirs or another's, through
/// authd.
const ADDRESS_MAILS_PER_HOUR: i64 = 5;

impl Core {
    /// Inside the caller's transaction: a new token that proves `email` for
    /// `purpose` (superseding the account's older ones of that purpose) and
    /// the mail that carries its link. The caller wakes the mail worker
    /// after commit.
    pub(super) async fn queue_address_proof(
        &self,
        tx: &mut PgConnection,
        user_id: Uuid,
        purpose: Purpose,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let token = NewToken::generate(TokenKind::EmailVerification).map_err(AppError::internal)?;
        let ttl = match purpose {
            Purpose::Verify => self.mail.verify_ttl,
            Purpose::Change => self.mail.change_ttl,
        };
        let expires_at = now + chrono_duration(ttl);
        db::verification::supersede(tx, user_id, Some(purpose), now).await?;
        db::verification::insert_token(
            tx,
            &NewVerificationToken {
                hash: &token.hash,
                user_id,
                purpose,
                email,
                expires_at,
            },
            now,
        )
        .await?;
        let link = outbox::link(&self.mail.verify_url, token.expose());
        let mail = match purpose {
            Purpose::Verify => outbox::email_verification(email, &link, ttl, expires_at),
            Purpose::Change => outbox::email_change(email, &link, ttl, expires_at),
        };
        db::outbox::enqueue(tx, &mail, Some(user_id), now).await?;
        Ok(())
    }

    /// Locks the bearer's account and checks their session is live, for a
    /// request that mails a link; refuses it when the hourly cap is reached.
    async fn begin_address_mail(
        &self,
        tx: &mut PgConnection,
        bearer: &VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<MailAccount, AppError> {
        // The account first, then the session: the order DisableUser and
        // Login lock them in.
        let account = db::verification::lock_account(tx, bearer.user_id).await?;
        let live = db::sessions::lock_live(tx, bearer.user_id, bearer.session_id, now).await?;
        let (Some(account), Some(_)) = (account, live) else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        Ok(account)
    }

    /// The cap on link mails: `Err(Throttled)` until the oldest mail that
    /// counts leaves the hour.
    async fn check_address_mail_cap(
        &self,
        tx: &mut PgConnection,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let hour = chrono::Duration::hours(1);
        let capped_until =
            db::verification::cap_reached_until(tx, user_id, now - hour, hour, ADDRESS_MAILS_PER_HOUR)
                .await?;
        match capped_until {
            Some(until) => {
                self.metrics.throttled(ThrottleKind::VerificationMails);
                tracing::info!(%user_id, "hourly cap on address mails reached; nothing queued");
                Err(AppError::Throttled((until - now).to_std().unwrap_or_default()))
            }
            None => Ok(()),
        }
    }

    /// Mails the bearer a new link that verifies their address; nothing
    /// when it is verified already.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn send_verification_email(
        &self,
        bearer: VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut tx = super::begin(&self.db).await?;
        let account = self.begin_address_mail(&mut tx, &bearer, now).await?;
        if account.email_verified {
            return Ok(());
        }
        self.check_address_mail_cap(&mut tx, account.id, now).await?;
        self.queue_address_proof(&mut tx, account.id, Purpose::Verify, &account.email, now)
            .await?;
        tx.commit().await?;
        self.mail.queued.notify_one();
        tracing::info!("verification mail queued");
        Ok(())
    }

    /// Starts moving the bearer's account to `new_email`: a link to the new
    /// address, a notice to the current one. Whether another account uses
    /// the new address is not looked at (it shows only when the link is
    /// used), so the answer tells the caller nothing about other accounts.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn change_email(
        &self,
        bearer: VerifiedAccess,
        new_email: &str,
        current_password: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        self.require_fresh(&bearer, now).await?;
        let new_email = Email::parse(new_email);
        let current = Password::normalize(current_password);
        let mut violations: Vec<Violation> = Vec::new();
        Violation::note("new_email", &new_email, &mut violations);
        Violation::note("current_password", &current, &mut violations);
        let (Ok(new_email), Ok(current)) = (new_email, current) else {
            return Err(AppError::Validation(violations));
        };
        if self.live_session_user(&bearer, now).await?.is_none() {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        }
        let (throttle_key, charge) = self
            .confirm_current_password(bearer.user_id, &current, now)
            .await?;

        let mut tx = super::begin(&self.db).await?;
        let account = self.begin_address_mail(&mut tx, &bearer, now).await?;
        // The proven password clears the failures, whatever follows.
        db::throttle::forgive(&mut *tx, &throttle_key).await?;
        if let Err(capped) = self.check_address_mail_cap(&mut tx, account.id, now).await {
            tx.commit().await?;
            charge.checked();
            return Err(capped);
        }
        self.queue_address_proof(&mut tx, account.id, Purpose::Change, new_email.as_str(), now)
            .await?;
        db::outbox::enqueue(
            &mut tx,
            &outbox::email_change_notice(&account.email, now),
            Some(account.id),
            now,
        )
        .await?;
        tx.commit().await?;
        // The change forgave the count; nothing to give back.
        charge.checked();
        self.mail.queued.notify_one();
        tracing::info!("email change requested; link and notice queued");
        Ok(())
    }

    /// Consumes a verification link: the account's address is verified, or
    /// (a link from ChangeEmail) the account moves to the link's address,
    /// verified. Wrong tokens are counted per client like ResetPassword's.
    #[tracing::instrument(skip_all)]
    pub async fn verify_email(
        &self,
        presented: &str,
        client: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<User, AppError> {
        if presented.trim().is_empty() {
            return Err(AppError::invalid("token", Invalid::required()));
        }
        // 256 random bits make guessing hopeless; the cap keeps a client
        // that tries from hammering the database through every replica.
        let guess_key = client.map(ThrottleKey::verify_guesses);
        if let Some(key) = &guess_key
            && let Some(wait) = db::throttle::charge(&self.db, key, &Backoff::VERIFY_GUESSES, now).await?
        {
            self.metrics.throttled(ThrottleKind::VerifyGuesses);
            return Err(AppError::Throttled(wait));
        }
        let result = self
            .consume_verification(presented, guess_key.as_deref(), now)
            .await;
        if matches!(result, Err(AppError::EmailTaken))
            && let Some(key) = &guess_key
        {
            // The token was right; only the address is gone.
            db::throttle::refund(&self.db, key, &Backoff::VERIFY_GUESSES).await?;
        }
        result
    }

    async fn consume_verification(
        &self,
        presented: &str,
        guess_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<User, AppError> {
        let hash = opaque::parse_presented(TokenKind::EmailVerification, presented)
            .ok_or(AppError::InvalidVerifyToken)?;
        let mut tx = super::begin(&self.db).await?;
        // The account before its token, in the order ChangeEmail,
        // SendVerificationEmail and DeleteMe lock them (they supersede or
        // delete the account's tokens under its lock): the other way round,
        // a click on the link while one of them runs is a deadlock.
        let Some(owner) = db::verification::owner(&mut tx, &hash).await? else {
            return Err(AppError::InvalidVerifyToken);
        };
        // A disabled account's links are dead (disabling moved its security
        // stamp on); this answers alike before the token is looked at.
        let Some(account) = db::verification::lock_account(&mut tx, owner).await? else {
            return Err(AppError::InvalidVerifyToken);
        };
        let token = db::verification::consume(&mut tx, &hash, now)
            .await?
            .ok_or(AppError::InvalidVerifyToken)?;
        let user = match token.purpose {
            // Only while the account still has the address the link went to.
            Purpose::Verify => {
                db::users::mark_email_verified(&mut tx, token.user_id, &token.email, now).await?
            }
            // The unique index decides, at this moment, whether the address
            // is free; a refusal rolls back and leaves the link usable.
            Purpose::Change => db::users::switch_email(&mut tx, token.user_id, &token.email, now).await?,
        }
        .ok_or(AppError::InvalidVerifyToken)?;
        if token.purpose == Purpose::Change {
            // Links mailed to the old address, to verify it or to reset the
            // password, no longer reach the account's owner: the new stamp
            // ends them, with every other link issued before the move.
            db::users::rotate_security_stamp(&mut tx, user.id).await?;
            // The old address hears of the move when it happens, not only
            // when it was asked for: a move the owner did not make is then
            // never silent, even when the request notice went unread.
            db::outbox::enqueue(
                &mut tx,
                &outbox::email_changed_notice(&account.email, now),
                Some(user.id),
                now,
            )
            .await?;
        }
        if let Some(key) = guess_key {
            db::throttle::refund(&mut *tx, key, &Backoff::VERIFY_GUESSES).await?;
        }
        if token.purpose == Purpose::Change {
            // Last: the event log's counter.
            db::revocations::record(&mut *tx, EventKind::IdentifierChanged, user.id, None).await?;
        }
        tx.commit().await?;
        self.cache.evict_user(user.id);
        if token.purpose == Purpose::Change {
            self.mail.queued.notify_one();
        }
        tracing::info!(user_id = %user.id, switched = token.purpose == Purpose::Change, "email address verified");
        Ok(user)
    }
}
