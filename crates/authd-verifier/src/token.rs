//! The local half of verification: an access token's header, signature and
//! claims, judged by `authd-token-rules` exactly as authd judges them, and a
//! bounded memory of tokens that passed.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use authd_token_rules::{Invalid, Leeway, PinnedKey, Refusal, Rules, ServiceAccess, TokenHeader, UserAccess};
use sha2::{Digest, Sha256};

use crate::claims::{Caller, Claims, ServiceClaims};
use crate::error::VerifyError;

/// Verified tokens remembered at most (a few hundred bytes each).
const MAX_REMEMBERED: usize = 50_000;

/// The rules of the two kinds of access token a service may be called
/// with: a user's and a service's own. Both are `at+jwt`; their claims
/// exclude each other (`authd-token-rules`), so a token is one or the
/// other, never both.
pub(crate) struct AccessRules {
    pub(crate) users: Rules<UserAccess>,
    pub(crate) services: Rules<ServiceAccess>,
}

impl AccessRules {
    /// The leeway both kinds are judged with.
    pub(crate) fn leeway(&self) -> Leeway {
        self.users.leeway()
    }
}

/// The header of an access token: `typ` must say so, and a `kid` must name
/// the key.
pub(crate) fn read_header(rules: &AccessRules, token: &str) -> Result<TokenHeader, VerifyError> {
    rules.users.read_header(token).map_err(|_| VerifyError::Invalid)
}

