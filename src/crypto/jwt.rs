//! Access tokens: short-lived JWTs (RFC 9068 `at+jwt`) signed with the first
//! configured key and verified by RFC 8725's rules: the algorithm is pinned
//! per key, the `kid` must name a configured key (nothing is ever fetched),
//! `typ`, `iss`, `aud`, `sub`, `exp` and `nbf` are required.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::{Key, PublicJwk};
use crate::error::TokenProblem;

pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;
/// A bearer longer than this is not one of ours; refuse before parsing.
const MAX_TOKEN_BYTES: usize = 4096;

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
}

/// What a verified access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedAccess {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub expires_at: i64,
}

pub struct IssuedAccess {
    pub token: String,
    pub expires_in: Duration,
}

struct VerifyingKey {
    key: Key,
    validation: Validation,
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
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[audience]);
            verifying.push(VerifyingKey { key, validation });
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
            }),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    pub fn issue(&self, user_id: Uuid, session_id: Uuid, now: DateTime<Utc>) -> anyhow::Result<IssuedAccess> {
        let signer = &self.inner.keys[0].key;
        let iat = now.timestamp();
        let ttl = i64::try_from(self.inner.ttl.as_secs())?;
        let claims = AccessClaims {
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            iat,
            nbf: iat,
            exp: iat + ttl,
            jti: Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(signer.alg);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(signer.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signer.encoding)?;
        Ok(IssuedAccess {
            token,
            expires_in: self.inner.ttl,
        })
    }

    /// Checks signature and claims. Whether the session is still live is the
    /// caller's business (it needs the database).
    pub fn verify(&self, token: &str) -> Result<VerifiedAccess, TokenProblem> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenProblem::Invalid);
        }
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
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| TokenProblem::Invalid)?;
        let session_id = Uuid::parse_str(&claims.sid).map_err(|_| TokenProblem::Invalid)?;
        Ok(VerifiedAccess {
            user_id,
            session_id,
            expires_at: claims.exp,
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

    fn tokens() -> AccessTokens {
        let key = Key::from_pkcs8_pem(&generate_ed25519_pem().unwrap()).unwrap();
        AccessTokens::new(vec![key], "https://authd.test", "svc", Duration::from_secs(900)).unwrap()
    }

    #[test]
    fn issued_tokens_verify() {
        let t = tokens();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = t.issue(user, session, Utc::now()).unwrap();
        let v = t.verify(&issued.token).unwrap();
        assert_eq!((v.user_id, v.session_id), (user, session));
    }

    #[test]
    fn tokens_of_another_key_or_expired_are_refused() {
        let (a, b) = (tokens(), tokens());
        let issued = a.issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now()).unwrap();
        assert_eq!(b.verify(&issued.token), Err(TokenProblem::Invalid));
        let old = Utc::now() - chrono::Duration::hours(1);
        let expired = a.issue(Uuid::new_v4(), Uuid::new_v4(), old).unwrap();
        assert_eq!(a.verify(&expired.token), Err(TokenProblem::Expired));
        assert_eq!(a.verify("garbage"), Err(TokenProblem::Invalid));
        assert_eq!(a.verify(&"a".repeat(5000)), Err(TokenProblem::Invalid));
    }
}
