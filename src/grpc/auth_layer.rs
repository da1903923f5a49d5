//! The one place that reads credentials: a tower layer in front of every
//! service. What each method needs is the policy table's call
//! (`grpc::policy`), which fails closed: nothing, a user's access token, or
//! a service key with a scope. The verified caller travels to the handler as
//! a request extension.

use std::sync::Arc;

use http::{HeaderMap, Request};
use tonic::Status;
use tower::Service;

use super::middleware::{BoxFuture, HttpResponse, Middleware, answer};
use super::policy::{Caller, policy_for};
use crate::crypto::jwt::{AccessTokens, VerifiedAccess};
use crate::domain::Scope;
use crate::error::{AppError, TokenProblem};
use crate::service_keys::{ServiceIdentity, ServiceKeys};

/// Whether the gRPC method at `path` needs a credential (a user's token or
/// a service key).
pub fn requires_bearer(path: &str) -> bool {
    policy_for(path).caller != Caller::Anyone
}

/// The token of `authorization: Bearer <token>`: exactly one header, the
/// scheme in any case.
fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenProblem> {
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
pub fn authenticate(headers: &HeaderMap, tokens: &AccessTokens) -> Result<VerifiedAccess, TokenProblem> {
    // The edge of the server reads the clock, like the handlers do.
    tokens.verify(bearer_token(headers)?, chrono::Utc::now())
}

/// A service key's prefix; anything else presented to a service method is
/// taken for a user's token.
const SERVICE_KEY_PREFIX: &str = "sk_";

/// Checks the credential of every method whose policy asks for one.
#[derive(Clone)]
pub struct BearerAuth {
    tokens: AccessTokens,
    keys: ServiceKeys,
}

impl BearerAuth {
    pub fn new(tokens: AccessTokens, keys: ServiceKeys) -> Self {
        Self { tokens, keys }
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
            Caller::User => match authenticate(req.headers(), &self.tokens) {
                Ok(verified) => {
                    req.extensions_mut().insert(verified);
                    Box::pin(next.call(req))
                }
                Err(problem) => answer(Status::from(AppError::Token(problem))),
            },
            Caller::Service(scope) => {
                let method = req.uri().path().to_owned();
                let presented = match bearer_token(req.headers()) {
                    Ok(token) => token.to_owned(),
                    Err(problem) => return answer(refused(&method, None, AppError::Token(problem))),
                };
                if !presented.starts_with(SERVICE_KEY_PREFIX) {
                    // A user's valid access token has no scopes; anything
                    // else is not a credential at all.
                    let refusal = match self.tokens.verify(&presented, chrono::Utc::now()) {
                        Ok(_) => AppError::MissingScope(scope),
                        Err(problem) => AppError::Token(problem),
                    };
                    return answer(refused(&method, None, refusal));
                }
                let keys = self.keys.clone();
                Box::pin(async move {
                    match check_key(&keys, &presented, scope).await {
                        Ok(identity) => {
                            req.extensions_mut().insert(identity);
                            next.call(req).await
                        }
                        Err((who, refusal)) => Ok(refused(&method, who.as_deref(), refusal).into_http()),
                    }
                })
            }
        }
    }
}

/// The key's service, if it may call a method needing `scope`; else the
/// refusal, with the service's name when the key is real.
async fn check_key(
    keys: &ServiceKeys,
    presented: &str,
    scope: Scope,
) -> Result<Arc<ServiceIdentity>, (Option<String>, AppError)> {
    let identity = keys
        .identify(presented, chrono::Utc::now())
        .await
        .map_err(|e| (None, e))?
        .ok_or((None, AppError::Token(TokenProblem::Invalid)))?;
    if identity.may(scope) {
        Ok(identity)
    } else {
        Err((Some(identity.name.clone()), AppError::MissingScope(scope)))
    }
}

/// A refused call of a service method goes to the audit log too: probing
/// AdminService with a wrong or weak key is what an operator wants to see.
fn refused(method: &str, service_account: Option<&str>, refusal: AppError) -> Status {
    tracing::warn!(
        target: "authd::audit",
        service_account = service_account.unwrap_or("-"),
        method,
        outcome = "refused",
        reason = %refusal,
        "service call refused"
    );
    Status::from(refusal)
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
