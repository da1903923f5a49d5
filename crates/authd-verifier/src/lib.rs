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
//!   (RFC 8725: the algorithm pinned per key, `typ: at+jwt`, `iss`, `aud`,
//!   `exp`, `nbf`, a small leeway), and checks them against the revocations
//!   it has been told of.
//! * [`VerifierLayer`] — the main entry point: a tower layer for tonic
//!   servers that verifies every request's `authorization: Bearer` and puts
//!   the [`Claims`] into the request's extensions, or answers with authd's
//!   own error codes and `ErrorInfo` reasons.
//! * [`OnStale`] — what happens while the stream is down for longer than
//!   [`VerifierConfig::with_max_staleness`]: fail closed (UNAVAILABLE), or
//!   ask authd with IntrospectToken per call.
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
//! * A revocation reaches the verifier as fast as authd pushes it; while the
//!   stream is silent (no event, no heartbeat) for longer than
//!   `max_staleness`, no token is accepted on the strength of local state
//!   alone. So a revoked token is accepted for at most `max_staleness`
//!   after its revocation, even if the network fails silently.
//! * The stream resumes after any failure from the last event applied,
//!   on any authd replica, and misses nothing. If authd no longer has that
//!   event (an outage longer than its 24 h retention), the verifier is
//!   stale until it has started again from the present.
//! * Revocations committed before the stream (re)started from the present
//!   (at start, or after an expired cursor) were never delivered. With
//!   [`OnStale::Introspect`], tokens issued before that moment are
//!   introspected once each; with [`OnStale::FailClosed`] they are judged
//!   on their signature and claims alone, as a keys-only verifier would.
//! * Memory is bounded: a revocation is remembered only until every token
//!   it concerns has expired (`max_token_lifetime` + leeway), and at most
//!   50 000 verified tokens are remembered to skip signature checks.

mod claims;
mod config;
mod error;
mod jwks;
mod layer;
pub mod pb;
mod revocations;
mod stream_health;
#[cfg(test)]
mod test_keys;
mod token;
mod verifier;
mod watcher;

pub use claims::Claims;
pub use config::{MAX_LEEWAY, OnStale, VerifierConfig};
pub use error::{ERROR_DOMAIN, Revocation, StartError, VerifyError};
pub use layer::{Verified, VerifierLayer, bearer_token};
pub use verifier::{StreamStatus, Verifier};
