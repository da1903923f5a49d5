//! Access tokens: short-lived JWTs (RFC 9068 `at+jwt`) signed with the first
//! configured key and verified by RFC 8725's rules: the algorithm is pinned
//! per key, the `kid` must name a configured key (nothing is ever fetched),
//! `typ`, `iss`, `aud`, `sub`, `exp` and `nbf` are required.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::keys::{Key, PublicJwk};
use crate::domain::{Assurance, AuthMethod};
use crate::error::TokenProblem;

pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;
/// A bearer longer than this is not one of ours; refuse before parsing.
const MAX_TOKEN_BYTES: usize = 4096;
/// Verified tokens remembered at most (≈ 80 bytes each).
const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// The account's roles when the token was issued; services authorize
    /// on them after verifying locally. Tokens from before roles existed
    /// have none.
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 8176 methods the session proved.
    #[serde(default)]
    pub amr: Vec<String>,
    /// "aal1" or "aal2"; follows from `amr`.
    #[serde(default)]
    pub acr: String,
    /// The session's last proof (seconds since the epoch).
    #[serde(default)]
    pub auth_time: i64,
    /// The account must enrol a second factor before anything else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa_enrollment_required: bool,
}

/// What a verified access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAccess {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub expires_at: i64,
    /// Shared: remembered verifications hand out clones.
    pub roles: Arc<[String]>,
    pub assurance: Assurance,
    pub mfa_enrollment_required: bool,
}

/// Who a new access token is for.
pub struct Subject<'a> {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub roles: &'a [String],
    pub assurance: &'a Assurance,
    pub mfa_enrollment_required: bool,
}

pub struct IssuedAccess {
    pub token: String,
    pub expires_in: Duration,
}

struct VerifyingKey {
    key: Key,
    validation: Validation,
    /// The base64url JOSE header of tokens this key signs; it never changes.
    encoded_header: String,
}

/// Issues and verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct AccessTokens {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Vec<VerifyingKey>,
    by_kid: HashMap<String, usize>,
    issuer: String,
    audience: String,
    ttl: Duration,
    jwks_json: String,
    verified: VerifiedTokens,
}

/// Tokens whose signature and claims checked out, by SHA-256 of the whole
/// token. A client sends the same access token on every call for minutes,
/// and the signature check is most of the CPU of GetMe; what a token says
/// cannot change (the keys are fixed for the life of the process), only
/// its expiry, which is checked on every hit. Whether its session is still
/// live is never remembered here.
#[derive(Default)]
struct VerifiedTokens {
    entries: RwLock<HashMap<[u8; 32], VerifiedAccess>>,
}

impl VerifiedTokens {
    fn get(&self, key: &[u8; 32]) -> Option<VerifiedAccess> {
        self.entries.read().ok()?.get(key).cloned()
    }

    fn insert(&self, key: [u8; 32], verified: VerifiedAccess, now: i64) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= MAX_REMEMBERED {
            // Expired tokens first, then an arbitrary sixteenth (the map's
            // order is arbitrary): forgetting everything at once would send
            // every caller back to signature checks together.
            entries.retain(|_, v| !is_expired(v.expires_at, now));
            if entries.len() >= MAX_REMEMBERED {
                let victims: Vec<[u8; 32]> = entries.keys().take(MAX_REMEMBERED / 16).copied().collect();
                for key in victims {
                    entries.remove(&key);
                }
            }
        }
        entries.insert(key, verified);
    }
}

/// jsonwebtoken's rule: expired once `exp` lies more than the leeway in the past.
fn is_expired(exp: i64, now: i64) -> bool {
    exp < now.saturating_sub(LEEWAY_SECS as i64)
}

