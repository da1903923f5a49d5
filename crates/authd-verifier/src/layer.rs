//! The tower layer that puts the verifier in front of a tonic server's
//! services: no handler runs for a request whose token is refused.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::claims::{Caller, Claims, ServiceClaims};
use crate::error::VerifyError;
use crate::policy::Policy;
use crate::verifier::Verifier;

/// Verifies the `authorization: Bearer <access token>` of every request,
/// and what the request's route requires of it ([`Policy`]: the kind of
/// token, its audience, its assurance or scopes). On success the
/// [`Caller`] goes into the request's extensions, and with it the
/// [`Claims`](crate::Claims) of a user's token or the
/// [`ServiceClaims`](crate::ServiceClaims) of a service's own, and the
/// inner service is called; on failure the layer answers with the gRPC
/// error itself (UNAUTHENTICATED with `ErrorInfo` reason `TOKEN_MISSING`,
/// `TOKEN_INVALID`, `TOKEN_EXPIRED` or `SESSION_REVOKED`;
/// FAILED_PRECONDITION `REAUTHENTICATION_REQUIRED` or
/// `MFA_ENROLLMENT_REQUIRED`; PERMISSION_DENIED `MISSING_SCOPE`; or
/// UNAVAILABLE) and the inner service never sees the request. A handler
/// that reads `Claims` therefore never runs for a service's own token, and
/// one that reads `ServiceClaims` never for a user's.
///
/// ```ignore
/// let fresh_aal2 = Policy::new().require_acr(Acr::Aal2).max_age(Duration::from_secs(600));
/// Server::builder()
///     .layer(
///         VerifierLayer::new(verifier)
///             .exempt_prefix("/grpc.health.v1.Health/")
///             .route("/bank.v1.Payments/", fresh_aal2)        // the whole service
///             .route("/bank.v1.Payments/ListPayments", Policy::new()) // but this method
///             .route("/bank.v1.Settlement/", Policy::services().require_scope("settle")),
///     )
///     .add_service(MyServiceServer::new(MyService))
///     .serve(addr)
///     .await?;
/// ```
#[derive(Clone)]
pub struct VerifierLayer {
    verifier: Verifier,
    exempt: Arc<[String]>,
    routes: Arc<Routes>,
}

/// The policy of each route: an exact method path wins over the longest
/// service prefix, which wins over the default.
#[derive(Debug, Clone, Default)]
struct Routes {
    methods: HashMap<String, Policy>,
    /// Longest first.
    prefixes: Vec<(String, Policy)>,
    default: Policy,
}

impl Routes {
    fn policy_for(&self, path: &str) -> &Policy {
        if let Some(policy) = self.methods.get(path) {
            return policy;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or(&self.default, |(_, policy)| policy)
    }
}

impl VerifierLayer {
    /// Every request must carry a valid access token, judged by
    /// [`Policy::default`] unless a route says otherwise.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            exempt: Arc::from(Vec::new()),
            routes: Arc::new(Routes::default()),
        }
    }

    /// Requests to `route` are judged by `policy`: a method path
    /// (`/pkg.Service/Method`), or a service prefix ending in `/`
    /// (`/pkg.Service/`). A method's own policy wins over its service's,
    /// a longer prefix over a shorter one. Setting a route again replaces
    /// its policy.
    pub fn route(mut self, route: impl Into<String>, policy: Policy) -> Self {
        let route = route.into();
        warn_unless_accepted(&self.verifier, &route, &policy);
        let routes = Arc::make_mut(&mut self.routes);
        if route.ends_with('/') {
            routes.prefixes.retain(|(prefix, _)| *prefix != route);
            routes.prefixes.push((route, policy));
            routes
                .prefixes
                .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        } else {
            routes.methods.insert(route, policy);
        }
        self
    }

    /// The policy of every route no [`VerifierLayer::route`] names
    /// (initially [`Policy::default`]).
    pub fn default_policy(mut self, policy: Policy) -> Self {
        warn_unless_accepted(&self.verifier, "(default)", &policy);
        Arc::make_mut(&mut self.routes).default = policy;
        self
    }

    /// Requests whose path starts with `prefix` pass without a token, e.g.
    /// `/grpc.health.v1.Health/` or `/grpc.reflection.`. Repeatable.
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut exempt = self.exempt.to_vec();
        exempt.push(prefix.into());
        self.exempt = Arc::from(exempt);
        self
    }
}

