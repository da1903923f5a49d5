//! The one place that reads bearer tokens: a tower layer in front of every
//! service. Methods of `auth.v1.AuthService` need a valid access token unless
//! they are listed as public, so a new RPC is protected by default. Verified
//! claims travel to the handler as a request extension.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use crate::crypto::jwt::{AccessTokens, VerifiedAccess};
use crate::error::{AppError, TokenProblem};

const SERVICE_PREFIX: &str = "/auth.v1.AuthService/";
const PUBLIC_METHODS: &[&str] = &[
    "Register",
    "Login",
    "Refresh",
    "Logout",
    "ForgotPassword",
    "ResetPassword",
    "GetJwks",
    "IntrospectToken",
];

/// Whether the gRPC method at `path` needs a bearer token.
pub fn requires_bearer(path: &str) -> bool {
    path.strip_prefix(SERVICE_PREFIX)
        .is_some_and(|method| !PUBLIC_METHODS.contains(&method))
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
    tokens.verify(token.trim())
}

#[derive(Clone)]
pub struct BearerAuthLayer {
    tokens: AccessTokens,
}

impl BearerAuthLayer {
    pub fn new(tokens: AccessTokens) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    tokens: AccessTokens,
}

pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if requires_bearer(req.uri().path()) {
            match authenticate(req.headers(), &self.tokens) {
                Ok(verified) => {
                    req.extensions_mut().insert(verified);
                }
                Err(problem) => {
                    let status = Status::from(AppError::Token(problem));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
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

    #[test]
    fn only_private_methods_of_auth_service_need_a_bearer() {
        assert!(requires_bearer("/auth.v1.AuthService/GetMe"));
        assert!(requires_bearer("/auth.v1.AuthService/ChangePassword"));
        assert!(requires_bearer("/auth.v1.AuthService/SomethingNew"));
        assert!(!requires_bearer("/auth.v1.AuthService/Login"));
        assert!(!requires_bearer("/grpc.health.v1.Health/Check"));
    }
}
