//! One structured log line and one metrics sample per RPC: method, gRPC
//! code and latency. Never the request or its metadata, which carry secrets.
//! Being the outermost layer, it also gives an ErrorInfo to the errors that
//! tonic builds itself (message too large, unknown method), so that every
//! error a client sees carries a reason.

use std::time::Instant;

use http::{Request, Response};
use tower::Service;

use super::middleware::{BoxFuture, HttpResponse, Middleware};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Observe {
    metrics: Metrics,
}

impl Observe {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
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
        Some(status) if status.code() != tonic::Code::Ok => {
            super::status::with_error_info(status).into_http()
        }
        _ => response,
    }
}

impl Middleware for Observe {
    fn call<S, B>(&self, req: Request<B>, mut inner: S) -> BoxFuture<HttpResponse, S::Error>
    where
        S: Service<Request<B>, Response = HttpResponse> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        // The method is resolved to an index here, while the path is at hand,
        // so recording allocates nothing.
        let method = self.metrics.method_id(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        Box::pin(async move {
            let result = inner.call(req).await;
            let elapsed = started.elapsed();
            let code = match &result {
                Ok(response) => code_of(response),
                Err(_) => tonic::Code::Internal,
            };
            let result = result.map(ensure_error_info);
            metrics.record(method, code, elapsed);
            let latency_ms = elapsed.as_secs_f64() * 1000.0;
            let method = metrics.method_name(method);
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
