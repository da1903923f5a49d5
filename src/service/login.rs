//! Login: check a password, start a session (recording where from).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::factors::MfaChallenge;
use super::{Core, TokenPair, chrono_duration, seconds_until};
use crate::crypto::jwt::Subject;
use crate::crypto::opaque::{NewToken, TokenKind};
use crate::crypto::password::Verified;
use crate::db::sessions::SessionProof;
use crate::db::throttle::Backoff;
use crate::db::{self, users::LoginKey};
use crate::domain::{
    Assurance, ClientInfo, Email, FieldReason, Invalid, Password, ThrottleKey, User, Username,
};
use crate::error::{AppError, Violation};

/// Longest login string worth looking up (an email's maximum).
const MAX_LOGIN_LEN: usize = 254;

impl Core {
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        login: &str,
        password: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<LoginAnswer, AppError> {
        let login = login.trim();
        let mut violations = Vec::new();
        if login.is_empty() {
            violations.push(Violation::new(
                "login",
                Invalid::new(
                    FieldReason::Required,
                    "is required (an email address or username)",
                ),
            ));
        } else if login.len() > MAX_LOGIN_LEN {
            violations.push(Violation::new(
                "login",
                Invalid::too_long(format!("must be at most {MAX_LOGIN_LEN} bytes")),
            ));
        }
        let password = Password::normalize(password);
        Violation::note("password", &password, &mut violations);
        let Ok(password) = password else {
            return Err(AppError::Validation(violations));
        };
        if !violations.is_empty() {
            return Err(AppError::Validation(violations));
        }

        // Refused before any database work when the password workers could
        // not check it in time: under a flood, a refusal must cost nothing.
        // The same for every login, so it tells nothing of the account.
        self.hasher.admit()?;
        // A login that cannot name an account still costs a lookup and a
        // hash, so neither timing nor answer tells which accounts exist.
        let by_email = login.contains('@');
        let credentials = if by_email {
            match Email::parse(login) {
                Ok(email) => db::users::find_credentials(&self.db, LoginKey::Email(email.as_str())).await?,
                Err(_) => None,
            }
        } else {
            match Username::parse(login) {
                Ok(name) => db::users::find_credentials(&self.db, LoginKey::Username(name.as_str())).await?,
                Err(_) => None,
            }
        };
        // Known and unknown accounts are throttled alike, so a throttled
        // answer does not tell them apart either.
        let throttle_key = match &credentials {
            Some(c) if by_email => ThrottleKey::account(c.user.id),
            Some(c) => ThrottleKey::account_by_username(c.user.id),
            None => ThrottleKey::unknown_login(login),
        };
        let charge = self.charge_attempt(&throttle_key, &Backoff::LOGIN, now).await?;
        let stored = credentials.as_ref().map(|c| c.password_hash.as_str());
        let verified = self.hasher.verify(&password, stored).await?;
        let (Some(credentials), Verified::Yes | Verified::YesRehashed(_)) = (credentials, &verified) else {
            // A wrong password (or no account): the charge stands.
            charge.checked();
            return Err(AppError::InvalidCredentials);
        };
        // The password is right. Should the call end before the session
        // starts (its deadline, a failure below), the charge is given back:
        // a right password is never a failed attempt.
        let upgrade = match verified {
            Verified::YesRehashed(new_hash) => Some(new_hash),
            Verified::Yes | Verified::No => None,
        };
        // Only now, with the password proven, may the answer say so.
        if credentials.user.disabled {
            return Err(AppError::AccountDisabled);
        }
        if self.sessions.require_verified_email && !credentials.user.email_verified {
            // The right password is no failure: someone waiting for the
            // mail may well try again and again.
            db::throttle::forgive(&self.db, &throttle_key).await?;
            charge.checked();
            return Err(AppError::EmailNotVerified);
        }
        if credentials.has_factor {
            if let Some(new_hash) = &upgrade {
                db::users::upgrade_password_hash(
                    &self.db,
                    credentials.user.id,
                    &credentials.password_hash,
                    new_hash,
                )
                .await?;
            }
            let challenge = self
                .challenge_second_factor(credentials.user.id, &throttle_key, now)
                .await?;
            // The attempt stands until CompleteLogin proves the second
            // factor and forgives it: a known password alone must not reset
            // the back-off that wrong codes build up.
            charge.checked();
            return Ok(LoginAnswer::SecondFactorDue {
                challenge,
                user: credentials.user,
            });
        }
        let proof = SessionProof {
            assurance: Assurance::password(now),
            mfa_enrollment_required: self.factors.require_mfa.applies_to(&credentials.user.roles),
        };
        let mfa_enrollment_required = proof.mfa_enrollment_required;
        let pair = match upgrade {
            None => {
                self.start_session_in(&self.db, &credentials.user, proof, &throttle_key, client, now)
                    .await?
            }
            Some(new_hash) => {
                let mut tx = super::begin(&self.db).await?;
                db::users::upgrade_password_hash(
                    &mut *tx,
                    credentials.user.id,
                    &credentials.password_hash,
                    &new_hash,
                )
                .await?;
                let pair = self
                    .start_session_in(&mut *tx, &credentials.user, proof, &throttle_key, client, now)
                    .await?;
                tx.commit().await?;
                pair
            }
        };
        // The session's statement forgave the count; nothing to give back.
        charge.checked();
        Ok(LoginAnswer::Session {
            tokens: pair,
            user: credentials.user,
            mfa_enrollment_required,
        })
    }

