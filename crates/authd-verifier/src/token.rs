//! The local half of verification: an access token's header, signature and
//! claims, judged by RFC 8725 and RFC 9068 as authd judges them, and a
//! bounded memory of tokens that passed.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::claims::Claims;
use crate::error::VerifyError;
use crate::jwks::PinnedKey;

/// RFC 9068's media type for access tokens, in its short form; the long
/// form (`application/at+jwt`) is accepted too.
pub(crate) const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// A bearer longer than this is not one of authd's; refused before parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;
/// Verified tokens remembered at most (a few hundred bytes each).
const MAX_REMEMBERED: usize = 50_000;

/// What the header says, read before a key is chosen. `jku`, `jwk`, `x5u`
/// and `x5c` are never read: keys come only from GetJwks.
pub(crate) struct TokenHeader {
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
}

/// The limits on a token's times, in seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeRules {
    pub(crate) leeway: i64,
    pub(crate) max_lifetime: i64,
}

#[derive(Deserialize)]
struct AccessTokenClaims {
    sub: String,
    sid: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// The header of an access token: `typ` must say so, and a `kid` must name
/// the key.
pub(crate) fn read_header(token: &str) -> Result<TokenHeader, VerifyError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::Invalid);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Invalid)?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(VerifyError::Invalid);
    }
    let kid = header.kid.filter(|k| !k.is_empty()).ok_or(VerifyError::Invalid)?;
    Ok(TokenHeader { kid, alg: header.alg })
}

/// Signature and claims of `token` with `key`, at `now` (seconds since the
/// epoch).
pub(crate) fn check_with_key(
    token: &str,
    header: &TokenHeader,
    key: &PinnedKey,
    now: i64,
    rules: TimeRules,
) -> Result<Claims, VerifyError> {
    // The key decides the algorithm; a header naming another one is an
    // attempt at algorithm confusion, never a negotiation.
    if header.alg != key.alg {
        return Err(VerifyError::Invalid);
    }
    let data = jsonwebtoken::decode::<AccessTokenClaims>(token, &key.decoding, &key.validation)
        .map_err(|_| VerifyError::Invalid)?;
    let c = data.claims;
    if c.iat < 0 || c.exp < c.iat || c.sub.is_empty() || c.sid.is_empty() {
        return Err(VerifyError::Invalid);
    }
    if is_expired(c.exp, now, rules.leeway) {
        return Err(VerifyError::Expired);
    }
    if c.nbf > now.saturating_add(rules.leeway) || c.iat > now.saturating_add(rules.leeway) {
        return Err(VerifyError::Invalid);
    }
    if c.exp - c.iat > rules.max_lifetime {
        warn_lifetime_once(c.exp - c.iat, rules.max_lifetime);
        return Err(VerifyError::Invalid);
    }
    Ok(Claims::new(c.sub, c.sid, c.roles, c.iat, c.exp, c.jti))
}

/// Expired once `exp` lies more than the leeway in the past.
pub(crate) fn is_expired(exp: i64, now: i64, leeway: i64) -> bool {
    exp < now.saturating_sub(leeway)
}

