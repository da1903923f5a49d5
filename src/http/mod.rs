//! The HTTP face: standard documents and endpoints that off-the-shelf OAuth
//! and JWT libraries find by themselves, on the gRPC listener (HTTP/1.1 and
//! HTTP/2, TLS when authd has it). RFC 8414 metadata (also at the OpenID
//! discovery path), the RFC 7517 key set, the RFC 6749/8693 token endpoint
//! and RFC 7662 introspection. Each answers with the same use cases as the
//! gRPC methods; errors take the RFCs' JSON form (`errors`).
//!
//! It sits in front of the gRPC layers: requests for its paths are answered
//! here and never reach them; every other path passes through untouched.
//! It shares the gRPC edge's credential check, so a client failing service
//! credentials is limited the same way on both.

// The face is an edge: it reads the clock once per request.
#![allow(clippy::disallowed_methods)]

mod discovery;
mod errors;
mod form;
mod ssf;
mod token;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use crate::grpc::auth_layer::BearerAuth;
use crate::grpc::middleware::{BoxFuture, HttpResponse};
use crate::service::Core;

pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const TOKEN_PATH: &str = "/oauth2/token";
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";

/// The face's route `path` is served under (the discovery documents share
/// one), for naming a request's span; `None` for every other path.
pub fn route_of(path: &str) -> Option<&'static str> {
    Route::of(path).map(Route::path)
}

/// The face's routes, each with the metrics label it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metadata,
    Jwks,
    Token,
    Introspection,
    SsfConfiguration,
    SsfStreams,
    SsfStatus,
    SsfVerify,
    SsfPoll,
}

impl Route {
    fn of(path: &str) -> Option<Self> {
        match path {
            METADATA_PATH | OPENID_CONFIGURATION_PATH => Some(Self::Metadata),
            JWKS_PATH => Some(Self::Jwks),
            TOKEN_PATH => Some(Self::Token),
            INTROSPECTION_PATH => Some(Self::Introspection),
            ssf::CONFIGURATION_PATH => Some(Self::SsfConfiguration),
            ssf::STREAMS_PATH => Some(Self::SsfStreams),
            ssf::STATUS_PATH => Some(Self::SsfStatus),
            ssf::VERIFY_PATH => Some(Self::SsfVerify),
            p if p.starts_with(ssf::POLL_PREFIX) => Some(Self::SsfPoll),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Metadata => METADATA_PATH,
            Self::Jwks => JWKS_PATH,
            Self::Token => TOKEN_PATH,
            Self::Introspection => INTROSPECTION_PATH,
            Self::SsfConfiguration => ssf::CONFIGURATION_PATH,
            Self::SsfStreams => ssf::STREAMS_PATH,
            Self::SsfStatus => ssf::STATUS_PATH,
            Self::SsfVerify => ssf::VERIFY_PATH,
            Self::SsfPoll => ssf::POLL_PREFIX,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Metadata => "metadata",
            Self::Jwks => "jwks",
            Self::Token => "token",
            Self::Introspection => "introspect",
            Self::SsfConfiguration => "ssf_configuration",
            Self::SsfStreams => "ssf_streams",
            Self::SsfStatus => "ssf_status",
            Self::SsfVerify => "ssf_verify",
            Self::SsfPoll => "ssf_poll",
        }
    }

    /// The one method the route answers; `None`: the route checks.
    fn method(self) -> Option<Method> {
        match self {
            Self::Metadata | Self::Jwks | Self::SsfConfiguration => Some(Method::GET),
            Self::Token | Self::Introspection => Some(Method::POST),
            Self::SsfStreams | Self::SsfStatus | Self::SsfVerify | Self::SsfPoll => None,
        }
    }
}

/// What the face answers with.
struct Face {
    core: Core,
    credentials: BearerAuth,
    metadata: String,
    /// The Shared Signals transmitter's metadata.
    ssf_configuration: String,
    /// How long one request may take, like a gRPC call's server deadline.
    timeout: Duration,
}

/// The face as a tower layer, in front of the gRPC services.
#[derive(Clone)]
pub struct HttpFaceLayer {
    face: Arc<Face>,
}

impl HttpFaceLayer {
    /// `credentials` is the gRPC edge's check (shared failure limit);
    /// `issuer` the base of every URL the documents name.
    pub fn new(core: Core, credentials: BearerAuth, issuer: &str, timeout: Duration) -> Self {
        let metadata = discovery::metadata(issuer, core.signing_algorithm());
        Self {
            face: Arc::new(Face {
                core,
                credentials,
                metadata,
                ssf_configuration: ssf::configuration(issuer),
                timeout,
            }),
        }
    }
}

impl<S> Layer<S> for HttpFaceLayer {
    type Service = HttpFace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpFace {
            face: self.face.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct HttpFace<S> {
    face: Arc<Face>,
    inner: S,
}

impl<S> Service<Request<tonic::body::Body>> for HttpFace<S>
where
    S: Service<Request<tonic::body::Body>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<HttpResponse, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let Some(route) = Route::of(req.uri().path()) else {
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move { ready.call(req).await });
        };
        let face = self.face.clone();
        Box::pin(async move {
            let started = Instant::now();
            let answer = match tokio::time::timeout(face.timeout, face.serve(route, req)).await {
                Ok(answer) => answer,
                Err(_) => errors::timed_out(),
            };
            face.core
                .metrics()
                .http_request(route.label(), answer.status().as_u16(), started.elapsed());
            Ok(answer)
        })
    }
}

impl Face {
    async fn serve(&self, route: Route, req: Request<tonic::body::Body>) -> HttpResponse {
        let method = req.method().clone();
        if let Some(allowed) = route.method()
            && method != allowed
            && !(allowed == Method::GET && method == Method::HEAD)
        {
            return errors::method_not_allowed(&allowed);
        }
        match route {
            Route::Metadata => document(&self.metadata, "application/json", 3600),
            Route::SsfConfiguration => document(&self.ssf_configuration, "application/json", 3600),
            Route::SsfStreams => ssf::streams(self, req).await,
            Route::SsfStatus => ssf::status(self, req).await,
            Route::SsfVerify => ssf::verify(self, req).await,
            Route::SsfPoll => ssf::poll(self, req).await,
            Route::Jwks => document(self.core.jwks_json(), "application/jwk-set+json", 300),
            Route::Token => token::token(self, req).await,
            Route::Introspection => token::introspect(self, req).await,
        }
    }
}

/// A public document: cacheable, readable from any origin's scripts (the
/// CORS layer adds the origin for configured browsers).
fn document(body: &str, content_type: &'static str, max_age: u32) -> HttpResponse {
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, format!("public, max-age={max_age}"))
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body.to_owned()),
        )));
    response.unwrap_or_else(|_| errors::server_error())
}