/// A policy naming an audience the verifier does not accept refuses every
/// token: most likely a forgotten `with_additional_audience`, so say so
/// when the layer is built rather than per request.
fn warn_unless_accepted(verifier: &Verifier, route: &str, policy: &Policy) {
    if let Some(audience) = policy.audience()
        && !verifier.accepts_audience(audience)
    {
        tracing::error!(
            route,
            audience,
            "this route requires an audience the verifier does not accept, so it refuses every token; \
             add it with VerifierConfig::with_additional_audience"
        );
    }
}

impl<S> Layer<S> for VerifierLayer {
    type Service = Verified<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Verified {
            inner,
            verifier: self.verifier.clone(),
            exempt: Arc::clone(&self.exempt),
            routes: Arc::clone(&self.routes),
        }
    }
}

/// The service [`VerifierLayer`] wraps around an inner one.
#[derive(Clone)]
pub struct Verified<S> {
    inner: S,
    verifier: Verifier,
    exempt: Arc<[String]>,
    routes: Arc<Routes>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Verified<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if self.exempt.iter().any(|prefix| path.starts_with(prefix.as_str())) {
            return Box::pin(ready.call(request));
        }
        let verifier = self.verifier.clone();
        let routes = Arc::clone(&self.routes);
        Box::pin(async move {
            let policy = routes.policy_for(request.uri().path());
            let verified = match bearer_token(request.headers()) {
                Ok(token) => verifier.verify_caller(token, policy).await,
                Err(refusal) => Err(refusal),
            };
            match verified {
                Ok(caller) => {
                    let extensions = request.extensions_mut();
                    // Only this token's kind may be found: nothing an outer
                    // layer left under the other kind's type.
                    extensions.remove::<Claims>();
                    extensions.remove::<ServiceClaims>();
                    match &caller {
                        Caller::User(claims) => extensions.insert(claims.clone()).map(drop),
                        Caller::Service(claims) => extensions.insert(claims.clone()).map(drop),
                    };
                    extensions.insert(caller);
                    ready.call(request).await
                }
                Err(refusal) => {
                    tracing::debug!(
                        path = request.uri().path(),
                        reason = refusal.reason(),
                        "request refused: {refusal}"
                    );
                    Ok(refusal.to_status().into_http())
                }
            }
        })
    }
}

