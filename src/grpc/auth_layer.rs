//! The one place that reads bearer tokens: a tower layer in front of every
//! service. Which methods need one is the policy table's call
//! (`grpc::policy`), which fails closed. Verified claims travel to the
//! handler as a request extension.

use http::{HeaderMap, Request};
use tonic::Status;
use tower::Service;

use super::middleware::{BoxFuture, HttpResponse, Middleware, answer};
use super::policy::{Caller, policy_for};
use crate::crypto::jwt::{AccessTokens, VerifiedAccess};
use crate::error::{AppError, TokenProblem};

/// Whether the gRPC method at `path` needs a bearer token.
pub fn requires_bearer(path: &str) -> bool {
    policy_for(path).caller == Caller::User
}

/// Extracts and verifies `authorization: Bearer <jwt>`.
pub fn authenticate(headers: &HeaderMap, tokens: &AccessTokens) -> Result<VerifiedAccess, TokenProblem> {
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
    // The edge of the server reads the clock, like the handlers do.
    tokens.verify(token.trim(), chrono::Utc::now())
}

/// Checks the bearer of every method whose policy asks for one.
#[derive(Clone)]
pub struct BearerAuth {
    tokens: AccessTokens,
}

impl BearerAuth {
    pub fn new(tokens: AccessTokens) -> Self {
        Self { tokens }
    }
}

impl Middleware for BearerAuth {
    fn call<S, B>(&self, mut req: Request<B>, mut next: S) -> BoxFuture<HttpResponse, S::Error>
    where
        S: Service<Request<B>, Response = HttpResponse> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        if requires_bearer(req.uri().path()) {
            match authenticate(req.headers(), &self.tokens) {
                Ok(verified) => {
                    req.extensions_mut().insert(verified);
                }
                Err(problem) => return answer(Status::from(AppError::Token(problem))),
            }
        }
        Box::pin(next.call(req))
    }
}

/// The verified bearer of a request that passed the layer.
pub fn bearer<T>(req: &tonic::Request<T>) -> Result<VerifiedAccess, Status> {
    req.extensions()
        .get::<VerifiedAccess>()
        .copied()
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
        assert!(!requires_bearer(&format!(
            "/{}/Check",
            tonic_health::pb::health_server::SERVICE_NAME
        )));
    }
}
