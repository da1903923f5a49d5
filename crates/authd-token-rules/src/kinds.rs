//! The kinds of token authd signs, each a type with its own `typ` and claim
//! shape. A token is read as one kind only, and the shapes exclude each
//! other: a user's access token has a `sid` and a `sub` that is no service
//! name, a service's has a `client_id`, a `sub` `svc:NAME` and no `sid`,
//! and neither has the `events` of a Security Event Token.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::rules::Invalid;

/// How a service account's name appears in `sub` (`svc:billing`); a user's
/// `sub` never starts so.
pub const SERVICE_SUBJECT_PREFIX: &str = "svc:";
/// The RFC 8176 method of a password; the method of tokens signed before
/// `amr` existed.
pub const AMR_PASSWORD: &str = "pwd";
/// The assurance level of one factor; the level of tokens signed before
/// `acr` existed.
pub const ACR_AAL1: &str = "aal1";

/// Whether `sub` names a service account (`svc:` and a name).
pub fn is_service_subject(sub: &str) -> bool {
    sub.strip_prefix(SERVICE_SUBJECT_PREFIX)
        .is_some_and(|name| !name.is_empty())
}

/// A kind of token: its header `typ` and the shape of its claims. Sealed:
/// the three kinds of this crate are all there are.
pub trait TokenKind: Sized + sealed::Sealed {
    /// The `typ` header value (RFC 8725 §3.11), short form; the long form
    /// (`application/…`) is accepted too, in any letter case.
    const TYP: &'static str;
    /// Registered claims that must be present.
    const REQUIRED_CLAIMS: &'static [&'static str];

    /// `iat`: when the token was issued.
    fn issued_at(&self) -> i64;
    /// `nbf`, if the kind has one.
    fn not_before(&self) -> Option<i64>;
    /// `exp`, if the kind has one.
    fn expires_at(&self) -> Option<i64>;
}

pub(crate) mod sealed {
    use super::{DeserializeOwned, Invalid};

    /// What reading a kind takes: the claims as they arrive (with the
    /// members that must be absent), and the check of their shape.
    pub trait Sealed {
        type Wire: DeserializeOwned;
        fn from_wire(wire: Self::Wire) -> Result<Self, Invalid>
        where
            Self: Sized;
    }
}

/// The claims of a user's access token (RFC 9068 `at+jwt`), as authd signs
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccess {
    /// The issuer (`AUTHD_ISSUER`).
    pub iss: String,
    /// The audience (`AUTHD_AUDIENCE`).
    pub aud: String,
    /// The account (a UUID).
    pub sub: String,
    /// The session (a UUID).
    pub sid: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
    /// The token's own id.
    #[serde(default)]
    pub jti: String,
    /// The account's roles when the token was issued; tokens from before
    /// roles existed have none.
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 8176 methods the session proved; empty on tokens from before
    /// they were recorded (see [`UserAccess::methods`]).
    #[serde(default)]
    pub amr: Vec<String>,
    /// The assurance level (`aal1`, `aal2`); empty on older tokens (see
    /// [`UserAccess::level`]).
    #[serde(default)]
    pub acr: String,
    /// The session's last proof (seconds since the epoch); 0 on older
    /// tokens (see [`UserAccess::proven_at`]).
    #[serde(default)]
    pub auth_time: i64,
    /// The account must enrol a second factor before anything else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa_enrollment_required: bool,
    /// The service that exchanged the token (RFC 9068 `client_id`); absent
    /// on a token from a login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The service acting for the user (RFC 8693 §4.1): set on exchanged
    /// and impersonating tokens, nested once per exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// An RFC 8693 `act` claim: who acts, and who acted before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `svc:NAME` of the acting service.
    pub sub: String,
    /// The actor before this one, for a token exchanged again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The chain, the current actor first.
    pub fn chain(&self) -> Vec<&str> {
        let mut chain = vec![self.sub.as_str()];
        let mut prior = self.act.as_deref();
        while let Some(actor) = prior {
            chain.push(actor.sub.as_str());
            prior = actor.act.as_deref();
        }
        chain
    }

    /// How many actors the chain holds.
    pub fn depth(&self) -> usize {
        1 + self.act.as_deref().map_or(0, Actor::depth)
    }
}

impl UserAccess {
    /// The methods the session proved: `amr`, or a password for a token
    /// signed before `amr` existed (a password was all there was).
    pub fn methods(&self) -> Vec<&str> {
        // An impersonating token proves nothing of the user; the fallback is
        // for tokens from before `amr` existed, which never had `act`.
        if self.amr.is_empty() && self.act.is_none() {
            vec![AMR_PASSWORD]
        } else {
            self.amr.iter().map(String::as_str).collect()
        }
    }

    /// The assurance level: `acr`, or `aal1` for an older token.
    pub fn level(&self) -> &str {
        if self.acr.is_empty() { ACR_AAL1 } else { &self.acr }
    }

