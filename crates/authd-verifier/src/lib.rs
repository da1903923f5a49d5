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
//!   `nbf`, a small leeway), and checks users' tokens against the
//!   revocations it has been told of.
//! * [`VerifierLayer`] — the main entry point: a tower layer for tonic
//!   servers that verifies every request's `authorization: Bearer`, judges
//!   it by its route's [`Policy`] (the kind of token, its audience, the
//!   assurance level, methods and age of a user's proof, a service's
//!   scopes), and puts the [`Caller`] into the request's extensions with
//!   either the [`Claims`] of a user's token (the actors, if a service
//!   calls for the user: [`Claims::actors`]) or the [`ServiceClaims`] of a
//!   service's own, or answers with authd's own error codes and
//!   `ErrorInfo` reasons.
//! * [`OnStale`] — what happens while the stream cannot vouch for a token
//!   (down for longer than [`VerifierConfig::with_max_staleness`], still
//!   catching up): fail closed (UNAVAILABLE), or ask authd with
//!   IntrospectToken.
//!
//! ```ignore
//! let config = VerifierConfig::new("https://auth.example.com", "orders", service_key);
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
//! * A token is one kind or refused: a user's (with a session, perhaps
//!   exchanged by services acting for the user) or a service's own (client
//!   credentials, no session). The two shapes exclude each other, each is
//!   its own type, and a route admits users' tokens only unless its policy
//!   says otherwise; a kind a route does not admit is `TOKEN_INVALID` there.
//! * A token is accepted only on routes of its audience: the configured one
//!   unless the route's policy names another the verifier accepts; any
//!   other `aud` is `TOKEN_INVALID`, decided before the revocation stream
//!   or authd is consulted.
//! * An exchanged token keeps its user's session, so what ends the session
//!   (Logout, a password change, disabling the account) ends it here as it
//!   ends the login's token, by the guarantees below.
//! * A service's own token has no session: the revocation stream cannot end
//!   it, so it is accepted until its `exp`, which lies at most
//!   `max_service_token_lifetime` (5 minutes, authd's
//!   `AUTHD_SERVICE_TOKEN_TTL`) after its issue (a longer-lived one is
//!   refused), also while the stream is stale and after authd deleted the
//!   key that obtained it. The guarantees below are about users' tokens.
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