/// Signature and claims of `token` with `key`, at `now` (seconds since the
/// epoch): a user's token, or failing that by its claims, a service's.
pub(crate) fn check_with_key(
    rules: &AccessRules,
    token: &str,
    header: &TokenHeader,
    key: &PinnedKey,
    now: i64,
) -> Result<Caller, VerifyError> {
    match rules.users.check(token, header, key, now) {
        Ok(claims) => Ok(Caller::User(Claims::from_token(claims))),
        // Only the claims can make a good signature a service's token; a
        // refusal for anything else would be the same for either kind.
        Err(Refusal::Invalid(Invalid::Claims | Invalid::Shape)) => {
            let header = rules
                .services
                .read_header(token)
                .map_err(|_| VerifyError::Invalid)?;
            match rules.services.check(token, &header, key, now) {
                Ok(claims) => Ok(Caller::Service(ServiceClaims::from_token(claims))),
                Err(refusal) => Err(refused(refusal, Kind::Service)),
            }
        }
        Err(refusal) => Err(refused(refusal, Kind::User)),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    User,
    Service,
}

fn refused(refusal: Refusal, kind: Kind) -> VerifyError {
    match refusal {
        Refusal::Expired => VerifyError::Expired,
        Refusal::Invalid(Invalid::Lifetime) => {
            warn_lifetime_once(kind);
            VerifyError::Invalid
        }
        Refusal::Invalid(_) => VerifyError::Invalid,
    }
}

/// Expired once `exp` lies more than the leeway in the past.
pub(crate) fn is_expired(exp: i64, now: i64, leeway: Leeway) -> bool {
    leeway.expired(exp, now)
}

/// Tokens longer-lived than configured mean a misconfiguration (authd's
/// AUTHD_ACCESS_TOKEN_TTL or AUTHD_SERVICE_TOKEN_TTL above the verifier's
/// limit): say so once per kind, loudly, instead of once per request.
fn warn_lifetime_once(kind: Kind) {
    static USERS: AtomicBool = AtomicBool::new(false);
    static SERVICES: AtomicBool = AtomicBool::new(false);
    match kind {
        Kind::User if !USERS.swap(true, Ordering::Relaxed) => tracing::warn!(
            "refusing access tokens that live longer than max_token_lifetime; \
             raise it to authd's AUTHD_ACCESS_TOKEN_TTL"
        ),
        Kind::Service if !SERVICES.swap(true, Ordering::Relaxed) => tracing::warn!(
            "refusing service tokens that live longer than max_service_token_lifetime; \
             raise it to authd's AUTHD_SERVICE_TOKEN_TTL"
        ),
        _ => {}
    }
}

/// The digest a verified token is remembered by.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// A verified token as remembered.
#[derive(Clone)]
pub(crate) struct Remembered {
    pub(crate) caller: Caller,
    /// The coverage (see `stream_health`) during which IntrospectToken
    /// said the token was active: from then on the stream reports anything
    /// that ends it, so it need not be asked again while that coverage
    /// lasts.
    pub(crate) introspected_for: Option<u64>,
}

/// Tokens whose signature and claims checked out, by SHA-256 of the whole
/// token. A client sends the same token on every call for minutes, and the
/// signature check is most of the verifier's CPU; what a token says cannot
/// change, only whether it expired (checked on every hit) or was revoked
/// (never remembered here). Emptied whenever the key set changes, so a key
/// authd stops publishing stops verifying.
#[derive(Default)]
pub(crate) struct VerifiedTokens {
    entries: RwLock<HashMap<TokenDigest, Remembered>>,
}

impl VerifiedTokens {
    pub(crate) fn get(&self, digest: &TokenDigest) -> Option<Remembered> {
        self.entries.read().ok()?.get(digest).cloned()
    }

    pub(crate) fn insert(&self, digest: TokenDigest, caller: Caller, now: i64, leeway: Leeway) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= MAX_REMEMBERED {
            // Expired tokens first, then an arbitrary sixteenth: forgetting
            // everything at once would send every caller back to signature
            // checks together.
            entries.retain(|_, r| !is_expired(r.caller.exp_secs(), now, leeway));
            if entries.len() >= MAX_REMEMBERED {
                let victims: Vec<TokenDigest> = entries.keys().take(MAX_REMEMBERED / 16).copied().collect();
                for victim in victims {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(
            digest,
            Remembered {
                caller,
                introspected_for: None,
            },
        );
    }

    pub(crate) fn mark_introspected(&self, digest: &TokenDigest, coverage: u64) {
        if let Ok(mut entries) = self.entries.write()
            && let Some(entry) = entries.get_mut(digest)
        {
            entry.introspected_for = Some(coverage);
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.read().map_or(0, |e| e.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::claims::test_claims;
    use crate::jwks::KeySet;
    use crate::test_keys::{TestKey, claims_json, service_claims_json};

    fn rules() -> AccessRules {
        let audiences = ["svc", "svc-admin"];
        AccessRules {
            users: Rules::for_audiences("https://authd.test", &audiences, Leeway::DEFAULT)
                .with_max_lifetime(Duration::from_secs(900)),
            services: Rules::for_audiences("https://authd.test", &audiences, Leeway::DEFAULT)
                .with_max_lifetime(Duration::from_secs(300)),
        }
    }

    fn verify_caller(set: &KeySet, token: &str, now: i64) -> Result<Caller, VerifyError> {
        let rules = rules();
        let header = read_header(&rules, token)?;
        let key = set.get(&header.kid).ok_or(VerifyError::Invalid)?;
        check_with_key(&rules, token, &header, &key, now)
    }

    fn verify(set: &KeySet, token: &str, now: i64) -> Result<Claims, VerifyError> {
        match verify_caller(set, token, now)? {
            Caller::User(claims) => Ok(claims),
            Caller::Service(_) => panic!("a service's token"),
        }
    }

    const NOW: i64 = 1_900_000_000;

    #[test]
    fn a_token_of_the_issuer_verifies_and_says_who_and_how() {
        for key in [TestKey::ed25519(), TestKey::es256()] {
            let set = KeySet::from_jwks(&[key.jwk()]);
            let token = key.sign(&claims_json(NOW, 900));
            let claims = verify(&set, &token, NOW).expect("valid");
            assert_eq!(claims.user_id(), "user-1");
            assert_eq!(claims.session_id(), "session-1");
            assert!(claims.has_role("admin"));
            assert_eq!(claims.exp_secs(), NOW + 900);
            assert_eq!(claims.amr(), ["pwd"], "a token from before amr");
            assert_eq!(claims.acr(), "aal1");
            assert_eq!(claims.auth_time_secs(), NOW, "proven when issued");
            assert!(!claims.mfa_enrollment_required());
        }
        let key = TestKey::ed25519();
        let set = KeySet::from_jwks(&[key.jwk()]);
        let mut stepped_up = claims_json(NOW, 900);
        stepped_up["amr"] = serde_json::json!(["mfa", "otp", "pwd"]);
        stepped_up["acr"] = "aal2".into();
        stepped_up["auth_time"] = (NOW - 60).into();
        stepped_up["mfa_enrollment_required"] = true.into();
        let claims = verify(&set, &key.sign(&stepped_up), NOW).expect("valid");
        assert!(claims.has_amr("otp") && !claims.has_amr("hwk"));
        assert_eq!((claims.acr(), claims.auth_time_secs()), ("aal2", NOW - 60));
        assert!(claims.mfa_enrollment_required());
    }

    #[test]
    fn what_the_shared_rules_refuse_the_verifier_refuses() {
        let key = TestKey::ed25519();
        let set = KeySet::from_jwks(&[key.jwk()]);
        let id_token = key.sign_with_typ(&claims_json(NOW, 900), Some("JWT"));
        assert_eq!(verify(&set, &id_token, NOW).err(), Some(VerifyError::Invalid));
        let set_typ = key.sign_with_typ(&claims_json(NOW, 900), Some("secevent+jwt"));
        assert_eq!(verify(&set, &set_typ, NOW).err(), Some(VerifyError::Invalid));
        let token = key.sign(&claims_json(NOW, 900));
        assert_eq!(verify(&set, &token, NOW + 906).err(), Some(VerifyError::Expired));
        let long_lived = key.sign(&claims_json(NOW, 3600));
        assert_eq!(
            verify(&set, &long_lived, NOW).err(),
            Some(VerifyError::Invalid),
            "longer than max_token_lifetime"
        );
        let es = TestKey::es256();
        let confused = es.sign_as(&claims_json(NOW, 900), &key.kid);
        assert_eq!(verify(&set, &confused, NOW).err(), Some(VerifyError::Invalid));
        assert_eq!(
            verify(&set, &"a".repeat(5000), NOW).err(),
            Some(VerifyError::Invalid)
        );
    }

    #[test]
    fn an_exchanged_token_names_its_actors_the_current_one_first() {
        let key = TestKey::ed25519();
        let set = KeySet::from_jwks(&[key.jwk()]);
        let login = verify(&set, &key.sign(&claims_json(NOW, 900)), NOW).expect("valid");
        assert_eq!(
            (login.actor(), login.client_id()),
            (None, None),
            "the user called"
        );
        assert!(login.actors().is_empty());
        assert_eq!(login.audience(), "svc");

        let mut twice = claims_json(NOW, 600);
        twice["aud"] = "svc-admin".into();
        twice["client_id"] = "billing".into();
        twice["act"] = serde_json::json!({"sub": "svc:billing", "act": {"sub": "svc:orders"}});
        twice["amr"] = serde_json::json!(["pwd"]);
        let exchanged = verify(&set, &key.sign(&twice), NOW).expect("valid");
        assert_eq!(exchanged.actors(), ["svc:billing", "svc:orders"]);
        assert_eq!(exchanged.actor(), Some("svc:billing"));
        assert_eq!(exchanged.client_id(), Some("billing"));
        assert_eq!(exchanged.audience(), "svc-admin");
        assert_eq!(
            (exchanged.user_id(), exchanged.session_id()),
            ("user-1", "session-1"),
            "still the user's token, of the user's session"
        );

        let mut not_a_service = twice.clone();
        not_a_service["act"] = serde_json::json!({"sub": "svc:billing", "act": {"sub": "user-2"}});
        assert_eq!(
            verify_caller(&set, &key.sign(&not_a_service), NOW).err(),
            Some(VerifyError::Invalid),
            "only services act for users"
        );
    }

    #[test]
    fn a_service_token_verifies_as_a_service_with_its_scopes_and_never_as_a_user() {
        let key = TestKey::ed25519();
        let set = KeySet::from_jwks(&[key.jwk()]);
        let token = key.sign(&service_claims_json(
            NOW,
            300,
            "reports",
            "invoices.read tokens.exchange",
        ));
        let Caller::Service(service) = verify_caller(&set, &token, NOW).expect("valid") else {
            panic!("read as a user's token");
        };
        assert_eq!(service.client_id(), "reports");
        assert_eq!(service.scopes(), ["invoices.read", "tokens.exchange"]);
        assert!(service.has_scope("invoices.read") && !service.has_scope("invoices"));
        assert_eq!((service.audience(), service.key_id()), ("svc", "key-1"));
        assert_eq!(service.token_id(), "service-token-1");

        assert_eq!(
            verify_caller(&set, &token, NOW + 306).err(),
            Some(VerifyError::Expired)
        );
        let long_lived = key.sign(&service_claims_json(NOW, 900, "reports", ""));
        assert_eq!(
            verify_caller(&set, &long_lived, NOW).err(),
            Some(VerifyError::Invalid),
            "longer than max_service_token_lifetime, though not than a user's"
        );
        // The shapes exclude each other: a service name with a session, a
        // user with no session, a sub that does not match client_id.
        let mut with_sid = service_claims_json(NOW, 300, "reports", "");
        with_sid["sid"] = "session-1".into();
        let mut user_without_sid = claims_json(NOW, 300);
        user_without_sid.as_object_mut().expect("an object").remove("sid");
        user_without_sid["client_id"] = "user-1".into();
        let mut mismatched = service_claims_json(NOW, 300, "reports", "");
        mismatched["client_id"] = "billing".into();
        let mut acting = service_claims_json(NOW, 300, "reports", "");
        acting["act"] = serde_json::json!({"sub": "svc:orders"});
        for (what, claims) in [
            ("a service token with a sid", with_sid),
            ("a user token without a sid", user_without_sid),
            ("sub and client_id differ", mismatched),
            ("a service token with act", acting),
        ] {
            assert_eq!(
                verify_caller(&set, &key.sign(&claims), NOW).err(),
                Some(VerifyError::Invalid),
                "{what}"
            );
        }
    }

    #[test]
    fn remembered_tokens_are_bounded() {
        let remembered = VerifiedTokens::default();
        let claims = Caller::User(test_claims("u", "s", NOW - 840, &["pwd"], NOW - 840));
        for i in 0..(MAX_REMEMBERED + 10) {
            remembered.insert(digest(&i.to_string()), claims.clone(), NOW, Leeway::DEFAULT);
        }
        let len = remembered.len();
        assert!(len <= MAX_REMEMBERED, "{len}");
        assert!(
            len > MAX_REMEMBERED * 9 / 10,
            "only a sixteenth is forgotten: {len}"
        );
        assert!(
            remembered
                .get(&digest(&(MAX_REMEMBERED + 9).to_string()))
                .is_some()
        );
        let last = digest(&(MAX_REMEMBERED + 9).to_string());
        remembered.mark_introspected(&last, 7);
        assert_eq!(remembered.get(&last).and_then(|r| r.introspected_for), Some(7));
        remembered.clear();
        assert_eq!(remembered.len(), 0);
    }
}