/// Tokens longer-lived than configured mean a misconfiguration (authd's
/// AUTHD_ACCESS_TOKEN_TTL above the verifier's max_token_lifetime): say so
/// once, loudly, instead of once per request.
fn warn_lifetime_once(lifetime: i64, max: i64) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            lifetime_secs = lifetime,
            max_token_lifetime_secs = max,
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

    pub(crate) fn insert(&self, digest: TokenDigest, claims: Claims, now: i64, leeway: i64) {
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
    use super::*;
    use crate::jwks::{Expectations, KeySet};
    use crate::test_keys::{TestKey, claims_json};

    const RULES: TimeRules = TimeRules {
        leeway: 5,
        max_lifetime: 900,
    };

    fn keys(key: &TestKey) -> KeySet {
        KeySet::from_jwks(
            &[key.jwk()],
            &Expectations {
                issuer: "https://authd.test",
                audience: "svc",
            },
        )
    }

    fn verify(set: &KeySet, token: &str, now: i64) -> Result<Claims, VerifyError> {
        let header = read_header(token)?;
        let key = set.get(&header.kid).ok_or(VerifyError::Invalid)?;
        check_with_key(token, &header, &key, now, RULES)
    }

    const NOW: i64 = 1_900_000_000;

    #[test]
    fn a_token_of_the_issuer_verifies_and_says_who() {
        for key in [TestKey::ed25519(), TestKey::es256()] {
            let set = keys(&key);
            let token = key.sign(&claims_json(NOW, 900));
            let claims = verify(&set, &token, NOW).expect("valid");
            assert_eq!(claims.user_id(), "user-1");
            assert_eq!(claims.session_id(), "session-1");
            assert!(claims.has_role("admin"));
            assert_eq!(claims.exp_secs(), NOW + 900);
        }
    }

    #[test]
    fn wrong_issuer_audience_typ_or_missing_claims_are_invalid() {
        let key = TestKey::ed25519();
        let set = keys(&key);
        let mut wrong_aud = claims_json(NOW, 900);
        wrong_aud["aud"] = "other".into();
        let mut wrong_iss = claims_json(NOW, 900);
        wrong_iss["iss"] = "https://evil.test".into();
        let mut no_sid = claims_json(NOW, 900);
        no_sid.as_object_mut().map(|o| o.remove("sid"));
        let mut no_nbf = claims_json(NOW, 900);
        no_nbf.as_object_mut().map(|o| o.remove("nbf"));
        for claims in [wrong_aud, wrong_iss, no_sid, no_nbf] {
            let token = key.sign(&claims);
            assert_eq!(
                verify(&set, &token, NOW).err(),
                Some(VerifyError::Invalid),
                "{claims}"
            );
        }
        let id_token = key.sign_with_typ(&claims_json(NOW, 900), Some("JWT"));
        assert_eq!(verify(&set, &id_token, NOW).err(), Some(VerifyError::Invalid));
        let untyped = key.sign_with_typ(&claims_json(NOW, 900), None);
        assert_eq!(verify(&set, &untyped, NOW).err(), Some(VerifyError::Invalid));
        let long_form = key.sign_with_typ(&claims_json(NOW, 900), Some("application/AT+JWT"));
        assert!(verify(&set, &long_form, NOW).is_ok());
    }

    #[test]
    fn times_are_judged_with_the_leeway() {
        let key = TestKey::ed25519();
        let set = keys(&key);
        let token = key.sign(&claims_json(NOW, 900));
        assert!(verify(&set, &token, NOW + 900 + 5).is_ok(), "within the leeway");
        assert_eq!(
            verify(&set, &token, NOW + 900 + 6).err(),
            Some(VerifyError::Expired)
        );
        assert!(
            verify(&set, &token, NOW - 5).is_ok(),
            "issuer's clock a little ahead"
        );
        assert_eq!(
            verify(&set, &token, NOW - 6).err(),
            Some(VerifyError::Invalid),
            "not yet valid"
        );
        let long_lived = key.sign(&claims_json(NOW, 3600));
        assert_eq!(
            verify(&set, &long_lived, NOW).err(),
            Some(VerifyError::Invalid),
            "longer than max_token_lifetime"
        );
    }

    #[test]
    fn another_key_another_algorithm_or_a_tampered_token_is_invalid() {
        let (key, other) = (TestKey::ed25519(), TestKey::ed25519());
        let set = keys(&key);
        let forged = other.sign_as(&claims_json(NOW, 900), &key.kid);
        assert_eq!(verify(&set, &forged, NOW).err(), Some(VerifyError::Invalid));
        // An ES256 signature under the Ed25519 key's kid: the header's alg
        // must not choose the algorithm.
        let es = TestKey::es256();
        let confused = es.sign_as(&claims_json(NOW, 900), &key.kid);
        assert_eq!(verify(&set, &confused, NOW).err(), Some(VerifyError::Invalid));
        let token = key.sign(&claims_json(NOW, 900));
        let (head, signature) = token.rsplit_once('.').expect("three parts");
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{head}.{flipped}{}", &signature[1..]);
        assert_eq!(verify(&set, &tampered, NOW).err(), Some(VerifyError::Invalid));
        assert_eq!(verify(&set, "garbage", NOW).err(), Some(VerifyError::Invalid));
        assert_eq!(verify(&set, "", NOW).err(), Some(VerifyError::Invalid));
        assert_eq!(
            verify(&set, &"a".repeat(5000), NOW).err(),
            Some(VerifyError::Invalid)
        );
    }

    #[test]
    fn remembered_tokens_are_bounded() {
        let remembered = VerifiedTokens::default();
        let claims = Claims::new("u".into(), "s".into(), Vec::new(), NOW, NOW + 60, String::new());
        for i in 0..(MAX_REMEMBERED + 10) {
            remembered.insert(digest(&i.to_string()), claims.clone(), NOW, 5);
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
