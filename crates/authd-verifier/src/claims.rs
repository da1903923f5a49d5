//! What a verified access token says, as handlers see it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authd_token_rules::UserAccess;

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
    amr: Vec<String>,
    acr: String,
    auth_time: i64,
    mfa_enrollment_required: bool,
}

impl Claims {
    /// What a verified token says, with the assurance of a token signed
    /// before assurance was recorded filled in as authd reads it: a
    /// password, `aal1`, proven when the token was issued.
    pub(crate) fn from_token(token: UserAccess) -> Self {
        let amr = token.methods().into_iter().map(str::to_owned).collect();
        let acr = token.level().to_owned();
        let auth_time = token.proven_at();
        Self(Arc::new(ClaimsData {
            amr,
            acr,
            auth_time,
            user_id: token.sub,
            session_id: token.sid,
            roles: token.roles,
            issued_at: token.iat,
            expires_at: token.exp,
            token_id: token.jti,
            mfa_enrollment_required: token.mfa_enrollment_required,
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

    /// How the session's holder proved who they are (`amr`, RFC 8176:
    /// `pwd`, `otp`, `hwk`, `swk`, `user`, `mfa`).
    pub fn amr(&self) -> &[String] {
        &self.0.amr
    }

    /// Whether `method` is among [`Claims::amr`].
    pub fn has_amr(&self, method: &str) -> bool {
        self.0.amr.iter().any(|m| m == method)
    }

    /// The assurance level (`acr`): `aal1`, or `aal2` for two factors or a
    /// user-verified passkey.
    pub fn acr(&self) -> &str {
        &self.0.acr
    }

    /// When the session last proved who its holder is (`auth_time`):
    /// login, or a later step-up.
    pub fn auth_time(&self) -> SystemTime {
        unix_time(self.0.auth_time)
    }

    /// The account must enrol a second factor before anything else
    /// (authd's `AUTHD_REQUIRE_MFA`); routes refuse such a token unless
    /// their [`Policy`](crate::Policy) allows it.
    pub fn mfa_enrollment_required(&self) -> bool {
        self.0.mfa_enrollment_required
    }

    pub(crate) fn auth_time_secs(&self) -> i64 {
        self.0.auth_time
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

/// Claims of `user`'s `session`, issued at `iat`, proven by `amr` at
/// `auth_time` (`aal2` when `amr` has `mfa`).
#[cfg(test)]
pub(crate) fn test_claims(user: &str, session: &str, iat: i64, amr: &[&str], auth_time: i64) -> Claims {
    let acr = if amr.contains(&"mfa") { "aal2" } else { "aal1" };
    Claims::from_token(UserAccess {
        iss: "https://authd.test".into(),
        aud: "svc".into(),
        sub: user.into(),
        sid: session.into(),
        iat,
        nbf: iat,
        exp: iat + 900,
        jti: String::new(),
        roles: Vec::new(),
        amr: amr.iter().map(|m| (*m).to_owned()).collect(),
        acr: acr.into(),
        auth_time,
        mfa_enrollment_required: false,
        client_id: None,
        act: None,
    })
}
