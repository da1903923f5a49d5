//! The local half of verification: an access token's header, signature and
//! claims, judged by `authd-token-rules` exactly as authd judges them, and a
//! bounded memory of tokens that passed.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use authd_token_rules::{Invalid, Leeway, PinnedKey, Refusal, Rules, TokenHeader, UserAccess};
use sha2::{Digest, Sha256};

use crate::claims::Claims;
use crate::error::VerifyError;

/// Verified tokens remembered at most (a few hundred bytes each).
const MAX_REMEMBERED: usize = 50_000;

/// The header of an access token: `typ` must say so, and a `kid` must name
/// the key.
pub(crate) fn read_header(rules: &Rules<UserAccess>, token: &str) -> Result<TokenHeader, VerifyError> {
    rules.read_header(token).map_err(|_| VerifyError::Invalid)
}

/// Signature and claims of `token` with `key`, at `now` (seconds since the
/// epoch).
pub(crate) fn check_with_key(
    rules: &Rules<UserAccess>,
    token: &str,
    header: &TokenHeader,
    key: &PinnedKey,
    now: i64,
) -> Result<Claims, VerifyError> {
    match rules.check(token, header, key, now) {
        Ok(claims) => Ok(Claims::from_token(claims)),
        Err(Refusal::Expired) => Err(VerifyError::Expired),
        Err(Refusal::Invalid(Invalid::Lifetime)) => {
            warn_lifetime_once();
            Err(VerifyError::Invalid)
        }
        Err(Refusal::Invalid(_)) => Err(VerifyError::Invalid),
    }
}

/// Expired once `exp` lies more than the leeway in the past.
pub(crate) fn is_expired(exp: i64, now: i64, leeway: Leeway) -> bool {
    leeway.expired(exp, now)
}

/// Tokens longer-lived than configured mean a misconfiguration (authd's
/// AUTHD_ACCESS_TOKEN_TTL above the verifier's max_token_lifetime): say so
/// once, loudly, instead of once per request.
fn warn_lifetime_once() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "refusing access tokens that live longer than max_token_lifetime; \
             raise it to authd's AUTHD_ACCESS_TOKEN_TTL"
        );
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
    pub(crate) claims: Claims,
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

    pub(crate) fn insert(&self, digest: TokenDigest, claims: Claims, now: i64, leeway: Leeway) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= MAX_REMEMBERED {
            // Expired tokens first, then an arbitrary sixteenth: forgetting
            // everything at once would send every caller back to signature
            // checks together.
            entries.retain(|_, r| !is_expired(r.claims.exp_secs(), now, leeway));
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
                claims,
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
    use crate::test_keys::{TestKey, claims_json};

    fn rules() -> Rules<UserAccess> {
        Rules::new("https://authd.test", "svc", Leeway::DEFAULT).with_max_lifetime(Duration::from_secs(900))
    }

    fn verify(set: &KeySet, token: &str, now: i64) -> Result<Claims, VerifyError> {
        let rules = rules();
        let header = read_header(&rules, token)?;
        let key = set.get(&header.kid).ok_or(VerifyError::Invalid)?;
        check_with_key(&rules, token, &header, &key, now)
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
    fn remembered_tokens_are_bounded() {
        let remembered = VerifiedTokens::default();
        let claims = test_claims("u", "s", NOW - 840, &["pwd"], NOW - 840);
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
