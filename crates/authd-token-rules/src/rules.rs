//! Judging a token of one kind: header, key, signature, claims, times.

use std::marker::PhantomData;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};

use crate::MAX_TOKEN_BYTES;
use crate::kinds::TokenKind;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Past its `exp` by more than the leeway; otherwise valid.
    Expired,
    /// Not a valid token of this kind, for the reason given (for logs and
    /// tests; a client is told only that it is invalid).
    Invalid(Invalid),
}

/// What is wrong with an invalid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Empty, or longer than [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES).
    Size,
    /// Not a JWS in compact form with a readable header (an `alg` of
    /// `none` ends here too).
    Malformed,
    /// The header's `typ` is not this kind's.
    Typ,
    /// No `kid`, or one naming no key.
    Kid,
    /// The header's `alg` is not the one its key is pinned to.
    Algorithm,
    /// The signature does not verify with the key.
    Signature,
    /// A required claim is missing or malformed, or `iss` or `aud` is not
    /// the expected one.
    Claims,
    /// The claims do not have this kind's shape (see
    /// [`TokenKind`](crate::TokenKind)).
    Shape,
    /// `nbf` lies more than the leeway in the future.
    NotYetValid,
    /// `iat` lies more than the leeway in the future.
    IssuedInFuture,
    /// Lives longer (`exp - iat`) than the verifier allows.
    Lifetime,
}

impl From<Invalid> for Refusal {
    fn from(invalid: Invalid) -> Self {
        Refusal::Invalid(invalid)
    }
}

/// Clock skew tolerated between issuer and verifier, in whole seconds; at
/// most [`Leeway::MAX`] (RFC 8725 asks for a small one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leeway(u64);

impl Leeway {
    /// authd's own.
    pub const DEFAULT: Self = Self(5);
    /// The largest allowed.
    pub const MAX: Self = Self(30);

    /// `leeway` in whole seconds, if it is at most [`Leeway::MAX`].
    pub fn new(leeway: Duration) -> Option<Self> {
        (leeway <= Self::MAX.as_duration()).then_some(Self(leeway.as_secs()))
    }

    /// As a duration.
    pub const fn as_duration(self) -> Duration {
        Duration::from_secs(self.0)
    }

    /// In seconds.
    pub fn secs(self) -> i64 {
        // At most 30.
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// Whether a token with this `exp` is expired at `now`: once `exp`
    /// lies more than the leeway in the past.
    pub fn expired(self, exp: i64, now: i64) -> bool {
        exp < now.saturating_sub(self.secs())
    }
}

/// What the header says, read before a key is chosen. `jku`, `jwk`, `x5u`
/// and `x5c` are never read: keys come only from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The key the token names.
    pub kid: String,
    /// The algorithm the token claims; it must be its key's.
    pub alg: Algorithm,
}

/// A verifying key with the one algorithm it may be used with, decided
/// when the key is loaded and never from a token.
#[derive(Clone)]
pub struct PinnedKey {
    alg: Algorithm,
    decoding: DecodingKey,
}

impl std::fmt::Debug for PinnedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedKey").field("alg", &self.alg).finish()
    }
}

impl PinnedKey {
    /// `decoding` pinned to `alg`, which must be EdDSA or ES256.
    pub fn new(alg: Algorithm, decoding: DecodingKey) -> Result<Self, &'static str> {
        match alg {
            Algorithm::EdDSA | Algorithm::ES256 => Ok(Self { alg, decoding }),
            _ => Err("only EdDSA and ES256 keys sign authd's tokens"),
        }
    }

    /// A published JWK (RFC 7517 members): the algorithm follows from the
    /// key type and curve; an `alg` member, if not empty, must agree.
    pub fn from_jwk(kty: &str, crv: &str, alg: &str, x: &str, y: &str) -> Result<Self, &'static str> {
        let pinned = Self::algorithm_of_jwk(kty, crv, alg)?;
        let decoding = match pinned {
            Algorithm::EdDSA => DecodingKey::from_ed_components(x),
            _ => DecodingKey::from_ec_components(x, y),
        }
        .map_err(|_| "malformed key material")?;
        Self::new(pinned, decoding)
    }

    /// The algorithm a JWK's type and curve allow.
    pub fn algorithm_of_jwk(kty: &str, crv: &str, alg: &str) -> Result<Algorithm, &'static str> {
        let pinned = match (kty, crv) {
            ("OKP", "Ed25519") => Algorithm::EdDSA,
            ("EC", "P-256") => Algorithm::ES256,
            _ => return Err("not an Ed25519 or P-256 key"),
        };
        let named = match alg {
            "" => pinned,
            "EdDSA" => Algorithm::EdDSA,
            "ES256" => Algorithm::ES256,
            _ => return Err("unsupported alg"),
        };
        if named != pinned {
            return Err("alg does not match the key's curve");
        }
        Ok(pinned)
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }
}