    /// Creates a session with its first refresh token and forgets the
    /// failures counted under `throttle_key` (one statement).
    pub(super) async fn start_session_in<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        user: &User,
        proof: SessionProof,
        throttle_key: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, AppError> {
        let ip_address = client.ip_text();
        let from = db::sessions::StartedFrom {
            user_agent: client.user_agent.as_ref().map(|ua| ua.as_str()),
            ip_address: ip_address.as_deref(),
        };
        let absolute = now + chrono_duration(self.sessions.max_ttl);
        let session = db::sessions::NewSession {
            id: Uuid::new_v4(),
            user_id: user.id,
            idle_expires_at: (now + chrono_duration(self.sessions.idle_ttl)).min(absolute),
            absolute_expires_at: absolute,
            proof,
        };
        let refresh = NewToken::generate(TokenKind::Refresh).map_err(AppError::internal)?;
        let hash = refresh.hash;
        // Signed before the commit, so a committed session always has tokens.
        let pair = self.pair(
            user.id,
            session.id,
            &user.roles,
            &session.proof,
            refresh,
            session.idle_expires_at,
            now,
        )?;
        // Disabled (or deleted) while the password was being checked.
        if !db::sessions::start_from(db, &session, &hash, throttle_key, from, now).await? {
            return Err(AppError::AccountDisabled);
        }
        Ok(pair)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn pair(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: &[String],
        proof: &SessionProof,
        refresh: NewToken,
        refresh_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, AppError> {
        let access = self
            .tokens
            .issue(
                &Subject {
                    user_id,
                    session_id,
                    roles,
                    assurance: &proof.assurance,
                    mfa_enrollment_required: proof.mfa_enrollment_required,
                },
                now,
                refresh_expires_at,
            )
            .map_err(AppError::internal)?;
        Ok(TokenPair {
            access_token: access.token,
            refresh_token: refresh.secret,
            expires_in: access.expires_in,
            refresh_expires_in: seconds_until(now, refresh_expires_at),
        })
    }
}

/// What Login answers when the password checks out.
pub enum LoginAnswer {
    Session {
        tokens: TokenPair,
        user: User,
        /// The session may only enrol a second factor.
        mfa_enrollment_required: bool,
    },
    /// The account has a second factor: CompleteLogin finishes the login.
    SecondFactorDue { challenge: MfaChallenge, user: User },
}