impl AccessTokens {
    pub fn new(keys: Vec<Key>, issuer: &str, audience: &str, ttl: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(!keys.is_empty(), "at least one signing key is required");
        let mut by_kid = HashMap::new();
        let mut verifying = Vec::with_capacity(keys.len());
        for (i, key) in keys.into_iter().enumerate() {
            anyhow::ensure!(
                by_kid.insert(key.kid.clone(), i).is_none(),
                "duplicate signing key {}",
                key.kid
            );
            // Built once per key, not per request.
            let mut validation = Validation::new(key.alg);
            validation.leeway = LEEWAY_SECS;
            // `exp` and `nbf` are checked against the caller's `now` in
            // `verify_uncached`; jsonwebtoken would read the clock itself.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[audience]);
            let mut header = Header::new(key.alg);
            header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
            header.kid = Some(key.kid.clone());
            let encoded_header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
            verifying.push(VerifyingKey {
                key,
                validation,
                encoded_header,
            });
        }
        let jwks = serde_json::json!({
            "keys": verifying.iter().map(|k| &k.key.jwk).collect::<Vec<_>>()
        });
        Ok(Self {
            inner: Arc::new(Inner {
                keys: verifying,
                by_kid,
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                ttl,
                jwks_json: jwks.to_string(),
                verified: VerifiedTokens::default(),
            }),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    pub fn issue(
        &self,
        subject: &Subject<'_>,
        now: DateTime<Utc>,
        session_expires_at: DateTime<Utc>,
    ) -> anyhow::Result<IssuedAccess> {
        let signer = &self.inner.keys[0];
        let iat = now.timestamp();
        // Never past the session's own end: a revocation lists only sessions
        // that are still live, so a token outliving its session would stay
        // valid at local verifiers after its user's sessions were ended.
        let ttl = i64::try_from(self.inner.ttl.as_secs())?
            .min(session_expires_at.timestamp() - iat)
            .max(0);
        let claims = AccessClaims {
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
            sub: subject.user_id.to_string(),
            sid: subject.session_id.to_string(),
            iat,
            nbf: iat,
            exp: iat + ttl,
            jti: Uuid::new_v4().to_string(),
            roles: subject.roles.to_vec(),
            amr: subject.assurance.amr_strings(),
            acr: subject.assurance.acr.as_str().to_owned(),
            auth_time: subject.assurance.auth_time.timestamp(),
            mfa_enrollment_required: subject.mfa_enrollment_required,
        };
        // JWS compact serialization (RFC 7515 §7.1).
        let mut token = signer.encoded_header.clone();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&claims)?, &mut token);
        let signature = signer.key.signer.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(IssuedAccess {
            token,
            expires_in: std::time::Duration::from_secs(u64::try_from(ttl)?),
        })
    }

    /// Checks signature and claims at `now`. Whether the session is still
    /// live is the caller's business (it needs the database).
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<VerifiedAccess, TokenProblem> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenProblem::Invalid);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now.timestamp();
        if let Some(known) = self.inner.verified.get(&key) {
            return if is_expired(known.expires_at, now) {
                Err(TokenProblem::Expired)
            } else {
                Ok(known)
            };
        }
        let verified = self.verify_uncached(token, now)?;
        self.inner.verified.insert(key, verified.clone(), now);
        Ok(verified)
    }

    fn verify_uncached(&self, token: &str, now: i64) -> Result<VerifiedAccess, TokenProblem> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenProblem::Invalid)?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenProblem::Invalid);
        }
        let index = header
            .kid
            .as_deref()
            .and_then(|kid| self.inner.by_kid.get(kid))
            .ok_or(TokenProblem::Invalid)?;
        let entry = &self.inner.keys[*index];
        if header.alg != entry.key.alg {
            return Err(TokenProblem::Invalid);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(token, &entry.key.decoding, &entry.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenProblem::Expired,
                _ => TokenProblem::Invalid,
            })?;
        let claims = data.claims;
        if is_expired(claims.exp, now) {
            return Err(TokenProblem::Expired);
        }
        if claims.nbf > now.saturating_add(LEEWAY_SECS as i64) {
            return Err(TokenProblem::Invalid);
        }
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| TokenProblem::Invalid)?;
        let session_id = Uuid::parse_str(&claims.sid).map_err(|_| TokenProblem::Invalid)?;
        // Tokens from before assurance was recorded proved a password when
        // they were issued.
        let auth_time = if claims.auth_time > 0 {
            claims.auth_time
        } else {
            claims.iat
        };
        let auth_time = DateTime::from_timestamp(auth_time, 0).ok_or(TokenProblem::Invalid)?;
        let methods: Vec<AuthMethod> = if claims.amr.is_empty() {
            vec![AuthMethod::Pwd]
        } else {
            claims
                .amr
                .iter()
                .map(|m| AuthMethod::parse(m).ok_or(TokenProblem::Invalid))
                .collect::<Result<_, _>>()?
        };
        Ok(VerifiedAccess {
            user_id,
            session_id,
            expires_at: claims.exp,
            roles: claims.roles.into(),
            assurance: Assurance::from_parts(methods, auth_time),
            mfa_enrollment_required: claims.mfa_enrollment_required,
        })
    }

    pub fn jwks(&self) -> impl Iterator<Item = &PublicJwk> {
        self.inner.keys.iter().map(|k| &k.key.jwk)
    }

    pub fn jwks_json(&self) -> &str {
        &self.inner.jwks_json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::generate_ed25519_pem;

    fn subject(user_id: Uuid, session_id: Uuid) -> Subject<'static> {
        static NO_ROLES: [String; 0] = [];
        static PWD: std::sync::LazyLock<Assurance> =
            std::sync::LazyLock::new(|| Assurance::password(DateTime::UNIX_EPOCH));
        Subject {
            user_id,
            session_id,
            roles: &NO_ROLES,
            assurance: &PWD,
            mfa_enrollment_required: false,
        }
    }

    fn tokens() -> AccessTokens {
        let key = Key::from_pkcs8_pem(&generate_ed25519_pem().unwrap()).unwrap();
        AccessTokens::new(vec![key], "https://authd.test", "svc", Duration::from_secs(900)).unwrap()
    }

    #[test]
    fn validity_is_judged_at_the_given_time() {
        let t = tokens();
        let issued_at = Utc::now() - chrono::Duration::days(1);
        let issued = t
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), issued_at, far_future())
            .unwrap();
        assert!(t.verify(&issued.token, issued_at).is_ok(), "valid when issued");
        let after = issued_at + chrono::Duration::seconds(900 + LEEWAY_SECS as i64 + 1);
        assert_eq!(t.verify(&issued.token, after), Err(TokenProblem::Expired));
        let before = issued_at - chrono::Duration::seconds(LEEWAY_SECS as i64 + 1);
        let fresh = tokens();
        let early = fresh
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), issued_at, far_future())
            .unwrap();
        assert_eq!(
            fresh.verify(&early.token, before),
            Err(TokenProblem::Invalid),
            "not yet valid"
        );
    }

    fn far_future() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::days(30)
    }

    #[test]
    fn a_token_never_outlives_its_session() {
        let t = tokens();
        let now = Utc::now();
        let session_ends = now + chrono::Duration::seconds(60);
        let issued = t
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), now, session_ends)
            .unwrap();
        assert_eq!(issued.expires_in, std::time::Duration::from_secs(60));
        let after = session_ends + chrono::Duration::seconds(LEEWAY_SECS as i64 + 1);
        assert_eq!(t.verify(&issued.token, after), Err(TokenProblem::Expired));
        // A session further away than the lifetime leaves the lifetime.
        let long = t
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), now, far_future())
            .unwrap();
        assert_eq!(long.expires_in, std::time::Duration::from_secs(900));
    }

    #[test]
    fn issued_tokens_verify() {
        let t = tokens();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = t
            .issue(&subject(user, session), Utc::now(), far_future())
            .unwrap();
        let v = t.verify(&issued.token, Utc::now()).unwrap();
        assert_eq!((v.user_id, v.session_id), (user, session));
    }

    #[test]
    fn es256_tokens_verify_and_carry_the_header_of_their_key() {
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&sk, Default::default()).unwrap();
        let ed = Key::from_pkcs8_pem(&generate_ed25519_pem().unwrap()).unwrap();
        let es = Key::from_pkcs8_pem(&pem).unwrap();
        let es_kid = es.kid.clone();
        // The first key signs; the second only verifies.
        let t = AccessTokens::new(vec![es, ed], "iss", "aud", Duration::from_secs(60)).unwrap();
        let issued = t
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), Utc::now(), far_future())
            .unwrap();
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(es_kid.as_str()));
        assert_eq!(header.typ.as_deref(), Some(ACCESS_TOKEN_TYP));
        assert!(t.verify(&issued.token, Utc::now()).is_ok());
    }

    #[test]
    fn tokens_of_another_key_or_expired_are_refused() {
        let (a, b) = (tokens(), tokens());
        let issued = a
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), Utc::now(), far_future())
            .unwrap();
        assert_eq!(b.verify(&issued.token, Utc::now()), Err(TokenProblem::Invalid));
        let old = Utc::now() - chrono::Duration::hours(1);
        let expired = a
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), old, far_future())
            .unwrap();
        assert_eq!(a.verify(&expired.token, Utc::now()), Err(TokenProblem::Expired));
        assert_eq!(a.verify("garbage", Utc::now()), Err(TokenProblem::Invalid));
        assert_eq!(
            a.verify(&"a".repeat(5000), Utc::now()),
            Err(TokenProblem::Invalid)
        );
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_is_checked_afresh() {
        let t = tokens();
        let issued = t
            .issue(&subject(Uuid::new_v4(), Uuid::new_v4()), Utc::now(), far_future())
            .unwrap();
        assert!(t.verify(&issued.token, Utc::now()).is_ok());
        assert!(
            t.verify(&issued.token, Utc::now()).is_ok(),
            "second time from memory"
        );
        // One character changed in the signature is another token.
        let mut tampered = issued.token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(t.verify(&tampered, Utc::now()), Err(TokenProblem::Invalid));

        // Remembered, then its lifetime runs out.
        let key: [u8; 32] = Sha256::digest(issued.token.as_bytes()).into();
        let mut known = t.verify(&issued.token, Utc::now()).unwrap();
        known.expires_at = Utc::now().timestamp() - LEEWAY_SECS as i64 - 1;
        t.inner.verified.insert(key, known, Utc::now().timestamp());
        assert_eq!(t.verify(&issued.token, Utc::now()), Err(TokenProblem::Expired));
    }

    #[test]
    fn memory_of_verified_tokens_is_bounded() {
        let t = tokens();
        let now = Utc::now().timestamp();
        let live = VerifiedAccess {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            expires_at: now + 60,
            roles: Arc::from(Vec::new()),
            assurance: Assurance::password(Utc::now()),
            mfa_enrollment_required: false,
        };
        for i in 0..(MAX_REMEMBERED + 10) {
            let key: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
            t.inner.verified.insert(key, live.clone(), now);
        }
        let len = t.inner.verified.entries.read().unwrap().len();
        assert!(len <= MAX_REMEMBERED, "{len}");
        assert!(
            len > MAX_REMEMBERED * 9 / 10,
            "only a sixteenth is forgotten: {len}"
        );
    }
}
