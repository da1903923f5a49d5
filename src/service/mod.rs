//! Use cases of authd, free of gRPC types: each takes parsed or raw input and
//! the current time, and returns domain values or an `AppError`.

mod accounts;
mod admin;
mod attempts;
pub mod credentials;
pub mod factor_settings;
mod factors;
pub mod keys;
mod login;
mod passkeys;
mod profile;
mod recovery;
mod revocations;
mod session_list;
mod sessions;
pub mod ssf;
mod token_grants;
mod verification;

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;

use crate::coherence::revocation_feed::RevocationFeed;
use crate::coherence::session_cache::SessionCache;
use crate::crypto::jwt::AccessTokens;
use crate::crypto::password::PasswordHasher;
use crate::domain::{Invalid, Password, PasswordPolicy};
use crate::error::AppError;
use crate::mail::MailSettings;
use crate::metrics::Metrics;
use crate::service::keys::ServiceKeys;

pub use accounts::RegisterInput;
pub use admin::PageTokens;
pub use factor_settings::FactorSettings;
pub use factors::{Enrollment, FactorKindOrCode, MfaChallenge, Proof, SteppedUp};
pub use login::LoginAnswer;
pub use profile::{ProfileValues, UpdateMeInput};
pub use revocations::{RevocationEvent, RevocationKind, RevocationStream};
pub use session_list::OwnSession;
pub use sessions::Introspection;
pub use token_grants::GrantedToken;

/// Session lifetimes and rotation rules.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub idle_ttl: Duration,
    pub max_ttl: Duration,
    pub reuse_grace: Duration,
    /// Login refuses a correct password while the account's address is
    /// unverified (`AUTHD_REQUIRE_VERIFIED_EMAIL`).
    pub require_verified_email: bool,
}

/// A token pair as handed to a client.
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: SecretString,
    pub expires_in: Duration,
    pub refresh_expires_in: Duration,
}

/// What the use cases are built from (start-up assembles it).
pub struct CoreParts {
    pub db: PgPool,
    pub hasher: PasswordHasher,
    pub tokens: AccessTokens,
    pub policy: PasswordPolicy,
    pub sessions: SessionSettings,
    pub cache: SessionCache,
    /// Service-account keys, looked up and cached for the credential check.
    pub service_keys: ServiceKeys,
    /// Signs ListUsers page tokens.
    pub page_tokens: PageTokens,
    pub mail: MailSettings,
    pub metrics: Metrics,
    /// Wakes WatchRevocations subscribers; ends their streams at shutdown.
    pub revocation_feed: RevocationFeed,
    /// Second factors: data keys, TOTP issuer, enforcement.
    pub factors: FactorSettings,
    /// Shared Signals streams.
    pub ssf: ssf::SsfSettings,
}

/// Everything the use cases need; cheap to clone (all parts are shared).
/// Its parts are private to the use cases: the transports call use cases
/// and never reach the pool or the keys themselves.
#[derive(Clone)]
pub struct Core {
    db: PgPool,
    hasher: PasswordHasher,
    tokens: AccessTokens,
    policy: PasswordPolicy,
    sessions: SessionSettings,
    cache: SessionCache,
    /// Service-account keys, looked up and cached for the credential check.
    service_keys: ServiceKeys,
    /// Signs ListUsers page tokens.
    page_tokens: PageTokens,
    mail: MailSettings,
    metrics: Metrics,
    /// Wakes WatchRevocations subscribers; ends their streams at shutdown.
    revocation_feed: RevocationFeed,
    /// Second factors: data keys, TOTP issuer, enforcement.
    factors: FactorSettings,
    ssf: ssf::SsfSettings,
}

impl Core {
    pub fn new(parts: CoreParts) -> Self {
        let CoreParts {
            db,
            hasher,
            tokens,
            policy,
            sessions,
            cache,
            service_keys,
            page_tokens,
            mail,
            metrics,
            revocation_feed,
            factors,
            ssf,
        } = parts;
        Self {
            db,
            hasher,
            tokens,
            policy,
            sessions,
            cache,
            service_keys,
            page_tokens,
            mail,
            metrics,
            revocation_feed,
            factors,
            ssf,
        }
    }

    /// Counts calls on the metrics page.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The public keys that verify access tokens (GetJwks).
    pub fn public_keys(&self) -> impl Iterator<Item = &crate::crypto::keys::PublicJwk> {
        self.tokens.jwks()
    }

    /// The public keys as a JSON JWK set (GetJwks).
    pub fn jwks_json(&self) -> &str {
        self.tokens.jwks_json()
    }

    /// The issuer tokens name (the base of the HTTP face's URLs).
    pub fn issuer(&self) -> &str {
        self.tokens.issuer()
    }

    /// The JOSE name of the algorithm tokens are signed with.
    pub fn signing_algorithm(&self) -> &'static str {
        match self.tokens.signing_algorithm() {
            jsonwebtoken::Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        }
    }

    /// The service-key lookup a long-lived stream re-checks its key with.
    pub fn service_keys(&self) -> &ServiceKeys {
        &self.service_keys
    }
}

impl Core {
    /// Applies the password policy on the blocking pool: its strength
    /// estimate costs milliseconds of CPU on long inputs.
    pub async fn check_new_password(
        &self,
        input: &str,
        identifiers: &[&str],
    ) -> Result<Result<Password, Invalid>, AppError> {
        let policy = self.policy.clone();
        let input = input.to_owned();
        let identifiers: Vec<String> = identifiers.iter().map(|s| (*s).to_owned()).collect();
        self.hasher
            .run(move || {
                let ids: Vec<&str> = identifiers.iter().map(String::as_str).collect();
                policy.parse_new(&input, &ids)
            })
            .await
    }
}

/// `chrono::Duration` from a configured `std::time::Duration`, saturating.
fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Time from `now` until `then` in whole seconds, rounded to the nearest
/// (the database keeps microseconds, so exact lifetimes come back a hair
/// short), never negative.
fn seconds_until(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    let millis = (then - now).num_milliseconds().max(0);
    Duration::from_secs(u64::try_from((millis + 500) / 1000).unwrap_or(0))
}

impl Core {
    /// Gives every change committed before now its event id. Events are
    /// numbered just after their commit (`jobs::event_numbering`), so one
    /// committed a moment ago might still be waiting: a read of "the log's
    /// present" (a stream's start, a poll that answers at once) calls this
    /// first so that it leaves out, or hands out, all of them. One
    /// statement when nothing is pending.
    async fn number_committed_events(&self) -> Result<(), AppError> {
        crate::db::revocations::number_all_pending(&self.db, crate::db::revocations::NUMBERING_BATCH)
            .await
            .map(|_| ())
    }
}

/// A transaction bounded by the call that runs it (`db::calls`): its
/// statements end when the call is abandoned (cancelled by the client, or
/// past its deadline) instead of holding a pooled connection behind a
/// lock. Outside a call (background work), a plain transaction.
async fn begin(db: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let Some((call, left)) = crate::deadline::current_call() else {
        return db.begin().await;
    };
    let pool = db.clone();
    crate::deadline::on_abandon_once("postgres", move || {
        tokio::spawn(async move {
            match crate::db::calls::cancel(&pool, call).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(cancelled = n, "statements of an abandoned call cancelled"),
                Err(e) => tracing::warn!(error = %e, "could not cancel an abandoned call's statements"),
            }
        });
    });
    crate::db::calls::begin(db, call, left).await
}
