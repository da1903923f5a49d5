//! What a route asks of a valid token: whose token it is (a user's, a
//! service's own), which audience it is for, and for a user's, how its
//! holder proved who they are and how recently. A token of another kind or
//! audience is invalid here (TOKEN_INVALID); a user's token can be valid
//! and still not enough for a route: it is then refused with
//! FAILED_PRECONDITION, which tells the client to prove more (authd's
//! StepUp) rather than to log in again.

use std::time::Duration;

use crate::claims::{Caller, Claims, ServiceClaims};
use crate::error::VerifyError;

/// An authentication assurance level (`acr`, NIST SP 800-63B names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Acr {
    /// One factor (a password).
    Aal1,
    /// Two factors, or a user-verified passkey.
    Aal2,
}

impl Acr {
    /// The claim's value: `aal1`, `aal2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Acr::Aal1 => "aal1",
            Acr::Aal2 => "aal2",
        }
    }

    /// The level a claim names; `None` for one this version does not know,
    /// which meets no requirement.
    pub fn parse(acr: &str) -> Option<Self> {
        match acr {
            "aal1" => Some(Acr::Aal1),
            "aal2" => Some(Acr::Aal2),
            _ => None,
        }
    }
}

/// `amr` values that are a second factor, or say two were proven.
const SECOND_FACTOR_METHODS: [&str; 4] = ["otp", "hwk", "swk", "mfa"];

/// Which kinds of token a policy admits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Admits {
    #[default]
    Users,
    Services,
    UsersAndServices,
}

impl Admits {
    fn admits(self, caller: &Caller) -> bool {
        matches!(
            (self, caller),
            (Admits::Users | Admits::UsersAndServices, Caller::User(_))
                | (Admits::Services | Admits::UsersAndServices, Caller::Service(_))
        )
    }
}

/// What a route requires of a verified token, beyond its validity.
///
/// [`Policy::default`] (= [`Policy::new`]) admits users' tokens (from a
/// login, or exchanged by a service calling for the user) for the
/// verifier's audience, except one whose account must first enrol a second
/// factor (`mfa_enrollment_required`, authd's `AUTHD_REQUIRE_MFA`): such a
/// session may only enrol at authd. [`Policy::services`] admits services'
/// own tokens instead, [`Policy::allow_services`] both.
///
/// ```ignore
/// // aal2, proven within the last 10 minutes:
/// let payments = Policy::new().require_acr(Acr::Aal2).max_age(Duration::from_secs(600));
/// // a one-time code among the methods, at any age:
/// let codes = Policy::new().require_amr("otp");
/// // users' tokens minted for billing-admin (not billing):
/// let admin = Policy::new().require_audience("billing-admin");
/// // services' own tokens with the scope invoices.write:
/// let internal = Policy::services().require_scope("invoices.write");
/// ```
///
/// Refusals: UNAUTHENTICATED `TOKEN_INVALID` for a token of a kind the
/// policy does not admit or for another audience (as for any invalid
/// token); PERMISSION_DENIED `MISSING_SCOPE` for a service token without a
/// required scope; FAILED_PRECONDITION with `ErrorInfo` reason
/// `MFA_ENROLLMENT_REQUIRED`, or `REAUTHENTICATION_REQUIRED` (metadata
/// `max_age`, in seconds, when the policy has one) when the level, a
/// method or the age is not met, or when the policy needs a second factor
/// and the account's factors changed after the token's `auth_time` (authd's
/// FACTORS_CHANGED on the revocation stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    admits: Admits,
    audience: Option<String>,
    scopes: Vec<String>,
    acr: Option<Acr>,
    amr: Vec<String>,
    max_age: Option<Duration>,
    allow_mfa_enrollment_pending: bool,
}

impl Policy {
    /// The default policy (see [`Policy`]); add requirements with the
    /// methods below.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits services' own tokens (client credentials) and no user's:
    /// for calls a service makes in its own name. Its requirements are
    /// [`Policy::require_scope`] and [`Policy::require_audience`].
    pub fn services() -> Self {
        Self {
            admits: Admits::Services,
            ..Self::default()
        }
    }

    /// Admits services' own tokens as well as users'. The level, methods,
    /// age and enrolment requirements apply to users' tokens, the scopes to
    /// services'; the layer puts a [`Caller`] into the request's extensions
    /// to tell them apart.
    pub fn allow_services(mut self) -> Self {
        if self.admits == Admits::Users {
            self.admits = Admits::UsersAndServices;
        }
        self
    }

