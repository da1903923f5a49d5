//! Login: check a password, start a session (recording where from).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Core, TokenPair, chrono_duration, seconds_until};
use crate::crypto::jwt::Subject;
use crate::crypto::opaque::{NewToken, TokenKind};
use crate::crypto::password::Verified;
use crate::db::throttle::Backoff;
use crate::db::{self, users::LoginKey};
use crate::domain::{Assurance, ClientInfo, Email, FieldReason, Invalid, Password, User, Username};
use crate::error::{AppError, Violation};

/// Longest login string worth looking up (an email's maximum).
const MAX_LOGIN_LEN: usize = 254;

/// The throttle counter of an account's password checks (Login by email,
/// ChangePassword and the other checks of a bearer's password share it).
pub(super) fn throttle_key_for_user(user_id: Uuid) -> String {
    format!("user:{user_id}")
}

/// The throttle counter of Login by username. Apart from the account's
/// other counter: were they one, failures through an email address would
/// throttle a username, and an attacker would learn that both name one
/// account. The price is a second back-off ladder for the same password.
pub(super) fn username_throttle_key_for_user(user_id: Uuid) -> String {
    format!("user:{user_id}:username")
}

/// The throttle counter of a login string that names no account. It is
/// hashed: people type passwords into the login field, and a key stored in
/// the clear would keep them; hashing also takes any byte (NUL included)
/// into a form PostgreSQL's `text` accepts.
pub(super) fn unknown_login_throttle_key(login: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(login.to_lowercase().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("login:{hex}")
}

impl Core {
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        login: &str,
        password: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(TokenPair, User), AppError> {
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
        super::accounts::note("password", &password, &mut violations);
        let Ok(password) = password else {
            return Err(AppError::Validation(violations));
        };
        if !violations.is_empty() {
            return Err(AppError::Validation(violations));
        }

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
            Some(c) if by_email => throttle_key_for_user(c.user.id),
            Some(c) => username_throttle_key_for_user(c.user.id),
            None => unknown_login_throttle_key(login),
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
        let pair = self
            .start_session(&credentials, upgrade.as_deref(), &throttle_key, client, now)
            .await?;
        // The session's statement forgave the count; nothing to give back.
        charge.checked();
        Ok((pair, credentials.user))
    }

    /// Creates a session with its first refresh token and forgets the
    /// failures counted under `throttle_key` (one statement); with a
    /// re-hashed password, stores the new hash in the same transaction.
    async fn start_session(
        &self,
        credentials: &db::users::Credentials,
        upgraded_hash: Option<&str>,
        throttle_key: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, AppError> {
        let user_id = credentials.user.id;
        let ip_address = client.ip_text();
        let from = db::sessions::StartedFrom {
            user_agent: client.user_agent.as_ref().map(|ua| ua.as_str()),
            ip_address: ip_address.as_deref(),
        };
        let absolute = now + chrono_duration(self.sessions.max_ttl);
        let session = db::sessions::NewSession {
            id: Uuid::new_v4(),
            user_id,
            idle_expires_at: (now + chrono_duration(self.sessions.idle_ttl)).min(absolute),
            absolute_expires_at: absolute,
        };
        let refresh = NewToken::generate(TokenKind::Refresh).map_err(AppError::internal)?;
        let hash = refresh.hash;
        // Signed before the commit, so a committed session always has tokens.
        let pair = self.pair(
            user_id,
            session.id,
            &credentials.user.roles,
            refresh,
            session.idle_expires_at,
            now,
        )?;
        let started = match upgraded_hash {
            None => db::sessions::start_from(&self.db, &session, &hash, throttle_key, from, now).await?,
            Some(new_hash) => {
                let mut tx = self.db.begin().await?;
                db::users::upgrade_password_hash(&mut *tx, user_id, &credentials.password_hash, new_hash)
                    .await?;
                let started =
                    db::sessions::start_from(&mut *tx, &session, &hash, throttle_key, from, now).await?;
                tx.commit().await?;
                started
            }
        };
        // Disabled (or deleted) while the password was being checked.
        if !started {
            return Err(AppError::AccountDisabled);
        }
        Ok(pair)
    }

    pub(super) fn pair(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: &[String],
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
                    assurance: &Assurance::password(now),
                    mfa_enrollment_required: false,
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
