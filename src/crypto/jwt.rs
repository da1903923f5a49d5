//! Access tokens: short-lived JWTs (RFC 9068 `at+jwt`) signed with the first
//! configured key and verified by RFC 8725's rules: the algorithm is pinned
//! per key, the `kid` must name a configured key (nothing is ever fetched),
//! `typ`, `iss`, `aud`, `sub`, `exp` and `nbf` are required. The rules and
//! the claims are `authd-token-rules`', the same the services' verifier
//! applies.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use authd_token_rules::{
    Actor, Leeway, PinnedKey, Refusal, Rules, SERVICE_SUBJECT_PREFIX, SecurityEvent, ServiceAccess,
    TokenKind, UserAccess,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::keys::{Key, PublicJwk};
use crate::domain::{Assurance, AuthMethod};
use crate::error::TokenProblem;

pub const ACCESS_TOKEN_TYP: &str = UserAccess::TYP;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = Leeway::DEFAULT.as_duration().as_secs();
use authd_token_rules::MAX_TOKEN_BYTES;
/// Verified tokens remembered at most (≈ 80 bytes each).
const MAX_REMEMBERED: usize = 100_000;

/// The claims authd signs into an access token.
pub type AccessClaims = UserAccess;

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

/// A user's token for any registered audience, as introspection and token
/// exchange read it: with the claims a narrower token copies.
#[derive(Debug, Clone)]
pub struct UserToken {
    pub access: VerifiedAccess,
    pub claims: UserAccess,
}

/// What a verified service token (client_credentials) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedService {
    /// The service account's name (`client_id`).
    pub name: String,
    /// The key that minted it.
    pub key_id: Uuid,
    /// Its scopes as written in the token.
    pub scopes: Vec<String>,
    pub audience: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub jti: String,
}

/// A service's own token to mint.
pub struct ServiceGrant<'a> {
    pub name: &'a str,
    pub key_id: Uuid,
    pub scopes: &'a [String],
    pub audience: &'a str,
}

/// A narrower user token to mint: for `audience`, acting `actor`.
pub struct Delegation<'a> {
    pub audience: &'a str,
    /// The acting service's name.
    pub actor: &'a str,
    /// The roles to carry (already narrowed).
    pub roles: Vec<String>,
    /// Latest `exp` (the subject token's), if any.
    pub not_after: Option<i64>,
    /// How long at most.
    pub ttl: Duration,
}

struct VerifyingKey {
    key: Key,
    pinned: PinnedKey,
    /// The base64url JOSE header of tokens this key signs; it never changes.
    encoded_header: String,
    /// The same for the Security Event Tokens it signs (`secevent+jwt`).
    encoded_event_header: String,
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
    /// Every audience a token may be minted for, authd's own first.
    audiences: Vec<String>,
    rules: Rules<UserAccess>,
    /// User tokens for any registered audience (introspection, exchange).
    any_audience: Rules<UserAccess>,
    /// Service tokens for authd itself.
    service_rules: Rules<ServiceAccess>,
    /// Service tokens for any registered audience (introspection).
    any_service: Rules<ServiceAccess>,
    ttl: Duration,
    service_ttl: Duration,
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

fn is_expired(exp: i64, now: i64) -> bool {
    Leeway::DEFAULT.expired(exp, now)
}

impl AccessTokens {
    pub fn new(keys: Vec<Key>, issuer: &str, audience: &str, ttl: Duration) -> anyhow::Result<Self> {
        Self::for_audiences(keys, issuer, audience, &[], ttl, Duration::from_secs(300))
    }