    /// The token's `aud` must be `audience`, instead of the audience the
    /// verifier was configured with. The verifier must accept it
    /// ([`VerifierConfig::with_additional_audience`](crate::VerifierConfig::with_additional_audience)),
    /// or the route refuses every token. A token for another audience is
    /// refused like any invalid token (TOKEN_INVALID).
    pub fn require_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// A service's own token must hold `scope`. Repeatable: all are
    /// required. Users' tokens carry roles, not scopes: this does not
    /// concern them (see [`Claims::has_role`]).
    pub fn require_scope(mut self, scope: impl Into<String>) -> Self {
        let scope = scope.into();
        if !self.scopes.contains(&scope) {
            self.scopes.push(scope);
        }
        self
    }

    /// The token's `acr` must be at least `acr`.
    pub fn require_acr(mut self, acr: Acr) -> Self {
        self.acr = Some(acr);
        self
    }

    /// `method` must be among the token's `amr` (RFC 8176: `pwd`, `otp`,
    /// `hwk`, `swk`, `user`, `mfa`). Repeatable: all are required.
    pub fn require_amr(mut self, method: impl Into<String>) -> Self {
        let method = method.into();
        if !self.amr.contains(&method) {
            self.amr.push(method);
        }
        self
    }

    /// The token's `auth_time` (login or last step-up) must lie at most
    /// `max_age` in the past.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Accept tokens of accounts that must still enrol a second factor
    /// (for a route that helps them do so).
    pub fn allow_mfa_enrollment_pending(mut self) -> Self {
        self.allow_mfa_enrollment_pending = true;
        self
    }

    pub(crate) fn admits(&self) -> Admits {
        self.admits
    }

    /// The audience this policy names, if any.
    pub(crate) fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// Whether `caller` is a kind `admits` lets in, for the route's
    /// audience (`default_audience` unless the policy names one).
    pub(crate) fn admit(
        &self,
        caller: &Caller,
        admits: Admits,
        default_audience: &str,
    ) -> Result<(), VerifyError> {
        let audience = self.audience.as_deref().unwrap_or(default_audience);
        if admits.admits(caller) && caller.audience() == audience {
            Ok(())
        } else {
            Err(VerifyError::Invalid)
        }
    }

    /// Judges a valid service token.
    pub(crate) fn judge_service(&self, claims: &ServiceClaims) -> Result<(), VerifyError> {
        if self.scopes.iter().all(|scope| claims.has_scope(scope)) {
            Ok(())
        } else {
            Err(VerifyError::MissingScope)
        }
    }

    /// Whether the policy relies on a second factor, so a change of the
    /// account's factors after the proof voids it.
    pub(crate) fn needs_second_factor(&self) -> bool {
        self.acr.is_some_and(|acr| acr >= Acr::Aal2)
            || self
                .amr
                .iter()
                .any(|m| SECOND_FACTOR_METHODS.contains(&m.as_str()))
    }

