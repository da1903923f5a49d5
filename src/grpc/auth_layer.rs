//! The one place that reads credentials: a tower layer in front of every
//! service. What each method needs is the policy table's call
//! (`grpc::policy`), which fails closed: nothing, a user's access token, or
//! a service key with a scope. The verified caller travels to the handler as
//! a request extension.
//!
//! Failed service-key checks are limited per client address, in memory: a
//! made-up key costs a database read, and the point of the limit is that a
//! client past it costs none, so its count cannot live in the database. The
//! count is per replica (a client spread over replicas gets the limit at
//! each), which is what matters here: each replica has its own pool to
//! protect.

// The bearer check is an edge: a credential is judged at the call's arrival.
#![allow(clippy::disallowed_methods)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderName;
use http::{HeaderMap, Request};
use tonic::Status;
use tower::Service;

use super::middleware::{BoxFuture, HttpResponse, Middleware, answer};
use super::policy::{Caller, allowed_during_enrollment, policy_for};
use super::rate_limit::{PeerLimiter, peer_address};
use crate::domain::Scope;
use crate::error::{AppError, TokenProblem};
use crate::metrics::{Metrics, ThrottleKind};
use crate::service::credentials::{Credentials, VerifiedAccess};
use crate::service::keys::ServiceIdentity;

/// Whether the gRPC method at `path` needs a credential (a user's token or
/// a service's).
pub fn requires_bearer(path: &str) -> bool {
    policy_for(path).caller != Caller::Anyone
}

/// The token of `authorization: Bearer <token>`: exactly one header, the
/// scheme in any case.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenProblem> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(TokenProblem::Missing);
    };
    // Two authorization headers are ambiguous; refuse rather than pick one.
    if values.next().is_some() {
        return Err(TokenProblem::Invalid);
    }
    let value = value.to_str().map_err(|_| TokenProblem::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenProblem::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenProblem::Invalid);
    }
    Ok(token.trim())
}

/// Extracts and verifies a user's `authorization: Bearer <jwt>`.
pub fn authenticate(headers: &HeaderMap, credentials: &Credentials) -> Result<VerifiedAccess, TokenProblem> {
    // The edge of the server reads the clock, like the handlers do.
    credentials.user(bearer_token(headers)?, chrono::Utc::now())
}

/// Checks the credential of every method whose policy asks for one.
#[derive(Clone)]
pub struct BearerAuth {
    credentials: Credentials,
    failures: Option<FailureLimit>,
}

/// Failed service-key checks per client address.
#[derive(Clone)]
struct FailureLimit {
    limiter: Arc<PeerLimiter>,
    trusted_header: Option<HeaderName>,
    metrics: Metrics,
}

impl BearerAuth {
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            failures: None,
        }
    }

    /// After `per_minute` failed service-key checks (a burst, then that
    /// rate), a client address's further key checks are answered from
    /// memory only: a key this replica holds as live still works (a proxy
    /// shared with a prober must not lock every service out), anything else
    /// is RESOURCE_EXHAUSTED with the wait. 0: no limit.
    pub fn with_failure_limit(
        mut self,
        per_minute: u32,
        trusted_header: Option<HeaderName>,
        metrics: Metrics,
    ) -> Self {
        self.failures = (per_minute > 0).then(|| FailureLimit {
            limiter: Arc::new(PeerLimiter::with_burst(
                f64::from(per_minute) / 60.0,
                f64::from(per_minute),
            )),
            trusted_header,
            metrics,
        });
        self
    }
}

impl BearerAuth {
    /// A service's credential presented outside gRPC metadata (the HTTP
    /// face's client authentication), judged and limited the same way;
    /// refusals other than throttling are audited like the layer's.
    pub async fn check_service(
        &self,
        presented: &str,
        scope: Option<Scope>,
        peer: Option<IpAddr>,
        endpoint: &str,
    ) -> Result<Arc<ServiceIdentity>, AppError> {
        let limit = self.failures.clone().and_then(|limit| Some((limit, peer?)));
        match check_limited(&self.credentials, presented, scope, limit).await {
            Ok(identity) => Ok(identity),
            Err((_, AppError::Throttled(wait))) => Err(AppError::Throttled(wait)),
            // A user's token is no client at all: OAuth clients branch on
            // invalid_client (RFC 6749 §5.2), not on a missing permission.
            Err((None, AppError::MissingScope(_))) => {
                let refusal = AppError::Token(TokenProblem::Invalid);
                audit_refusal(endpoint, None, &refusal);
                Err(refusal)
            }
            Err((who, refusal)) => {
                audit_refusal(endpoint, who.as_deref(), &refusal);
                Err(refusal)
            }
        }
    }

    /// The client address the failure limit counts `req` under.
    pub fn peer_of<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let header = self
            .failures
            .as_ref()
            .and_then(|limit| limit.trusted_header.as_ref());
        peer_address(req, header)
    }
}

