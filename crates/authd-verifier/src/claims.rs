//! What a verified access token says, as handlers see it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The verified claims of an access token. The layer puts them into the
/// request's extensions: `request.extensions().get::<Claims>()`.
///
/// Cheap to clone (shared inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims(Arc<ClaimsData>);

#[derive(Debug, PartialEq, Eq)]
struct ClaimsData {
    user_id: String,
    session_id: String,
    roles: Vec<String>,
    issued_at: i64,
    expires_at: i64,
    token_id: String,
}

impl Claims {
    pub(crate) fn new(
        user_id: String,
        session_id: String,
        roles: Vec<String>,
        issued_at: i64,
        expires_at: i64,
        token_id: String,
    ) -> Self {
        Self(Arc::new(ClaimsData {
            user_id,
            session_id,
            roles,
            issued_at,
            expires_at,
            token_id,
        }))
    }

    /// The account (`sub`, a UUID).
    pub fn user_id(&self) -> &str {
        &self.0.user_id
    }

    /// The session the token belongs to (`sid`, a UUID).
    pub fn session_id(&self) -> &str {
        &self.0.session_id
    }

    /// The account's roles when the token was issued (`roles`).
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// Whether `role` is among [`Claims::roles`].
    pub fn has_role(&self, role: &str) -> bool {
        self.0.roles.iter().any(|r| r == role)
    }

    /// When the token was issued (`iat`).
    pub fn issued_at(&self) -> SystemTime {
        unix_time(self.0.issued_at)
    }

    /// When the token expires (`exp`).
    pub fn expires_at(&self) -> SystemTime {
        unix_time(self.0.expires_at)
    }

    /// The token's own id (`jti`); empty if it has none.
    pub fn token_id(&self) -> &str {
        &self.0.token_id
    }

    pub(crate) fn iat_secs(&self) -> i64 {
        self.0.issued_at
    }

    pub(crate) fn exp_secs(&self) -> i64 {
        self.0.expires_at
    }
}

/// Seconds since the epoch as a time; verification refuses negative ones,
/// so the clamp never changes a verified value.
fn unix_time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The current time in whole seconds since the epoch, the unit of JWT
/// times.
pub(crate) fn unix_now(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