    /// Judges a valid user's token at `now` (seconds since the epoch).
    /// `factors_changed_at` is when the account's factors last changed, as
    /// far as the verifier knows; a proof within `leeway` of it counts as
    /// after it (the proof that used a recovery code is itself such a
    /// change, and the two times come from different clocks).
    pub(crate) fn judge(
        &self,
        claims: &Claims,
        now: i64,
        factors_changed_at: Option<i64>,
        leeway: i64,
    ) -> Result<(), VerifyError> {
        if claims.mfa_enrollment_required() && !self.allow_mfa_enrollment_pending {
            return Err(VerifyError::MfaEnrollmentRequired);
        }
        let again = VerifyError::ReauthenticationRequired {
            max_age: self.max_age,
        };
        if let Some(required) = self.acr
            && Acr::parse(claims.acr()).is_none_or(|level| level < required)
        {
            return Err(again);
        }
        if !self.amr.iter().all(|m| claims.has_amr(m)) {
            return Err(again);
        }
        let proven_at = claims.auth_time_secs();
        if let Some(max_age) = self.max_age {
            let age = now.saturating_sub(proven_at);
            if age > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
                return Err(again);
            }
        }
        if self.needs_second_factor()
            && factors_changed_at.is_some_and(|at| proven_at.saturating_add(leeway) < at)
        {
            return Err(again);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::test_claims;

    const T: i64 = 1_900_000_000;
    const MFA: &[&str] = &["mfa", "otp", "pwd"];

    fn reauth(max_age: Option<u64>) -> Result<(), VerifyError> {
        Err(VerifyError::ReauthenticationRequired {
            max_age: max_age.map(Duration::from_secs),
        })
    }

    #[test]
    fn the_level_and_methods_must_be_met() {
        let aal2 = Policy::new().require_acr(Acr::Aal2);
        let password = test_claims("u", "s", T, &["pwd"], T);
        let both = test_claims("u", "s", T, MFA, T);
        assert_eq!(aal2.judge(&password, T, None, 5), reauth(None));
        assert_eq!(aal2.judge(&both, T, None, 5), Ok(()));
        assert_eq!(
            Policy::new().require_acr(Acr::Aal1).judge(&password, T, None, 5),
            Ok(())
        );
        let otp = Policy::new().require_amr("otp");
        assert_eq!(otp.judge(&password, T, None, 5), reauth(None));
        assert_eq!(otp.judge(&both, T, None, 5), Ok(()));
        let key = Policy::new().require_amr("otp").require_amr("hwk");
        assert_eq!(
            key.judge(&both, T, None, 5),
            reauth(None),
            "every method required"
        );
        assert_eq!(Policy::new().judge(&password, T, None, 5), Ok(()));
    }

    #[test]
    fn the_proof_must_be_recent_enough() {
        let fresh = Policy::new()
            .require_acr(Acr::Aal2)
            .max_age(Duration::from_secs(600));
        let proven = test_claims("u", "s", T + 500, MFA, T);
        assert_eq!(fresh.judge(&proven, T + 600, None, 5), Ok(()), "600 s old");
        assert_eq!(fresh.judge(&proven, T + 601, None, 5), reauth(Some(600)));
        let any_level = Policy::new().max_age(Duration::from_secs(60));
        let password = test_claims("u", "s", T, &["pwd"], T);
        assert_eq!(any_level.judge(&password, T + 61, None, 5), reauth(Some(60)));
    }

    #[test]
    fn a_token_pending_mfa_enrollment_passes_only_where_allowed() {
        let mut pending = crate::test_keys::claims_json(T, 900);
        pending["mfa_enrollment_required"] = true.into();
        let claims: authd_token_rules::UserAccess = serde_json::from_value(pending).expect("claims");
        let claims = Claims::from_token(claims);
        assert_eq!(
            Policy::new().judge(&claims, T, None, 5),
            Err(VerifyError::MfaEnrollmentRequired)
        );
        let enrol = Policy::new().allow_mfa_enrollment_pending();
        assert_eq!(enrol.judge(&claims, T, None, 5), Ok(()));
    }

    #[test]
    fn a_factor_change_after_the_proof_voids_it_for_second_factor_policies() {
        let proven = test_claims("u", "s", T + 100, MFA, T);
        for policy in [
            Policy::new().require_acr(Acr::Aal2),
            Policy::new().require_amr("otp"),
            Policy::new().require_amr("mfa"),
        ] {
            assert_eq!(
                policy.judge(&proven, T + 200, Some(T + 6), 5),
                reauth(None),
                "{policy:?}"
            );
            assert_eq!(
                policy.judge(&proven, T + 200, Some(T + 5), 5),
                Ok(()),
                "within the leeway: the change may be this proof itself"
            );
            assert_eq!(
                policy.judge(&proven, T + 200, Some(T - 50), 5),
                Ok(()),
                "proven after"
            );
        }
        let password_only = Policy::new().require_amr("pwd");
        assert_eq!(password_only.judge(&proven, T + 200, Some(T + 100), 5), Ok(()));
        assert_eq!(Policy::new().judge(&proven, T + 200, Some(T + 100), 5), Ok(()));
    }

    #[test]
    fn a_policy_admits_its_kinds_for_its_audience_only() {
        let user = Caller::User(test_claims("u", "s", T, &["pwd"], T));
        let mut service_token = crate::test_keys::service_claims_json(T, 300, "reports", "a b");
        service_token["aud"] = "svc".into();
        let service = Caller::Service(ServiceClaims::from_token(
            serde_json::from_value(service_token).expect("claims"),
        ));
        let cases = [
            (Policy::new(), true, false),
            (Policy::services(), false, true),
            (Policy::new().allow_services(), true, true),
            (Policy::services().allow_services(), false, true),
        ];
        for (policy, users, services) in cases {
            let admitted = |caller: &Caller| policy.admit(caller, policy.admits(), "svc").is_ok();
            assert_eq!(
                (admitted(&user), admitted(&service)),
                (users, services),
                "{policy:?}"
            );
            assert_eq!(
                policy.admit(&user, policy.admits(), "other"),
                Err(VerifyError::Invalid),
                "another default audience"
            );
        }
        // The route's audience replaces the verifier's.
        let own = Policy::new().require_audience("svc");
        assert_eq!(own.admit(&user, own.admits(), "other"), Ok(()));
        let elsewhere = Policy::new().allow_services().require_audience("other");
        assert_eq!(
            elsewhere.admit(&user, elsewhere.admits(), "svc"),
            Err(VerifyError::Invalid)
        );
        assert_eq!(
            elsewhere.admit(&service, elsewhere.admits(), "svc"),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn an_unknown_level_meets_no_requirement() {
        assert_eq!(Acr::parse("aal2"), Some(Acr::Aal2));
        assert_eq!(Acr::parse("aal9"), None);
        assert_eq!(Acr::Aal2.as_str(), "aal2");
        assert!(Acr::Aal1 < Acr::Aal2);
    }
}
