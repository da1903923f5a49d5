//! The one shape of authd's tower layers. Each layer (bearer check,
//! per-client limit, logs and metrics) is a [`Middleware`]: given a request
//! and the ready inner service, it answers itself or passes the request on.
//! The tower plumbing (Layer, poll_ready, handing the service that was polled
//! ready to the call) lives here once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
pub type HttpResponse = Response<tonic::body::Body>;

/// What one layer does with a call.
pub trait Middleware: Clone + Send + Sync + 'static {
    fn call<S, B>(&self, req: Request<B>, next: S) -> BoxFuture<HttpResponse, S::Error>
    where
        S: Service<Request<B>, Response = HttpResponse> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static;
}

/// A [`Middleware`] as a tower layer.
#[derive(Clone)]
pub struct MiddlewareLayer<M>(pub M);

impl<M: Clone, S> Layer<S> for MiddlewareLayer<M> {
    type Service = WithMiddleware<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithMiddleware {
            middleware: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct WithMiddleware<M, S> {
    middleware: M,
    inner: S,
}

impl<M, S, B> Service<Request<B>> for WithMiddleware<M, S>
where
    M: Middleware,
    S: Service<Request<B>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        self.middleware.call(req, ready)
    }
}

/// An answer given without calling the inner service.
pub fn answer<E: 'static>(status: tonic::Status) -> BoxFuture<HttpResponse, E> {
    Box::pin(async move { Ok(status.into_http()) })
}
