//! What a [`Verifier`](crate::Verifier) is told: whose tokens to accept and
//! how much staleness of the revocation stream it may tolerate.

use std::fmt;
use std::time::Duration;

use crate::error::StartError;

/// authd's own limit on clock skew between issuer and verifier (RFC 8725
/// asks for a small one); a larger leeway is refused.
pub const MAX_LEEWAY: Duration = authd_token_rules::Leeway::MAX.as_duration();

/// What to do with a token while the verifier cannot vouch for its
/// revocation state: the stream has been silent for longer than
/// [`VerifierConfig::with_max_staleness`], it has not caught up yet (at start,
/// or after authd lost events it had not delivered), or the token is older
/// than what the stream covers (authd no longer had revocations from a
/// token lifetime ago, or sent one this version cannot read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStale {
    /// Refuse such a token with UNAVAILABLE. A client retries; nothing the
    /// stream has not vouched for is accepted.
    #[default]
    FailClosed,
    /// Ask authd with IntrospectToken: once per call while the stream is
    /// down or catching up, once per token for a token older than the
    /// coverage. The service key then needs the `tokens.introspect` scope as
    /// well as `revocations.watch`. If authd cannot answer either, the call
    /// is refused with UNAVAILABLE.
    Introspect,
}

/// Settings of a [`Verifier`](crate::Verifier). Start from
/// [`VerifierConfig::new`], which fills in the defaults, and change what
/// you need with the `with_…` methods.
#[derive(Clone)]
pub struct VerifierConfig {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) additional_audiences: Vec<String>,
    pub(crate) service_key: String,
    pub(crate) max_staleness: Duration,
    pub(crate) on_stale: OnStale,
    pub(crate) leeway: Duration,
    pub(crate) max_token_lifetime: Duration,
    pub(crate) max_service_token_lifetime: Duration,
    pub(crate) jwks_refetch_interval: Duration,
    pub(crate) jwks_refresh_interval: Duration,
    pub(crate) call_timeout: Duration,
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The service key is a credential: never in a log line.
        f.debug_struct("VerifierConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("additional_audiences", &self.additional_audiences)
            .field("service_key", &"<redacted>")
            .field("max_staleness", &self.max_staleness)
            .field("on_stale", &self.on_stale)
            .field("leeway", &self.leeway)
            .field("max_token_lifetime", &self.max_token_lifetime)
            .field("max_service_token_lifetime", &self.max_service_token_lifetime)
            .field("jwks_refetch_interval", &self.jwks_refetch_interval)
            .field("jwks_refresh_interval", &self.jwks_refresh_interval)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl VerifierConfig {
    /// Accept tokens whose `iss` is `issuer` and whose `aud` is `audience`
    /// (authd's `AUTHD_ISSUER`, and one of its `AUTHD_AUDIENCES`: its own,
    /// the first, for the tokens of users' logins, or this service's name
    /// for tokens exchanged or minted for it), and follow revocations with
    /// `service_key` (`sk_…`, scope `revocations.watch`). `audience` is
    /// every route's unless its [`Policy`](crate::Policy) names another of
    /// [`VerifierConfig::with_additional_audience`].
    ///
    /// Defaults: `max_staleness` 10 s, [`OnStale::FailClosed`], leeway 5 s
    /// (authd's), `max_token_lifetime` 15 min (authd's
    /// `AUTHD_ACCESS_TOKEN_TTL`), `max_service_token_lifetime` 5 min
    /// (authd's `AUTHD_SERVICE_TOKEN_TTL`), an unknown `kid` refetches the keys at
    /// most every 10 s, the keys are refreshed every 5 min, and calls to
    /// authd made on a request's behalf (GetJwks, IntrospectToken) give up
    /// after 2 s.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        service_key: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            additional_audiences: Vec::new(),
            service_key: service_key.into(),
            max_staleness: Duration::from_secs(10),
            on_stale: OnStale::FailClosed,
            leeway: Duration::from_secs(5),
            max_token_lifetime: Duration::from_secs(15 * 60),
            max_service_token_lifetime: Duration::from_secs(5 * 60),
            jwks_refetch_interval: Duration::from_secs(10),
            jwks_refresh_interval: Duration::from_secs(5 * 60),
            call_timeout: Duration::from_secs(2),
        }
    }

    /// Also accept tokens for `audience`, on the routes whose
    /// [`Policy::require_audience`](crate::Policy::require_audience) names
    /// it (a service that is `billing` on most routes and `billing-admin`
    /// on a few). Repeatable. A route without such a policy still accepts
    /// only the audience of [`VerifierConfig::new`].
    pub fn with_additional_audience(mut self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        if audience != self.audience && !self.additional_audiences.contains(&audience) {
            self.additional_audiences.push(audience);
        }
        self
    }

    /// Every audience a token may name here: that of
    /// [`VerifierConfig::new`] first, then the additional ones.
    pub(crate) fn audiences(&self) -> Vec<&str> {
        std::iter::once(self.audience.as_str())
            .chain(self.additional_audiences.iter().map(String::as_str))
            .collect()
    }

    /// How long the revocation stream may stay silent (no event, no
    /// heartbeat) before the verifier stops trusting what it knows and
    /// applies [`OnStale`]. It must exceed authd's heartbeat interval
    /// (`AUTHD_REVOCATION_HEARTBEAT`, 5 s by default), or a quiet stream
    /// would look dead between heartbeats. It is also the worst-case delay
    /// of a revocation while the stream is silently broken.
    pub fn with_max_staleness(mut self, max_staleness: Duration) -> Self {
        self.max_staleness = max_staleness;
        self
    }

    /// See [`OnStale`].
    pub fn with_on_stale(mut self, on_stale: OnStale) -> Self {
        self.on_stale = on_stale;
        self
    }

    /// Clock skew tolerated on `exp`, `nbf` and `iat`; at most
    /// [`MAX_LEEWAY`].
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The longest lifetime (`exp - iat`) of an access token authd issues:
    /// its `AUTHD_ACCESS_TOKEN_TTL`. Revocations are remembered for this
    /// long plus the leeway, which bounds the verifier's memory; a token
    /// claiming a longer lifetime is refused, since its revocation could
    /// have been forgotten before it expires.
    pub fn with_max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_token_lifetime = lifetime;
        self
    }

    /// The longest lifetime (`exp - iat`) of a service's own token: authd's
    /// `AUTHD_SERVICE_TOKEN_TTL`. Nothing but its expiry ends such a token
    /// at a verifier (it has no session for the revocation stream to end),
    /// so this bounds how long a service token stays good after its key
    /// is deleted; a token claiming a longer lifetime is refused.
    pub fn with_max_service_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_service_token_lifetime = lifetime;
        self
    }

    /// The least time between two key refetches caused by an unknown
    /// `kid`. The first one happens at once, so a rotated key is picked up
    /// by the first token that uses it; the interval only stops a stream of
    /// made-up `kid`s from turning into a stream of GetJwks calls.
    pub fn with_jwks_refetch_interval(mut self, interval: Duration) -> Self {
        self.jwks_refetch_interval = interval;
        self
    }

    /// How often the keys are fetched anyway, so a key authd no longer
    /// publishes stops verifying.
    pub fn with_jwks_refresh_interval(mut self, interval: Duration) -> Self {
        self.jwks_refresh_interval = interval;
        self
    }

    /// The bound on a call to authd made while a request waits (GetJwks
    /// for an unknown `kid`, IntrospectToken when stale).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long a revocation must be remembered: until every token it
    /// concerns has expired.
    pub(crate) fn revocation_retention(&self) -> Duration {
        self.max_token_lifetime + self.leeway
    }

    /// How far back a stream without a cursor starts: far enough that
    /// every revocation that can concern a token still accepted is
    /// delivered. A token is accepted up to `leeway` past its `exp`, so it
    /// was issued at most `max_token_lifetime + leeway` ago; what revokes
    /// it happened after it was issued. Its `iat` is an authd replica's
    /// clock, the event's time the database's and `since` this process's:
    /// another leeway for each of the two differences.
    pub(crate) fn coverage_lookback(&self) -> Duration {
        self.max_token_lifetime + self.leeway * 3
    }

    pub(crate) fn validate(&self) -> Result<(), StartError> {
        let problem = if self.issuer.is_empty() {
            "the issuer is empty"
        } else if self.audiences().iter().any(|a| a.is_empty()) {
            "an audience is empty"
        } else if self.service_key.is_empty() {
            "the service key is empty"
        } else if self.leeway > MAX_LEEWAY {
            "the leeway is longer than 30 s"
        } else if self.max_staleness.is_zero() {
            "max_staleness is zero"
        } else if self.max_token_lifetime.is_zero() {
            "max_token_lifetime is zero"
        } else if self.max_service_token_lifetime.is_zero() {
            "max_service_token_lifetime is zero"
        } else if self.call_timeout.is_zero() {
            "call_timeout is zero"
        } else if self.jwks_refresh_interval.is_zero() {
            "jwks_refresh_interval is zero"
        } else {
            return Ok(());
        };
        Err(StartError::Config(problem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_key_is_never_printed() {
        let config = VerifierConfig::new("https://authd", "svc", "sk_secret");
        assert!(config.validate().is_ok());
        assert_eq!(config.revocation_retention(), Duration::from_secs(15 * 60 + 5));
        assert_eq!(config.coverage_lookback(), Duration::from_secs(15 * 60 + 15));
        let printed = format!("{config:?}");
        assert!(!printed.contains("sk_secret"), "{printed}");
    }

    #[test]
    fn the_first_audience_is_the_default_and_additional_ones_are_listed_once() {
        let config = VerifierConfig::new("iss", "billing", "sk_x")
            .with_additional_audience("billing-admin")
            .with_additional_audience("billing")
            .with_additional_audience("billing-admin");
        assert_eq!(config.audiences(), ["billing", "billing-admin"]);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_leeway_over_thirty_seconds_and_empty_names_are_refused() {
        let base = VerifierConfig::new("iss", "aud", "sk_x");
        assert!(base.clone().with_leeway(MAX_LEEWAY).validate().is_ok());
        assert!(
            base.clone()
                .with_leeway(MAX_LEEWAY + Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(VerifierConfig::new("", "aud", "sk_x").validate().is_err());
        assert!(VerifierConfig::new("iss", "", "sk_x").validate().is_err());
        assert!(VerifierConfig::new("iss", "aud", "").validate().is_err());
        assert!(base.clone().with_additional_audience("").validate().is_err());
        assert!(
            base.clone()
                .with_max_service_token_lifetime(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(base.with_max_staleness(Duration::ZERO).validate().is_err());
    }
}