    /// When the session last proved who its holder is: `auth_time`, or
    /// `iat` for an older token (it was issued by a login).
    pub fn proven_at(&self) -> i64 {
        if self.auth_time > 0 || self.act.is_some() {
            self.auth_time
        } else {
            self.iat
        }
    }
}

#[doc(hidden)]
#[derive(Deserialize)]
pub struct UserAccessWire {
    #[serde(flatten)]
    claims: UserAccess,
    #[serde(default)]
    events: Option<IgnoredAny>,
}

impl sealed::Sealed for UserAccess {
    type Wire = UserAccessWire;

    fn from_wire(wire: UserAccessWire) -> Result<Self, Invalid> {
        let c = wire.claims;
        let shaped = wire.events.is_none()
            && !c.sub.is_empty()
            && !c.sub.starts_with(SERVICE_SUBJECT_PREFIX)
            && !c.sid.is_empty()
            && c.act
                .as_ref()
                .is_none_or(|act| act.chain().iter().all(|s| is_service_subject(s)))
            && c.iat >= 0
            && c.exp >= c.iat;
        if shaped { Ok(c) } else { Err(Invalid::Shape) }
    }
}

impl TokenKind for UserAccess {
    const TYP: &'static str = "at+jwt";
    const REQUIRED_CLAIMS: &'static [&'static str] = &["exp", "nbf", "iss", "aud", "sub"];

    fn issued_at(&self) -> i64 {
        self.iat
    }

    fn not_before(&self) -> Option<i64> {
        Some(self.nbf)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.exp)
    }
}

/// The claims of a service account's access token (RFC 9068 `at+jwt`,
/// client credentials): `sub` is `svc:NAME` and `client_id` the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccess {
    /// The issuer.
    pub iss: String,
    /// The service the token is for.
    pub aud: String,
    /// `svc:` and the service account's name.
    pub sub: String,
    /// The service account's name.
    pub client_id: String,
    /// Space-separated scopes (RFC 8693 §4.2).
    #[serde(default)]
    pub scope: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
    /// The token's own id.
    #[serde(default)]
    pub jti: String,
    /// The id of the key that minted the token: authd ends the token at
    /// once when that key is deleted (other verifiers wait for `exp`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
}

#[doc(hidden)]
#[derive(Deserialize)]
pub struct ServiceAccessWire {
    #[serde(flatten)]
    claims: ServiceAccess,
    #[serde(default)]
    sid: Option<IgnoredAny>,
    #[serde(default)]
    events: Option<IgnoredAny>,
    #[serde(default)]
    act: Option<IgnoredAny>,
}

impl sealed::Sealed for ServiceAccess {
    type Wire = ServiceAccessWire;

    fn from_wire(wire: ServiceAccessWire) -> Result<Self, Invalid> {
        let c = wire.claims;
        let named = c
            .sub
            .strip_prefix(SERVICE_SUBJECT_PREFIX)
            .is_some_and(|name| !name.is_empty() && name == c.client_id);
        let shaped = wire.sid.is_none()
            && wire.events.is_none()
            && wire.act.is_none()
            && named
            && c.iat >= 0
            && c.exp >= c.iat;
        if shaped { Ok(c) } else { Err(Invalid::Shape) }
    }
}

impl TokenKind for ServiceAccess {
    const TYP: &'static str = "at+jwt";
    const REQUIRED_CLAIMS: &'static [&'static str] = &["exp", "nbf", "iss", "aud", "sub"];

    fn issued_at(&self) -> i64 {
        self.iat
    }

    fn not_before(&self) -> Option<i64> {
        Some(self.nbf)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.exp)
    }
}

/// The claims of a Security Event Token (RFC 8417, `secevent+jwt`). It
/// describes something that happened; it grants nothing, so it has no
/// `exp` and is never an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityEvent {
    /// The issuer.
    pub iss: String,
    /// The receiver's stream audience.
    pub aud: String,
    /// The event's own id.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// The change these events belong to (RFC 8417 §2.2): the SETs of one
    /// change share it, so a receiver can group them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// The subject (RFC 9493), if the events do not name it themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_id: Option<serde_json::Value>,
    /// Event type URI → event payload; at least one.
    pub events: serde_json::Map<String, serde_json::Value>,
}

impl sealed::Sealed for SecurityEvent {
    type Wire = SecurityEvent;

    fn from_wire(c: SecurityEvent) -> Result<Self, Invalid> {
        if c.events.is_empty() || c.jti.is_empty() || c.iat < 0 {
            return Err(Invalid::Shape);
        }
        Ok(c)
    }
}

impl TokenKind for SecurityEvent {
    const TYP: &'static str = "secevent+jwt";
    const REQUIRED_CLAIMS: &'static [&'static str] = &["iss", "aud"];

    fn issued_at(&self) -> i64 {
        self.iat
    }

    fn not_before(&self) -> Option<i64> {
        None
    }

    fn expires_at(&self) -> Option<i64> {
        None
    }
}
