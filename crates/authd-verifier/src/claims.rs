//! What a verified access token says, as handlers see it: a user's token
//! ([`Claims`]) or a service's ([`ServiceClaims`]), two types that cannot
//! stand in for each other, and [`Caller`] for a route that admits both.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authd_token_rules::{ServiceAccess, UserAccess};

/// Who a verified token speaks for. The layer puts it into the request's
/// extensions, next to the [`Claims`] or the [`ServiceClaims`] it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user's token: from their login, or exchanged by a service calling
    /// on their behalf (see [`Claims::actors`]).
    User(Claims),
    /// A service account's own token (client credentials): no user, no
    /// session.
    Service(ServiceClaims),
}

impl Caller {
    /// The user's claims, if a user's token.
    pub fn user(&self) -> Option<&Claims> {
        match self {
            Caller::User(claims) => Some(claims),
            Caller::Service(_) => None,
        }
    }

    /// The service's claims, if a service's own token.
    pub fn service(&self) -> Option<&ServiceClaims> {
        match self {
            Caller::User(_) => None,
            Caller::Service(claims) => Some(claims),
        }
    }

    /// The token's `aud`.
    pub fn audience(&self) -> &str {
        match self {
            Caller::User(claims) => claims.audience(),
            Caller::Service(claims) => claims.audience(),
        }
    }

    pub(crate) fn exp_secs(&self) -> i64 {
        match self {
            Caller::User(claims) => claims.exp_secs(),
            Caller::Service(claims) => claims.0.expires_at,
        }
    }
}

/// The verified claims of a user's access token. The layer puts them into
/// the request's extensions: `request.extensions().get::<Claims>()`. A
/// service's own token never yields them (see [`ServiceClaims`]).
///
/// Cheap to clone (shared inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims(Arc<ClaimsData>);

#[derive(Debug, PartialEq, Eq)]
struct ClaimsData {
    audience: String,
    client_id: Option<String>,
    actors: Vec<String>,
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
        let actors = token
            .act
            .as_ref()
            .map(|act| act.chain().into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        Self(Arc::new(ClaimsData {
            amr,
            acr,
            auth_time,
            actors,
            audience: token.aud,
            client_id: token.client_id,
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

    /// The service the token was minted for (`aud`).
    pub fn audience(&self) -> &str {
        &self.0.audience
    }

    /// The services acting for the user (RFC 8693 `act`), the one calling
    /// now first, then the one that called it, and so on: each a `sub`,
    /// `svc:NAME`. Empty when the user called with the token of their own
    /// login; `["svc:orders"]` when the orders service exchanged the
    /// user's token to call this one on their behalf; `["svc:billing",
    /// "svc:orders"]` when billing exchanged that token again.
    pub fn actors(&self) -> &[String] {
        &self.0.actors
    }

    /// The service acting for the user now ([`Claims::actors`]' first),
    /// `None` when the user called themselves.
    pub fn actor(&self) -> Option<&str> {
        self.0.actors.first().map(String::as_str)
    }

    /// The service that exchanged the token (RFC 9068 `client_id`, the
    /// account's name), `None` on a token from the user's login.
    pub fn client_id(&self) -> Option<&str> {
        self.0.client_id.as_deref()
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

/// The verified claims of a service account's own access token (client
/// credentials: `sub` `svc:NAME`, `client_id`, `scope`, no `sid`). It
/// speaks for the service, never for a user, and has no session, so the
/// revocation stream cannot end it: it is valid until its `exp` (authd's
/// `AUTHD_SERVICE_TOKEN_TTL`, 5 minutes by default), even if the key that
/// obtained it is deleted meanwhile.
///
/// Cheap to clone (shared inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceClaims(Arc<ServiceData>);

#[derive(Debug, PartialEq, Eq)]
struct ServiceData {
    client_id: String,
    audience: String,
    scopes: Vec<String>,
    issued_at: i64,
    expires_at: i64,
    token_id: String,
    key_id: String,
}

impl ServiceClaims {
    pub(crate) fn from_token(token: ServiceAccess) -> Self {
        Self(Arc::new(ServiceData {
            scopes: token.scope.split_ascii_whitespace().map(str::to_owned).collect(),
            client_id: token.client_id,
            audience: token.aud,
            issued_at: token.iat,
            expires_at: token.exp,
            token_id: token.jti,
            key_id: token.key_id,
        }))
    }

    /// The service account's name (`client_id`; `sub` is `svc:` and it).
    pub fn client_id(&self) -> &str {
        &self.0.client_id
    }

    /// The service the token was minted for (`aud`).
    pub fn audience(&self) -> &str {
        &self.0.audience
    }

    /// The scopes the token grants (`scope`, space-separated in the token):
    /// the account's, or fewer if the service asked for fewer.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// Whether `scope` is among [`ServiceClaims::scopes`].
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| s == scope)
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

    /// The id of the service key that obtained the token (`key_id`); empty
    /// if it has none.
    pub fn key_id(&self) -> &str {
        &self.0.key_id
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