    /// Tokens for `audience` (authd's own) and, minted on request, for each
    /// of `others`; service tokens live `service_ttl`.
    pub fn for_audiences(
        keys: Vec<Key>,
        issuer: &str,
        audience: &str,
        others: &[String],
        ttl: Duration,
        service_ttl: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!keys.is_empty(), "at least one signing key is required");
        let mut by_kid = HashMap::new();
        let mut verifying = Vec::with_capacity(keys.len());
        for (i, key) in keys.into_iter().enumerate() {
            anyhow::ensure!(
                by_kid.insert(key.kid.clone(), i).is_none(),
                "duplicate signing key {}",
                key.kid
            );
            let pinned = PinnedKey::new(key.alg, key.decoding.clone()).map_err(anyhow::Error::msg)?;
            let header = Rules::<UserAccess>::header(key.alg, &key.kid);
            let encoded_header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
            let event_header = Rules::<SecurityEvent>::header(key.alg, &key.kid);
            let encoded_event_header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&event_header)?);
            verifying.push(VerifyingKey {
                key,
                pinned,
                encoded_header,
                encoded_event_header,
            });
        }
        let jwks = serde_json::json!({
            "keys": verifying.iter().map(|k| &k.key.jwk).collect::<Vec<_>>()
        });
        let audiences: Vec<String> = std::iter::once(audience.to_owned())
            .chain(others.iter().cloned())
            .collect();
        let all: Vec<&str> = audiences.iter().map(String::as_str).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                keys: verifying,
                by_kid,
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                rules: Rules::new(issuer, audience, Leeway::DEFAULT),
                any_audience: Rules::for_audiences(issuer, &all, Leeway::DEFAULT),
                service_rules: Rules::new(issuer, audience, Leeway::DEFAULT),
                any_service: Rules::for_audiences(issuer, &all, Leeway::DEFAULT),
                audiences,
                ttl,
                service_ttl,
                jwks_json: jwks.to_string(),
                verified: VerifiedTokens::default(),
            }),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// How long a service's client_credentials token lives.
    pub fn service_ttl(&self) -> Duration {
        self.inner.service_ttl
    }

    /// The issuer every token names.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// authd's own audience (Login tokens, authd's RPCs).
    pub fn own_audience(&self) -> &str {
        &self.inner.audience
    }

    /// Whether tokens may be minted for `audience`.
    pub fn is_registered(&self, audience: &str) -> bool {
        self.inner.audiences.iter().any(|a| a == audience)
    }

    /// The algorithm of the signing key.
    pub fn signing_algorithm(&self) -> jsonwebtoken::Algorithm {
        self.inner.keys[0].key.alg
    }

    /// JWS compact serialization (RFC 7515 §7.1) of `claims` with the
    /// signing key, as an access token (`at+jwt`).
    fn sign(&self, claims: &impl serde::Serialize) -> anyhow::Result<String> {
        let signer = &self.inner.keys[0];
        Self::sign_with(signer, &signer.encoded_header, claims)
    }

    /// A Security Event Token (RFC 8417): `event` signed with the signing
    /// key under `typ` `secevent+jwt` and its `kid`, so a receiver checks it
    /// against the JWKS like any token of authd, and never takes it for an
    /// access token.
    pub fn sign_event(&self, event: &SecurityEvent) -> anyhow::Result<String> {
        let signer = &self.inner.keys[0];
        Self::sign_with(signer, &signer.encoded_event_header, event)
    }

    fn sign_with(
        signer: &VerifyingKey,
        encoded_header: &str,
        claims: &impl serde::Serialize,
    ) -> anyhow::Result<String> {
        let mut token = encoded_header.to_owned();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims)?, &mut token);
        let signature = signer.key.signer.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// A service's own token (RFC 9068, client_credentials).
    pub fn issue_service(
        &self,
        grant: &ServiceGrant<'_>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<IssuedAccess> {
        let iat = now.timestamp();
        let ttl = i64::try_from(self.inner.service_ttl.as_secs())?;
        let claims = ServiceAccess {
            iss: self.inner.issuer.clone(),
            aud: grant.audience.to_owned(),
            sub: format!("{SERVICE_SUBJECT_PREFIX}{}", grant.name),
            client_id: grant.name.to_owned(),
            scope: grant.scopes.join(" "),
            iat,
            nbf: iat,
            exp: iat + ttl,
            jti: Uuid::new_v4().to_string(),
            key_id: grant.key_id.to_string(),
        };
        Ok(IssuedAccess {
            token: self.sign(&claims)?,
            expires_in: self.inner.service_ttl,
        })
    }

    /// A user's token narrowed to one audience and acting as a service:
    /// the subject's session, proof and time, `act` naming the service on
    /// top of the subject's own chain.
    pub fn issue_delegated(
        &self,
        subject: &UserAccess,
        delegation: Delegation<'_>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<IssuedAccess> {
        let iat = now.timestamp();
        let mut exp = iat.saturating_add(i64::try_from(delegation.ttl.as_secs())?);
        if let Some(not_after) = delegation.not_after {
            exp = exp.min(not_after);
        }
        let exp = exp.max(iat);
        let claims = UserAccess {
            iss: self.inner.issuer.clone(),
            aud: delegation.audience.to_owned(),
            sub: subject.sub.clone(),
            sid: subject.sid.clone(),
            iat,
            nbf: iat,
            exp,
            jti: Uuid::new_v4().to_string(),
            roles: delegation.roles,
            amr: subject.amr.clone(),
            acr: subject.acr.clone(),
            auth_time: subject.auth_time,
            mfa_enrollment_required: false,
            client_id: Some(delegation.actor.to_owned()),
            act: Some(Actor {
                sub: format!("{SERVICE_SUBJECT_PREFIX}{}", delegation.actor),
                act: subject.act.clone().map(Box::new),
            }),
        };
        Ok(IssuedAccess {
            token: self.sign(&claims)?,
            expires_in: Duration::from_secs(u64::try_from(exp - iat)?),
        })
    }

    /// A user's token for any registered audience, `act` allowed: what
    /// introspection and token exchange accept. Never remembered: these
    /// are not the hot path.
    pub fn read_user_token(&self, token: &str, now: DateTime<Utc>) -> Result<UserToken, TokenProblem> {
        let inner = &self.inner;
        let claims = inner
            .any_audience
            .verify(token, now.timestamp(), |kid| {
                inner.by_kid.get(kid).map(|i| &inner.keys[*i].pinned)
            })
            .map_err(problem_of)?;
        let access = verified_access(&claims)?;
        Ok(UserToken { access, claims })
    }

    /// A service's own token. `any_audience`: for any registered audience
    /// (introspection); else only authd's own (a credential authd accepts).
    pub fn verify_service(
        &self,
        token: &str,
        now: DateTime<Utc>,
        any_audience: bool,
    ) -> Result<VerifiedService, TokenProblem> {
        let inner = &self.inner;
        let rules = if any_audience {
            &inner.any_service
        } else {
            &inner.service_rules
        };
        let claims = rules
            .verify(token, now.timestamp(), |kid| {
                inner.by_kid.get(kid).map(|i| &inner.keys[*i].pinned)
            })
            .map_err(problem_of)?;
        Ok(VerifiedService {
            key_id: Uuid::parse_str(&claims.key_id).map_err(|_| TokenProblem::Invalid)?,
            scopes: claims.scope.split_ascii_whitespace().map(str::to_owned).collect(),
            name: claims.client_id,
            audience: claims.aud,
            issued_at: claims.iat,
            expires_at: claims.exp,
            jti: claims.jti,
        })
    }

    pub fn issue(
        &self,
        subject: &Subject<'_>,
        now: DateTime<Utc>,
        session_expires_at: DateTime<Utc>,
    ) -> anyhow::Result<IssuedAccess> {
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
            client_id: None,
            act: None,
        };
        Ok(IssuedAccess {
            token: self.sign(&claims)?,
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
        let inner = &self.inner;
        let claims = inner
            .rules
            .verify(token, now, |kid| {
                inner.by_kid.get(kid).map(|i| &inner.keys[*i].pinned)
            })
            .map_err(problem_of)?;
        // A token a service holds for a user is for other services: authd's
        // own account RPCs answer the user alone.
        if claims.act.is_some() {
            return Err(TokenProblem::Invalid);
        }
        verified_access(&claims)
    }

    pub fn jwks(&self) -> impl Iterator<Item = &PublicJwk> {
        self.inner.keys.iter().map(|k| &k.key.jwk)
    }

    pub fn jwks_json(&self) -> &str {
        &self.inner.jwks_json
    }
}