impl Middleware for BearerAuth {
    fn call<S, B>(&self, mut req: Request<B>, mut next: S) -> BoxFuture<HttpResponse, S::Error>
    where
        S: Service<Request<B>, Response = HttpResponse> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        match policy_for(req.uri().path()).caller {
            Caller::Anyone => Box::pin(next.call(req)),
            Caller::User => match authenticate(req.headers(), &self.credentials) {
                // An account that must enrol a second factor may do that and
                // little else until it has (AUTHD_REQUIRE_MFA).
                Ok(verified)
                    if verified.mfa_enrollment_required && !allowed_during_enrollment(req.uri().path()) =>
                {
                    answer(Status::from(AppError::MfaEnrollmentRequired))
                }
                Ok(verified) => {
                    req.extensions_mut().insert(verified);
                    Box::pin(next.call(req))
                }
                Err(problem) => answer(Status::from(AppError::Token(problem))),
            },
            Caller::Service(_) | Caller::AnyService => {
                let scope = match policy_for(req.uri().path()).caller {
                    Caller::Service(scope) => Some(scope),
                    _ => None,
                };
                let method = req.uri().path().to_owned();
                let presented = match bearer_token(req.headers()) {
                    Ok(token) => token.to_owned(),
                    Err(problem) => return answer(refused(&method, None, AppError::Token(problem))),
                };
                let credentials = self.credentials.clone();
                let limit = self.failures.clone().and_then(|limit| {
                    let peer = peer_address(&req, limit.trusted_header.as_ref())?;
                    Some((limit, peer))
                });
                Box::pin(async move {
                    match check_limited(&credentials, &presented, scope, limit).await {
                        Ok(identity) => {
                            req.extensions_mut().insert(identity);
                            next.call(req).await
                        }
                        Err((_, AppError::Throttled(wait))) => {
                            // Not audited line by line: a client past its
                            // limit could flood the log instead.
                            Ok(Status::from(AppError::Throttled(wait)).into_http())
                        }
                        Err((who, refusal)) => Ok(refused(&method, who.as_deref(), refusal).into_http()),
                    }
                })
            }
        }
    }
}

type Checked = Result<Arc<ServiceIdentity>, (Option<String>, AppError)>;

/// [`check`] under the client's failure limit: past it, memory only; a
/// credential that is no live service's counts against it.
async fn check_limited(
    credentials: &Credentials,
    presented: &str,
    scope: Option<Scope>,
    limit: Option<(FailureLimit, IpAddr)>,
) -> Checked {
    let Some((limit, peer)) = limit else {
        return check(credentials, presented, scope).await;
    };
    if let Err(wait) = limit.limiter.available(peer, Instant::now()) {
        return match credentials.service_in_memory(presented, chrono::Utc::now()) {
            Some(identity) => with_scope(identity, scope),
            None => {
                limit.metrics.throttled(ThrottleKind::ServiceAuth);
                Err((None, AppError::Throttled(wait)))
            }
        };
    }
    let checked = check(credentials, presented, scope).await;
    if let Err((_, AppError::Token(_))) = &checked {
        // The bucket may have emptied meanwhile; this failure is counted
        // all the same by the refusal it gets.
        let _ = limit.limiter.try_acquire(peer, Instant::now());
    }
    checked
}

/// The credential's service, if it may call a method needing `scope`
/// (`None`: any service); else the refusal, with the service's name when
/// the credential is real.
async fn check(credentials: &Credentials, presented: &str, scope: Option<Scope>) -> Checked {
    let now = chrono::Utc::now();
    match credentials.service(presented, now).await.map_err(|e| (None, e))? {
        Some(identity) => with_scope(identity, scope),
        None => Err((
            None,
            credentials.refusal_of(presented, scope.unwrap_or(Scope::TokensExchange), now),
        )),
    }
}

fn with_scope(identity: Arc<ServiceIdentity>, scope: Option<Scope>) -> Checked {
    match scope {
        Some(scope) if !identity.may(scope) => {
            Err((Some(identity.name.clone()), AppError::MissingScope(scope)))
        }
        _ => Ok(identity),
    }
}

/// A refused call of a service method goes to the audit log too: probing
/// AdminService with a wrong or weak key is what an operator wants to see.
fn refused(method: &str, service_account: Option<&str>, refusal: AppError) -> Status {
    audit_refusal(method, service_account, &refusal);
    Status::from(refusal)
}

fn audit_refusal(method: &str, service_account: Option<&str>, refusal: &AppError) {
    tracing::warn!(
        target: "authd::audit",
        service_account = service_account.unwrap_or("-"),
        method,
        outcome = "refused",
        reason = %refusal,
        "service call refused"
    );
}

/// The service that called, for a method that needs a service key.
pub fn service_caller<T>(req: &tonic::Request<T>) -> Result<Arc<ServiceIdentity>, Status> {
    req.extensions()
        .get::<Arc<ServiceIdentity>>()
        .cloned()
        .ok_or_else(|| AppError::Token(TokenProblem::Missing).into())
}

/// The verified bearer of a request that passed the layer.
pub fn bearer<T>(req: &tonic::Request<T>) -> Result<VerifiedAccess, Status> {
    req.extensions()
        .get::<VerifiedAccess>()
        .cloned()
        .ok_or_else(|| AppError::Token(TokenProblem::Missing).into())
}

#[cfg(test)]
mod tests {
    use super::requires_bearer;
    use crate::pb::paths::auth_service as auth;

    #[test]
    fn only_private_methods_of_auth_service_need_a_bearer() {
        assert!(requires_bearer(auth::GET_ME));
        assert!(requires_bearer(auth::CHANGE_PASSWORD));
        assert!(requires_bearer(&format!(
            "/{}/SomethingNew",
            crate::pb::auth::v1::auth_service_server::SERVICE_NAME
        )));
        assert!(!requires_bearer(auth::LOGIN));
        assert!(requires_bearer(auth::INTROSPECT_TOKEN), "a service key");
        assert!(!requires_bearer(&format!(
            "/{}/Check",
            tonic_health::pb::health_server::SERVICE_NAME
        )));
    }
}