/// The rules for tokens of kind `K` from one issuer for one audience. Built
/// once (each algorithm's validation is prepared here, not per token).
pub struct Rules<K> {
    eddsa: Validation,
    es256: Validation,
    leeway: Leeway,
    max_lifetime: Option<i64>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Rules<K> {
    fn clone(&self) -> Self {
        Self {
            eddsa: self.eddsa.clone(),
            es256: self.es256.clone(),
            leeway: self.leeway,
            max_lifetime: self.max_lifetime,
            _kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Rules<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("kind", &std::any::type_name::<K>())
            .field("leeway", &self.leeway)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

impl<K: TokenKind> Rules<K> {
    /// Tokens of kind `K` whose `iss` is `issuer` and whose `aud` names
    /// `audience`, their times judged with `leeway`.
    pub fn new(issuer: &str, audience: &str, leeway: Leeway) -> Self {
        Self::for_audiences(issuer, &[audience], leeway)
    }

    /// Tokens of kind `K` whose `iss` is `issuer` and whose `aud` names one
    /// of `audiences` (authd judging a token minted for any service it
    /// knows).
    pub fn for_audiences(issuer: &str, audiences: &[&str], leeway: Leeway) -> Self {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            // Times are judged in `check` against the caller's `now`;
            // jsonwebtoken would read the clock itself.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.leeway = leeway.0;
            v.set_required_spec_claims(K::REQUIRED_CLAIMS);
            v.set_issuer(&[issuer]);
            v.set_audience(audiences);
            v
        };
        Self {
            eddsa: validation(Algorithm::EdDSA),
            es256: validation(Algorithm::ES256),
            leeway,
            max_lifetime: None,
            _kind: PhantomData,
        }
    }

    /// Refuse tokens that live (`exp - iat`) longer than `max`: a verifier
    /// remembers revocations only that long.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(i64::try_from(max.as_secs()).unwrap_or(i64::MAX));
        self
    }

    /// The leeway these rules judge times with.
    pub fn leeway(&self) -> Leeway {
        self.leeway
    }

    /// The JOSE header of a token of this kind signed by the key `kid`
    /// with `alg`.
    pub fn header(alg: Algorithm, kid: &str) -> Header {
        let mut header = Header::new(alg);
        header.typ = Some(K::TYP.to_owned());
        header.kid = Some(kid.to_owned());
        header
    }

    /// The header of `token`: the size capped, the `typ` this kind's, a
    /// `kid` present.
    pub fn read_header(&self, token: &str) -> Result<TokenHeader, Refusal> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Invalid::Size.into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
        if !header.typ.as_deref().is_some_and(typ_is::<K>) {
            return Err(Invalid::Typ.into());
        }
        let kid = header.kid.filter(|k| !k.is_empty()).ok_or(Invalid::Kid)?;
        Ok(TokenHeader { kid, alg: header.alg })
    }

    /// Signature, claims and times of `token` (whose header is `header`)
    /// with `key`, at `now` (seconds since the epoch).
    pub fn check(&self, token: &str, header: &TokenHeader, key: &PinnedKey, now: i64) -> Result<K, Refusal> {
        // The key decides the algorithm; a header naming another one is an
        // attempt at algorithm confusion, never a negotiation.
        if header.alg != key.alg {
            return Err(Invalid::Algorithm.into());
        }
        let validation = match key.alg {
            Algorithm::EdDSA => &self.eddsa,
            _ => &self.es256,
        };
        let wire = jsonwebtoken::decode::<K::Wire>(token, &key.decoding, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Invalid::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Invalid::Algorithm,
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => Invalid::Malformed,
                _ => Invalid::Claims,
            })?
            .claims;
        let claims = K::from_wire(wire)?;
        self.judge_times(&claims, now)?;
        Ok(claims)
    }

    /// [`Rules::read_header`], the key the `kid` names (`None`: refused),
    /// then [`Rules::check`].
    pub fn verify<'k>(
        &self,
        token: &str,
        now: i64,
        key_for: impl FnOnce(&str) -> Option<&'k PinnedKey>,
    ) -> Result<K, Refusal> {
        let header = self.read_header(token)?;
        let key = key_for(&header.kid).ok_or(Invalid::Kid)?;
        self.check(token, &header, key, now)
    }

    fn judge_times(&self, claims: &K, now: i64) -> Result<(), Refusal> {
        let ahead = now.saturating_add(self.leeway.secs());
        if let Some(exp) = claims.expires_at()
            && self.leeway.expired(exp, now)
        {
            return Err(Refusal::Expired);
        }
        if claims.not_before().is_some_and(|nbf| nbf > ahead) {
            return Err(Invalid::NotYetValid.into());
        }
        if claims.issued_at() > ahead {
            return Err(Invalid::IssuedInFuture.into());
        }
        if let (Some(max), Some(exp)) = (self.max_lifetime, claims.expires_at())
            && exp.saturating_sub(claims.issued_at()) > max
        {
            return Err(Invalid::Lifetime.into());
        }
        Ok(())
    }
}

/// Whether a header's `typ` is kind `K`'s: the short form, or the media
/// type with `application/` (RFC 7515 §4.1.9), in any letter case.
fn typ_is<K: TokenKind>(typ: &str) -> bool {
    const PREFIX: &str = "application/";
    let short = match typ.get(..PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
        _ => typ,
    };
    short.eq_ignore_ascii_case(K::TYP)
}
