//! Refresh (rotation with reuse detection), Logout, ChangePassword and
//! IntrospectToken.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Core, TokenPair, chrono_duration};
use crate::crypto::jwt::{UserToken, VerifiedAccess, VerifiedService};
use crate::crypto::opaque::{self, NewToken, TokenKind};
use crate::crypto::password::Verified;
use crate::db;
use crate::db::revocations::EventKind;
use crate::db::throttle::Backoff;
use crate::domain::{EndReason, Invalid, Password, ThrottleKey, User};
use crate::error::{AppError, TokenProblem, Violation};
use authd_token_rules::UserAccess;

/// Answer of IntrospectToken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    Inactive,
    /// A user's token (for any registered audience): what it says, and the
    /// account as it is now.
    Active {
        token: VerifiedAccess,
        claims: Box<UserAccess>,
        user: Arc<User>,
    },
    /// A service's own token whose key is still live.
    Service(VerifiedService),
}

fn require_refresh_token(presented: &str) -> Result<opaque::TokenHash, AppError> {
    if presented.trim().is_empty() {
        return Err(AppError::invalid("refresh_token", Invalid::required()));
    }
    opaque::parse_presented(TokenKind::Refresh, presented).ok_or(AppError::InvalidRefreshToken)
}

impl Core {
    /// Rotates a refresh token: the presented one is consumed and its
    /// successor stored in one atomic statement. A token that was already consumed is
    /// a replay (RFC 9700 §4.14.2): the whole session ends, unless it is the
    /// immediately previous token replayed within the configured grace.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, presented: &str, now: DateTime<Utc>) -> Result<TokenPair, AppError> {
        let hash = require_refresh_token(presented)?;
        let idle = chrono_duration(self.sessions.idle_ttl);
        let next = NewToken::generate(TokenKind::Refresh).map_err(AppError::internal)?;
        if let Some(session) =
            db::sessions::rotate_refresh_token(&self.db, &hash, &next.hash, now, idle).await?
        {
            // Signing an access token cannot fail once the keys loaded, so
            // it may follow the commit; that saves the transaction's round trips.
            return self.pair(
                session.user_id,
                session.id,
                &session.roles,
                &session.proof,
                next,
                session.idle_expires_at,
                now,
            );
        }
        let mut tx = super::begin(&self.db).await?;
        let Some(state) = db::sessions::refresh_token_state(&mut tx, &hash, now).await? else {
            return Err(AppError::InvalidRefreshToken);
        };
        match state.consumed_at {
            // Unconsumed, so the session itself is over (expired or revoked).
            None => Err(AppError::InvalidRefreshToken),
            Some(_) if !state.session_live => Err(AppError::RefreshTokenReused),
            Some(consumed_at) => {
                let grace = chrono_duration(self.sessions.reuse_grace);
                let latest = state.last_consumed_at == Some(consumed_at);
                if !grace.is_zero() && latest && now - consumed_at <= grace {
                    tracing::info!(session_id = %state.session_id, "refresh token replayed within grace; session kept");
                    return Err(AppError::RefreshTokenReused);
                }
                db::sessions::revoke(&mut *tx, state.session_id, EndReason::RefreshTokenReused, now).await?;
                tx.commit().await?;
                self.cache.evict_session(state.session_id);
                tracing::warn!(session_id = %state.session_id, "refresh token reused; session ended");
                Err(AppError::RefreshTokenReused)
            }
        }
    }

    /// Ends the session of a refresh token. Ending an ended session is OK.
    #[tracing::instrument(skip_all)]
    pub async fn logout(&self, presented: &str, now: DateTime<Utc>) -> Result<(), AppError> {
        let hash = require_refresh_token(presented)?;
        match db::sessions::revoke_by_refresh_token(&self.db, &hash, EndReason::Logout, now).await? {
            Some(session_id) => {
                self.cache.evict_session(session_id);
                Ok(())
            }
            None => Err(AppError::InvalidRefreshToken),
        }
    }

    /// Whether an access token is active now: valid signature and claims,
    /// and a live session.
    #[tracing::instrument(skip_all)]
    pub async fn introspect(
        &self,
        access_token: &str,
        now: DateTime<Utc>,
    ) -> Result<Introspection, AppError> {
        if access_token.trim().is_empty() {
            return Err(AppError::invalid("access_token", Invalid::required()));
        }
        let token = access_token.trim();
        let Ok(UserToken { access, claims }) = self.tokens.read_user_token(token, now) else {
            return self.introspect_service(token, now).await;
        };
        Ok(match self.live_session_user(&access, now).await? {
            Some(user) => Introspection::Active {
                token: access,
                claims: Box::new(claims),
                user,
            },
            None => Introspection::Inactive,
        })
    }

    /// A service's token is active while the key that minted it lives.
    async fn introspect_service(&self, token: &str, now: DateTime<Utc>) -> Result<Introspection, AppError> {
        let Ok(service) = self.tokens.verify_service(token, now, true) else {
            return Ok(Introspection::Inactive);
        };
        Ok(
            match self.service_keys.identify_by_key_id(service.key_id, now).await? {
                Some(key) if key.name == service.name => Introspection::Service(service),
                _ => Introspection::Inactive,
            },
        )
    }

    /// Changes the bearer's password: checks the current one (same rules as
    /// Login), applies the policy to the new one, ends the user's other
    /// sessions and replaces this session's refresh tokens with a new pair.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn change_password(
        &self,
        bearer: VerifiedAccess,
        current: &str,
        new: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, AppError> {
        self.require_fresh(&bearer, now).await?;
        let current = Password::normalize(current);
        let user = db::sessions::live_user(&self.db, bearer.user_id, bearer.session_id, now)
            .await?
            .ok_or(AppError::Token(TokenProblem::SessionRevoked))?
            .user;
        let identifiers = [user.email.as_str(), user.username.as_deref().unwrap_or_default()];
        let new = self.check_new_password(new, &identifiers).await?;
        let mut violations: Vec<Violation> = Vec::new();
        Violation::note("current_password", &current, &mut violations);
        Violation::note("new_password", &new, &mut violations);
        let (Ok(current), Ok(new)) = (current, new) else {
            return Err(AppError::Validation(violations));
        };

        let throttle_key = ThrottleKey::account(user.id);
        let charge = self.charge_attempt(&throttle_key, &Backoff::LOGIN, now).await?;
        let stored = db::users::password_hash(&self.db, user.id).await?;
        let verified = self.hasher.verify(&current, stored.as_deref()).await?;
        if verified == Verified::No {
            charge.checked();
            return Err(AppError::WrongCurrentPassword);
        }
        // The password is right: should the change not commit (its
        // deadline, an overload refusing the new hash, a conflict), the
        // charge is given back, as Login does.
        let new_hash = self.hasher.hash(&new).await?;
        let next = NewToken::generate(TokenKind::Refresh).map_err(AppError::internal)?;
        let next_hash = next.hash;

        let mut tx = super::begin(&self.db).await?;
        // The account before the session, in the order ChangeEmail,
        // DeleteMe and DisableUser lock them: two of these at once wait for
        // each other instead of deadlocking.
        if db::users::lock(&mut tx, user.id).await?.is_none() {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        }
        let Some((idle_expires_at, proof)) =
            db::sessions::lock_live(&mut tx, user.id, bearer.session_id, now).await?
        else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        // Compare-and-set on the hash we verified: a concurrent change of the
        // password makes this one fail instead of silently overwriting it.
        if !db::users::replace_password_hash(
            &mut *tx,
            user.id,
            stored.as_deref().unwrap_or_default(),
            &new_hash,
            now,
        )
        .await?
        {
            return Err(AppError::Conflict);
        }
        db::sessions::delete_refresh_tokens(&mut tx, bearer.session_id).await?;
        db::sessions::insert_refresh_token(&mut tx, &next_hash, bearer.session_id, now).await?;
        // The proven password clears the failures only with the change
        // itself: a change that does not commit forgives nothing.
        db::throttle::forgive(&mut *tx, &throttle_key).await?;
        let pair = self.pair(
            user.id,
            bearer.session_id,
            &user.roles,
            &proof,
            next,
            idle_expires_at,
            now,
        )?;
        self.record_password_change(&mut tx, user.id, &user.email, now)
            .await?;
        // Last: it takes the revocation log's counter, which every
        // revocation of every account waits for until this commits. Taken
        // earlier, a wait for one of the locks above (a reset link being
        // used, a failed login being counted) stalled them all.
        db::sessions::revoke_all_for_user(
            &mut *tx,
            user.id,
            Some(bearer.session_id),
            EndReason::PasswordChanged,
            now,
        )
        .await?;
        db::revocations::record(&mut *tx, EventKind::PasswordChanged, user.id, None).await?;
        tx.commit().await?;
        // The change forgave the count; nothing to give back.
        charge.checked();
        // Other sessions ended and the account changed.
        self.cache.evict_user(user.id);
        self.mail.queued.notify_one();
        Ok(pair)
    }
}