/// The token of `authorization: Bearer <token>`: exactly one such header,
/// the scheme in any letter case.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, VerifyError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(VerifyError::Missing);
    };
    // Two authorization headers are ambiguous; refuse rather than pick one.
    if values.next().is_some() {
        return Err(VerifyError::Invalid);
    }
    let value = value.to_str().map_err(|_| VerifyError::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(VerifyError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(VerifyError::Invalid);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use http::HeaderValue;
    use tower::{ServiceExt as _, service_fn};

    use super::*;
    use crate::claims::{Claims, unix_now};
    use crate::config::OnStale;
    use crate::policy::Acr;
    use crate::test_keys::{TestKey, claims_json, service_claims_json};
    use crate::verifier::test_shared;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(http::header::AUTHORIZATION, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn the_bearer_token_is_read_from_exactly_one_header() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&[])), Err(VerifyError::Missing));
        assert_eq!(bearer_token(&headers(&["Basic abc"])), Err(VerifyError::Invalid));
        assert_eq!(bearer_token(&headers(&["Bearer"])), Err(VerifyError::Invalid));
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(VerifyError::Invalid)
        );
    }

    /// An inner service that answers with the user the layer verified, or
    /// `none`.
    fn echo_user() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(|request: Request<()>| async move {
            let user = request
                .extensions()
                .get::<Claims>()
                .map_or_else(|| "none".to_owned(), |c| c.user_id().to_owned());
            Ok::<_, Infallible>(Response::new(user))
        })
    }

    fn request(path: &str, authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(path);
        if let Some(value) = authorization {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
        builder.body(()).expect("a request")
    }

    /// The gRPC status code of an answer the layer gave itself.
    fn grpc_status(response: &Response<String>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn verified_claims_reach_the_inner_service_and_refusals_never_do() {
        let key = TestKey::ed25519();
        let verifier = Verifier::without_tasks(test_shared(&key, OnStale::FailClosed));
        let now = SystemTime::now();
        verifier.shared().health.covered_from(UNIX_EPOCH, Instant::now());
        let token = key.sign(&claims_json(unix_now(now), 900));
        let layer = VerifierLayer::new(verifier).exempt_prefix("/grpc.health.v1.Health/");
        let service = layer.layer(echo_user());

        let ok = service
            .clone()
            .oneshot(request("/svc.Api/Get", Some(&format!("Bearer {token}"))))
            .await
            .expect("infallible");
        assert_eq!(ok.body(), "user-1");
        assert_eq!(grpc_status(&ok), None, "answered by the inner service");

        let missing = service
            .clone()
            .oneshot(request("/svc.Api/Get", None))
            .await
            .expect("infallible");
        assert_eq!(missing.body(), "", "the inner service never ran");
        assert_eq!(grpc_status(&missing), Some("16"), "UNAUTHENTICATED");
        let status = tonic::Status::from_header_map(missing.headers()).expect("a status");
        assert_eq!(VerifyError::Missing.to_status().details(), status.details());

        let forged = service
            .clone()
            .oneshot(request("/svc.Api/Get", Some("Bearer not.a.token")))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&forged), Some("16"));

        let exempt = service
            .oneshot(request("/grpc.health.v1.Health/Check", None))
            .await
            .expect("infallible");
        assert_eq!(exempt.body(), "none", "exempt paths pass without a token");
    }

    #[tokio::test]
    async fn each_route_is_judged_by_its_own_policy() {
        let key = TestKey::ed25519();
        let verifier = Verifier::without_tasks(test_shared(&key, OnStale::FailClosed));
        verifier.shared().health.covered_from(UNIX_EPOCH, Instant::now());
        let token = key.sign(&claims_json(unix_now(SystemTime::now()), 900));
        let aal2 = Policy::new()
            .require_acr(Acr::Aal2)
            .max_age(std::time::Duration::from_secs(300));
        let layer = VerifierLayer::new(verifier)
            .route("/bank.Payments/", aal2.clone())
            .route("/bank.Payments/List", Policy::new())
            .route("/bank.Payments/Admin/", Policy::new().require_amr("hwk"))
            .route("/bank.Keys/Rotate", aal2);
        let service = layer.layer(echo_user());
        let call = |path: &'static str| {
            service
                .clone()
                .oneshot(request(path, Some(&format!("Bearer {token}"))))
        };
        for path in [
            "/bank.Payments/Send",
            "/bank.Keys/Rotate",
            "/bank.Payments/Admin/X",
        ] {
            let refused = call(path).await.expect("infallible");
            assert_eq!(refused.body(), "", "{path}: the inner service never ran");
            assert_eq!(grpc_status(&refused), Some("9"), "{path}: FAILED_PRECONDITION");
            let status = tonic::Status::from_header_map(refused.headers()).expect("a status");
            let info = tonic_types::StatusExt::get_details_error_info(&status).expect("an ErrorInfo");
            assert_eq!(info.reason, "REAUTHENTICATION_REQUIRED");
        }
        let refused = call("/bank.Payments/Send").await.expect("infallible");
        let status = tonic::Status::from_header_map(refused.headers()).expect("a status");
        let info = tonic_types::StatusExt::get_details_error_info(&status).expect("an ErrorInfo");
        assert_eq!(info.metadata.get("max_age").map(String::as_str), Some("300"));
        for path in ["/bank.Payments/List", "/bank.Keys/List", "/other.Api/Get"] {
            let ok = call(path).await.expect("infallible");
            assert_eq!(ok.body(), "user-1", "{path}");
        }
    }

    /// An inner service that answers with what the layer put into the
    /// extensions: `user:ID`, `service:NAME`, or `none`, and whether a
    /// `Caller` came with it.
    fn echo_caller()
    -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(|request: Request<()>| async move {
            let extensions = request.extensions();
            let user = extensions
                .get::<Claims>()
                .map(|c| format!("user:{}", c.user_id()));
            let service = extensions
                .get::<ServiceClaims>()
                .map(|c| format!("service:{}", c.client_id()));
            let seen = match (user, service, extensions.get::<Caller>()) {
                (Some(user), None, Some(Caller::User(_))) => user,
                (None, Some(service), Some(Caller::Service(_))) => service,
                (None, None, None) => "none".to_owned(),
                _ => "inconsistent".to_owned(),
            };
            Ok::<_, Infallible>(Response::new(seen))
        })
    }

    #[tokio::test]
    async fn routes_admit_users_or_services_for_their_own_audience() {
        let key = TestKey::ed25519();
        let verifier = Verifier::without_tasks(test_shared(&key, OnStale::FailClosed));
        verifier.shared().health.covered_from(UNIX_EPOCH, Instant::now());
        let now = unix_now(SystemTime::now());
        let user = key.sign(&claims_json(now, 900));
        let service = key.sign(&service_claims_json(now, 300, "reports", "invoices.read"));
        let admin_user = key.sign(&{
            let mut c = claims_json(now, 900);
            c["aud"] = "svc-admin".into();
            c
        });
        let layer = VerifierLayer::new(verifier)
            .route(
                "/svc.Internal/",
                Policy::services().require_scope("invoices.read"),
            )
            .route(
                "/svc.Internal/Write",
                Policy::services().require_scope("invoices.write"),
            )
            .route("/svc.Mixed/", Policy::new().allow_services())
            .route("/svc.Admin/", Policy::new().require_audience("svc-admin"));
        let service_fn = layer.layer(echo_caller());
        let call = |path: &'static str, token: &str| {
            service_fn
                .clone()
                .oneshot(request(path, Some(&format!("Bearer {token}"))))
        };
        // Path, token, then what the handler saw or the (code, reason) refused with.
        type Expected<'a> = Result<&'a str, (&'a str, &'a str)>;
        let cases: [(&str, &str, Expected); 10] = [
            ("/svc.Api/Get", &user, Ok("user:user-1")),
            ("/svc.Api/Get", &service, Err(("16", "TOKEN_INVALID"))),
            ("/svc.Api/Get", &admin_user, Err(("16", "TOKEN_INVALID"))),
            ("/svc.Internal/Read", &service, Ok("service:reports")),
            ("/svc.Internal/Read", &user, Err(("16", "TOKEN_INVALID"))),
            ("/svc.Internal/Write", &service, Err(("7", "MISSING_SCOPE"))),
            ("/svc.Mixed/Get", &user, Ok("user:user-1")),
            ("/svc.Mixed/Get", &service, Ok("service:reports")),
            ("/svc.Admin/Get", &admin_user, Ok("user:user-1")),
            ("/svc.Admin/Get", &user, Err(("16", "TOKEN_INVALID"))),
        ];
        for (path, token, expected) in cases {
            let answer = call(path, token).await.expect("infallible");
            match expected {
                Ok(seen) => assert_eq!(answer.body(), seen, "{path}"),
                Err((code, reason)) => {
                    assert_eq!(answer.body(), "", "{path}: the inner service never ran");
                    assert_eq!(grpc_status(&answer), Some(code), "{path}");
                    let status = tonic::Status::from_header_map(answer.headers()).expect("a status");
                    let info = tonic_types::StatusExt::get_details_error_info(&status).expect("an ErrorInfo");
                    assert_eq!(info.reason, reason, "{path}");
                }
            }
        }
    }
}
