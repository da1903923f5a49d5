//! The one place the HTTP face turns domain errors into RFC 6749 §5.2
//! error responses (`{"error", "error_description"}` with the status the
//! RFCs give), as `grpc::status` does for gRPC.

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use crate::error::AppError;
use crate::grpc::middleware::HttpResponse;

/// A JSON body that is never cached (RFC 6749 §5.1: token responses).
pub fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    json_text(status, body.to_string())
}

/// [`json`] for a body already written.
pub fn json_text(status: StatusCode, body: String) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .unwrap_or_else(|_| server_error())
}

/// An RFC 6749 error.
pub fn oauth(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    json(status, &json!({"error": error, "error_description": description}))
}

/// A malformed request (`invalid_request`).
pub fn invalid_request(description: &str) -> HttpResponse {
    oauth(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// RFC 6749 §5.2: a client that failed to authenticate gets 401 with the
/// scheme it may use.
pub fn invalid_client(description: &str) -> HttpResponse {
    let mut response = oauth(StatusCode::UNAUTHORIZED, "invalid_client", description);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"authd\""),
    );
    response
}

pub fn method_not_allowed(allowed: &Method) -> HttpResponse {
    let mut response = oauth(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        &format!("use {allowed}"),
    );
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

pub fn timed_out() -> HttpResponse {
    oauth(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the request took too long; retry",
    )
}

/// The last resort; the details are in the log.
pub fn server_error() -> HttpResponse {
    let mut response = Response::new(tonic::body::Body::new(http_body_util::Full::new(
        bytes::Bytes::from_static(br#"{"error":"server_error"}"#),
    )));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Where the error arose: which RFC's vocabulary a missing scope gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Introspection,
}

/// `err` as the RFCs answer it.
pub fn from_app(err: AppError, endpoint: Endpoint) -> HttpResponse {
    match err {
        AppError::Validation(violations) => invalid_request(
            &violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.problem.description))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        AppError::UnsupportedGrantType => oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials or urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        AppError::GrantInvalid { field } => oauth(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            &format!("{field} is invalid, expired, ended, or names no enabled account"),
        ),
        AppError::TargetInvalid => oauth(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "the audience is not one of the registered audiences",
        ),
        AppError::ScopeInvalid => oauth(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "the scope asks for more than the client or the subject has",
        ),
        AppError::MissingScope(scope) => {
            let description = format!("this client lacks the scope {scope}");
            match endpoint {
                Endpoint::Token => oauth(StatusCode::BAD_REQUEST, "unauthorized_client", &description),
                Endpoint::Introspection => oauth(StatusCode::FORBIDDEN, "unauthorized_client", &description),
            }
        }
        AppError::Token(_) => {
            invalid_client("unknown client, wrong secret, or a credential that cannot mint")
        }
        AppError::Throttled(wait) | AppError::Overloaded(wait) => {
            let mut response = oauth(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many failed client authentications from this address; retry later",
            );
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        AppError::Unavailable(cause) => {
            tracing::warn!(error = format!("{cause:#}"), "database unavailable");
            oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "service temporarily unavailable",
            )
        }
        AppError::ShuttingDown => oauth(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "this replica is shutting down; retry",
        ),
        AppError::Internal(cause) => {
            tracing::error!(error = format!("{cause:#}"), "internal error");
            server_error()
        }
        other => {
            tracing::error!(error = ?other, "unexpected error on the HTTP face");
            server_error()
        }
    }
}
