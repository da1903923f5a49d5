//! Verifies authd's access tokens inside a Rust service, and refuses them
//! as soon as authd ends their session.
//!
//! A service that checks JWTs against the issuer's public keys alone keeps
//! accepting a logged-out user's token until it expires. This crate adds
//! the missing half: a background task follows authd's
//! `AdminService.WatchRevocations` stream, so a Logout, a password change,
//! a disabled or deleted account reaches the service within milliseconds.
//!
//! * [`Verifier`] — fetches authd's keys (GetJwks), verifies tokens locally
//!   by the rules authd itself applies (the `authd-token-rules` crate; RFC
//!   8725: the algorithm pinned per key, `typ: at+jwt`, `iss`, `aud`, `exp`,
//!   `nbf`, a small leeway), and checks them against the revocations it has
//!   been told of.
//! * [`VerifierLayer`] — the main entry point: a tower layer for tonic
//!   servers that verifies every request's `authorization: Bearer`, judges
//!   it by its route's [`Policy`] (assurance level, methods, age of the
//!   proof), and puts the [`Claims`] into the request's extensions, or
//!   answers with authd's own error codes and `ErrorInfo` reasons.
//! * [`OnStale`] — what happens while the stream cannot vouch for a token
//!   (down for longer than [`VerifierConfig::with_max_staleness`], still
//!   catching up): fail closed (UNAVAILABLE), or ask authd with
//!   IntrospectToken.
//!
//! ```ignore
//! let config = VerifierConfig::new("https://auth.example.com", "my-services", service_key);
//! let verifier = Verifier::connect("http://authd:50051", config).await?;
//! Server::builder()
//!     .layer(VerifierLayer::new(verifier).exempt_prefix("/grpc.health.v1.Health/"))
//!     .add_service(GreeterServer::new(Greeter))
//!     .serve(addr)
//!     .await?;
//!
//! // In a handler:
//! let claims = request.extensions().get::<Claims>().ok_or_else(|| Status::internal("no claims"))?;
//! ```
//!
//! # Guarantees
//!
//! * Covered from its first message: the stream starts
//!   `max_token_lifetime` + 3 × leeway in the past (WatchRevocations
//!   `since`), so every revocation that can concern a token the verifier
//!   would still accept, those committed before this process started
//!   included, is delivered before the verifier vouches for anything. Until
//!   authd says the catch-up is done (its first heartbeat) the verifier is
//!   stale.
//! * A revocation reaches the verifier as fast as authd pushes it; while the
//!   stream is silent (no event, no heartbeat) for longer than
//!   `max_staleness`, no token is accepted on the strength of local state
//!   alone. So a revoked token is accepted for at most `max_staleness`
//!   after its revocation, even if the network fails silently.
//! * The stream resumes after any failure from the last event applied,
//!   on any authd replica, and misses nothing. If authd no longer has that
//!   event (an outage longer than its 24 h retention), or the event ids
//!   skip some, the verifier is stale and starts over from one token
//!   lifetime in the past, as at start.
//! * A token the stream cannot vouch for is never accepted on its signature
//!   alone: [`OnStale::FailClosed`] refuses it with UNAVAILABLE,
//!   [`OnStale::Introspect`] asks authd once per token. Two cases leave
//!   such tokens while the stream is live, each until those tokens expire:
//!   tokens issued up to an event of a kind this version does not know (a
//!   newer authd; upgrade the verifier), and, if authd refuses to go back a
//!   token lifetime (`max_token_lifetime` beyond its 24 h retention), tokens
//!   issued before the stream then started from the present.
//! * It needs an authd that knows `since` (the same release as this crate,
//!   or later): an older one ignores it and starts from the present, so
//!   upgrade authd before its verifiers.
//! * Memory is bounded: a revocation is remembered only until every token
//!   it concerns has expired (`max_token_lifetime` + leeway), and at most
//!   50 000 verified tokens are remembered to skip signature checks.

#![allow(clippy::disallowed_methods)] // a library in another service: checking a token now is its edge

mod claims;
mod config;
mod error;
mod jwks;
mod layer;
pub mod pb;
mod policy;
mod revocations;
mod stream_health;
#[cfg(test)]
mod test_keys;
mod token;
mod verifier;
mod watcher;

pub use claims::{Caller, Claims, ServiceClaims};
pub use config::{MAX_LEEWAY, OnStale, VerifierConfig};
pub use error::{ERROR_DOMAIN, Revocation, StartError, VerifyError};
pub use layer::{Verified, VerifierLayer, bearer_token};
pub use policy::{Acr, Policy};
pub use verifier::{StreamStatus, Verifier};
