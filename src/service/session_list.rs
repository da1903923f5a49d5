//! The bearer's sessions: ListSessions, RevokeSession, RevokeOtherSessions.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Core;
use crate::crypto::jwt::VerifiedAccess;
use crate::db;
use crate::db::sessions::{OwnSessionEnded, SessionSummary};
use crate::domain::{EndReason, Invalid};
use crate::error::{AppError, TokenProblem};

/// One of the bearer's live sessions.
#[derive(Debug, Clone)]
pub struct OwnSession {
    pub session: SessionSummary,
    /// The session of the access token that asked.
    pub current: bool,
}

fn parse_session_id(input: &str) -> Result<Uuid, AppError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(AppError::invalid("session_id", Invalid::required()));
    }
    Uuid::try_parse(input).map_err(|_| {
        AppError::invalid(
            "session_id",
            Invalid::format("must be a session id (a UUID) as ListSessions gives it"),
        )
    })
}

impl Core {
    /// The bearer's live sessions, most recently used first.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn list_sessions(
        &self,
        bearer: VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<Vec<OwnSession>, AppError> {
        let sessions = db::sessions::list_live(&self.db, bearer.user_id, now).await?;
        // The bearer's own session is among them exactly when it is live.
        if !sessions.iter().any(|s| s.id == bearer.session_id) {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        }
        Ok(sessions
            .into_iter()
            .map(|session| OwnSession {
                current: session.id == bearer.session_id,
                session,
            })
            .collect())
    }

    /// Ends one of the bearer's sessions (possibly the current one). Another
    /// user's session is NOT_FOUND, exactly like one that does not exist.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn revoke_session(
        &self,
        bearer: VerifiedAccess,
        session_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let target = parse_session_id(session_id)?;
        if self.live_session_user(&bearer, now).await?.is_none() {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        }
        match db::sessions::revoke_of_user(&self.db, bearer.user_id, target, EndReason::RevokedByOwner, now)
            .await?
        {
            OwnSessionEnded::NotFound => Err(AppError::SessionNotFound),
            OwnSessionEnded::AlreadyOver => Ok(()),
            OwnSessionEnded::Ended => {
                self.cache.evict_session(target);
                tracing::info!(ended_session_id = %target, "session ended by its owner");
                Ok(())
            }
        }
    }

    /// Ends every live session of the bearer but the current one; returns
    /// how many ended.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn revoke_other_sessions(
        &self,
        bearer: VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<u64, AppError> {
        let mut tx = super::begin(&self.db).await?;
        // The account before any session, in the order ChangePassword,
        // DeleteMe and DisableUser lock them: holding one session while
        // waiting for the others, this call deadlocked with any of them
        // (and with itself called from another session) run from a second
        // session of the account.
        if db::users::lock(&mut tx, bearer.user_id).await?.is_none() {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        }
        // Held until commit, so the current session cannot end meanwhile and
        // leave the bearer with none.
        if db::sessions::lock_live(&mut tx, bearer.user_id, bearer.session_id, now)
            .await?
            .is_none()
        {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        }
        // Signing out everywhere else is what an owner does who suspects
        // someone else is in: links that someone may have asked for die too.
        db::users::rotate_security_stamp(&mut tx, bearer.user_id).await?;
        let ended = db::sessions::revoke_all_for_user(
            &mut *tx,
            bearer.user_id,
            Some(bearer.session_id),
            EndReason::RevokedByOwner,
            now,
        )
        .await?;
        tx.commit().await?;
        if ended > 0 {
            self.cache.evict_user(bearer.user_id);
        }
        tracing::info!(ended, "other sessions ended by their owner");
        Ok(ended)
    }
}
