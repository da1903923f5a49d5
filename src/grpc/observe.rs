//! One structured log line and one metrics sample per RPC: method, gRPC
//! code and latency. Never the request or its metadata, which carry secrets.
//! Being the outermost layer, it also gives an ErrorInfo to the errors that
//! tonic builds itself (message too large, unknown method), so that every
//! error a client sees carries a reason.

use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower::{Layer, Service};

use super::auth_layer::BoxFuture;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

/// The code of a unary answer: errors travel "trailers-only", in the
/// headers; a response without `grpc-status` there is a success.
fn code_of<B>(response: &Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// A trailers-only error without details gets an ErrorInfo for its code.
fn ensure_error_info(response: Response<tonic::body::Body>) -> Response<tonic::body::Body> {
    if response.headers().contains_key("grpc-status-details-bin") {
        return response;
    }
    match tonic::Status::from_header_map(response.headers()) {
        Some(status) if status.code() != tonic::Code::Ok => crate::error::with_error_info(status).into_http(),
        _ => response,
    }
}

impl<S, B> Service<Request<B>> for Observe<S>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(async move {
            let result = inner.call(req).await;
            let elapsed = started.elapsed();
            let code = match &result {
                Ok(response) => code_of(response),
                Err(_) => tonic::Code::Internal,
            };
            let result = result.map(ensure_error_info);
            metrics.record(&method, code, elapsed);
            let latency_ms = elapsed.as_secs_f64() * 1000.0;
            match code {
                tonic::Code::Internal | tonic::Code::Unavailable | tonic::Code::Unknown => {
                    tracing::warn!(%method, code = ?code, latency_ms, "rpc failed");
                }
                _ => tracing::debug!(%method, code = ?code, latency_ms, "rpc"),
            }
            result
        })
    }
}
