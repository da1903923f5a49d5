//! How authd's JWTs look and how they are judged, written once: authd
//! issues and verifies with these rules, and so does every service's
//! `authd-verifier`, so the two cannot disagree about what a valid token is.
//!
//! * The token kinds are types: [`UserAccess`] (RFC 9068 `at+jwt` for a
//!   user's session), [`ServiceAccess`] (`at+jwt` for a service account,
//!   `sub` `svc:NAME`, `client_id`) and [`SecurityEvent`] (RFC 8417
//!   `secevent+jwt`). [`Rules<K>`] judges tokens of kind `K` only: the
//!   header's `typ` must be `K`'s, and the claims must have `K`'s shape, so
//!   a Security Event Token is never an access token and a service's token
//!   never passes as a user's. The set of kinds is closed ([`TokenKind`] is
//!   sealed).
//! * RFC 8725: the algorithm belongs to the key ([`PinnedKey`]), never to
//!   the token's header; only EdDSA (Ed25519) and ES256 exist; `kid` is
//!   required and only names a key the caller already has.
//! * A bearer longer than [`MAX_TOKEN_BYTES`] is refused before parsing.
//! * Times are judged against the caller's clock reading with a small
//!   [`Leeway`] (at most 30 s).

mod kinds;
mod rules;

pub use jsonwebtoken::{Algorithm, DecodingKey, Header};
pub use kinds::{
    ACR_AAL1, AMR_PASSWORD, Actor, SERVICE_SUBJECT_PREFIX, SecurityEvent, ServiceAccess, TokenKind,
    UserAccess, is_service_subject,
};
pub use rules::{Invalid, Leeway, PinnedKey, Refusal, Rules, TokenHeader};

/// A bearer longer than this is not one of authd's; refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

#[cfg(test)]
mod tests;