fn problem_of(refusal: Refusal) -> TokenProblem {
    match refusal {
        Refusal::Expired => TokenProblem::Expired,
        Refusal::Invalid(_) => TokenProblem::Invalid,
    }
}

/// What a user token's claims say, in authd's types.
fn verified_access(claims: &UserAccess) -> Result<VerifiedAccess, TokenProblem> {
    {
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| TokenProblem::Invalid)?;
        let session_id = Uuid::parse_str(&claims.sid).map_err(|_| TokenProblem::Invalid)?;
        let auth_time = DateTime::from_timestamp(claims.proven_at(), 0).ok_or(TokenProblem::Invalid)?;
        let methods: Vec<AuthMethod> = claims
            .methods()
            .into_iter()
            .map(|m| AuthMethod::parse(m).ok_or(TokenProblem::Invalid))
            .collect::<Result<_, _>>()?;
        Ok(VerifiedAccess {
            user_id,
            session_id,
            expires_at: claims.exp,
            roles: claims.roles.clone().into(),
            assurance: Assurance::from_parts(methods, auth_time),
            mfa_enrollment_required: claims.mfa_enrollment_required,
        })
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

    #[test]
    fn a_signed_event_verifies_as_a_set_with_the_published_key_and_is_no_access_token() {
        let es = {
            let sk = p256::SecretKey::random(&mut rand_core::OsRng);
            let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&sk, Default::default()).unwrap();
            Key::from_pkcs8_pem(&pem).unwrap()
        };
        let ed = Key::from_pkcs8_pem(&generate_ed25519_pem().unwrap()).unwrap();
        for key in [ed, es] {
            let kid = key.kid.clone();
            let t =
                AccessTokens::new(vec![key], "https://authd.test", "svc", Duration::from_secs(900)).unwrap();
            let user = Uuid::new_v4();
            let event = crate::domain::security_event(
                &crate::domain::Signal::SessionRevoked { session: None },
                crate::domain::SetEnvelope {
                    issuer: t.issuer(),
                    audience: "https://receiver.test",
                    jti: Uuid::new_v4().to_string(),
                    iat: Utc::now().timestamp(),
                    txn: Some("t1".to_owned()),
                    user_id: Some(user),
                    stream_id: None,
                    event_time: Utc::now().timestamp(),
                },
            );
            let set = t.sign_event(&event).unwrap();

            let header = jsonwebtoken::decode_header(&set).unwrap();
            assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
            assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
            // The key as a receiver sees it: from the JWKS document.
            let jwks: serde_json::Value = serde_json::from_str(t.jwks_json()).unwrap();
            let jwk = &jwks["keys"][0];
            let text = |member: &str| jwk[member].as_str().unwrap_or_default().to_owned();
            let published =
                PinnedKey::from_jwk(&text("kty"), &text("crv"), &text("alg"), &text("x"), &text("y"))
                    .unwrap();
            let rules =
                Rules::<SecurityEvent>::new("https://authd.test", "https://receiver.test", Leeway::DEFAULT);
            let read = rules
                .verify(&set, Utc::now().timestamp(), |k| (k == kid).then_some(&published))
                .unwrap();
            assert_eq!(read, event);
            // Signed by authd's own key, still never an access token.
            assert_eq!(t.verify(&set, Utc::now()), Err(TokenProblem::Invalid));
            assert_eq!(
                t.read_user_token(&set, Utc::now()).err(),
                Some(TokenProblem::Invalid)
            );
        }
    }

    #[test]
    fn a_token_of_another_kind_signed_with_our_key_is_refused() {
        let pem = generate_ed25519_pem().unwrap();
        let t = AccessTokens::new(
            vec![Key::from_pkcs8_pem(&pem).unwrap()],
            "https://authd.test",
            "svc",
            Duration::from_secs(900),
        )
        .unwrap();
        let key = Key::from_pkcs8_pem(&pem).unwrap();
        let sign = |header: &jsonwebtoken::Header, claims: serde_json::Value| {
            let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
            token.push('.');
            token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
            let signature = key.signer.sign(token.as_bytes());
            format!("{token}.{}", URL_SAFE_NO_PAD.encode(signature))
        };
        let now = Utc::now();
        let iat = now.timestamp();
        let access = Rules::<UserAccess>::header(key.alg, &key.kid);
        let user = serde_json::json!({
            "iss": "https://authd.test", "aud": "svc", "sub": Uuid::new_v4(), "sid": Uuid::new_v4(),
            "iat": iat, "nbf": iat, "exp": iat + 60, "jti": "j",
        });
        assert!(t.verify(&sign(&access, user), now).is_ok(), "the control");
        let event = serde_json::json!({
            "iss": "https://authd.test", "aud": "svc", "jti": "e", "iat": iat,
            "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}},
        });
        let set_header = Rules::<authd_token_rules::SecurityEvent>::header(key.alg, &key.kid);
        assert_eq!(
            t.verify(&sign(&set_header, event.clone()), now),
            Err(TokenProblem::Invalid)
        );
        assert_eq!(t.verify(&sign(&access, event), now), Err(TokenProblem::Invalid));
        let service = serde_json::json!({
            "iss": "https://authd.test", "aud": "svc", "sub": "svc:billing", "client_id": "billing",
            "iat": iat, "nbf": iat, "exp": iat + 60, "jti": "s", "sid": Uuid::new_v4(),
        });
        assert_eq!(t.verify(&sign(&access, service), now), Err(TokenProblem::Invalid));
    }
}
