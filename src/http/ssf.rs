//! The Shared Signals endpoints (SSF 1.0 transmitter): the configuration
//! metadata at `/.well-known/ssf-configuration`, stream management
//! (`/ssf/streams`), status (`/ssf/status`), verification (`/ssf/verify`)
//! and RFC 8936 polling (`/ssf/poll/{stream_id}`). Every endpoint but the
//! metadata needs a service credential with scope `events.receive`, sent
//! as `Authorization: Bearer` (the service key or the service's access
//! token); a stream is visible to its owner only.

use http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use super::Face;
use super::errors;
use crate::domain::Scope;
use crate::domain::stream_config::{POLL_METHOD, PUSH_METHOD, StreamConfig};
use crate::error::AppError;
use crate::grpc::middleware::HttpResponse;
use crate::service::keys::ServiceIdentity;
use crate::service::ssf::PollRequest;

pub const CONFIGURATION_PATH: &str = "/.well-known/ssf-configuration";
pub const STREAMS_PATH: &str = "/ssf/streams";
pub const STATUS_PATH: &str = "/ssf/status";
pub const VERIFY_PATH: &str = "/ssf/verify";
pub const POLL_PREFIX: &str = "/ssf/poll/";

/// Largest request body: a stream configuration, or a poll with its acks.
const MAX_BODY: usize = 64 * 1024;

/// The transmitter's metadata (SSF 1.0 §7.1).
pub fn configuration(issuer: &str) -> String {
    json!({
        "spec_version": "1_0",
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{}", super::JWKS_PATH),
        "delivery_methods_supported": [PUSH_METHOD, POLL_METHOD],
        "configuration_endpoint": format!("{issuer}{STREAMS_PATH}"),
        "status_endpoint": format!("{issuer}{STATUS_PATH}"),
        "verification_endpoint": format!("{issuer}{VERIFY_PATH}"),
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    })
    .to_string()
}

fn not_found() -> HttpResponse {
    errors::oauth(StatusCode::NOT_FOUND, "not_found", "no such stream")
}

/// An SSF endpoint's answer to a domain error.
fn from_app(e: AppError) -> HttpResponse {
    match e {
        AppError::StreamNotFound => not_found(),
        AppError::StreamNotPolled => errors::oauth(
            StatusCode::CONFLICT,
            "invalid_request",
            "this stream is delivered by push, not polled",
        ),
        AppError::MissingScope(scope) => errors::oauth(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            &format!("this client lacks the scope {scope}"),
        ),
        other => errors::from_app(other, errors::Endpoint::Introspection),
    }
}

/// The caller, if its credential is a service's with `events.receive`.
async fn caller(
    face: &Face,
    presented: Presented,
    path: &str,
) -> Result<std::sync::Arc<ServiceIdentity>, HttpResponse> {
    let Presented { peer, secret } = presented;
    let Some(secret) = secret else {
        return Err(errors::invalid_client("send one Authorization: Bearer header"));
    };
    face.credentials
        .check_service(&secret, Some(Scope::EventsReceive), peer, path)
        .await
        .map_err(from_app)
}

/// What the request presents, read before any await (a request is not
/// `Sync`, so no future may hold a reference to it).
struct Presented {
    peer: Option<std::net::IpAddr>,
    secret: Option<String>,
}

fn presented(face: &Face, req: &Request<tonic::body::Body>) -> Presented {
    Presented {
        peer: face.credentials.peer_of(req),
        secret: bearer(req),
    }
}

fn bearer(req: &Request<tonic::body::Body>) -> Option<String> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The request's JSON body (empty body: `null`).
async fn body(req: Request<tonic::body::Body>) -> Result<Value, HttpResponse> {
    let bytes = match super::form::read_bounded(req, MAX_BODY).await {
        Ok((_, bytes)) => bytes,
        Err(super::form::FormError::TooLarge) => {
            return Err(errors::oauth(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                &format!("the body must be at most {MAX_BODY} bytes"),
            ));
        }
        Err(_) => return Err(errors::invalid_request("the body could not be read")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| errors::invalid_request(&format!("the body is not JSON: {e}")))
}

fn query_param(req: &Request<tonic::body::Body>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn validation(errors: Vec<crate::domain::stream_config::FieldError>) -> HttpResponse {
    errors::invalid_request(
        &errors
            .iter()
            .map(|(field, e)| format!("{field}: {}", e.description))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// `/ssf/streams`: create (POST), read (GET, one with `stream_id`, else
/// all of the caller's), replace (PUT), patch (PATCH), delete (DELETE).
pub async fn streams(face: &Face, req: Request<tonic::body::Body>) -> HttpResponse {
    let owner = match caller(face, presented(face, &req), STREAMS_PATH).await {
        Ok(owner) => owner,
        Err(refusal) => return refusal,
    };
    let now = chrono::Utc::now();
    let core = &face.core;
    let method = req.method().clone();
    let query_id = query_param(&req, "stream_id");
    match method {
        Method::GET | Method::HEAD => match query_id {
            Some(id) => match core.ssf_stream(&owner, &id).await {
                Ok(row) => errors::json(StatusCode::OK, &core.ssf_stream_json(&row)),
                Err(e) => from_app(e),
            },
            None => match core.ssf_streams(&owner).await {
                Ok(rows) => errors::json(
                    StatusCode::OK,
                    &Value::from(rows.iter().map(|r| core.ssf_stream_json(r)).collect::<Vec<_>>()),
                ),
                Err(e) => from_app(e),
            },
        },
        Method::POST => {
            let body = match body(req).await {
                Ok(body) => body,
                Err(refusal) => return refusal,
            };
            let config = match StreamConfig::parse(&body) {
                Ok(config) => config,
                Err(errors) => return validation(errors),
            };
            if let Err(e) = core.check_push_url(&config) {
                return from_app(e);
            }
            match core.ssf_create_stream(&owner, config, now).await {
                Ok(row) => errors::json(StatusCode::CREATED, &core.ssf_stream_json(&row)),
                Err(e) => from_app(e),
            }
        }
        Method::PUT | Method::PATCH => {
            let body = match body(req).await {
                Ok(body) => body,
                Err(refusal) => return refusal,
            };
            let Some(id) = body
                .get("stream_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(query_id)
            else {
                return errors::invalid_request("stream_id is required");
            };
            match core
                .ssf_update_stream(&owner, &id, &body, method == Method::PATCH, now)
                .await
            {
                Ok(row) => errors::json(StatusCode::OK, &core.ssf_stream_json(&row)),
                Err(e) => from_app(e),
            }
        }
        Method::DELETE => {
            let Some(id) = query_id else {
                return errors::invalid_request("stream_id is required");
            };
            match core.ssf_delete_stream(&owner, &id).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => from_app(e),
            }
        }
        _ => errors::method_not_allowed(&Method::GET),
    }
}

fn empty(status: StatusCode) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::empty());
    *response.status_mut() = status;
    response
}

/// `/ssf/status`: GET `?stream_id=`, POST `{stream_id, status, reason}`.
pub async fn status(face: &Face, req: Request<tonic::body::Body>) -> HttpResponse {
    let owner = match caller(face, presented(face, &req), STATUS_PATH).await {
        Ok(owner) => owner,
        Err(refusal) => return refusal,
    };
    let core = &face.core;
    // The row's type is the database layer's, which this layer may not
    // name (tests/api/layering.rs): the use case renders it.
    let answer = |body: Value| errors::json(StatusCode::OK, &body);
    match req.method().clone() {
        Method::GET | Method::HEAD => {
            let Some(id) = query_param(&req, "stream_id") else {
                return errors::invalid_request("stream_id is required");
            };
            match core.ssf_stream(&owner, &id).await {
                Ok(row) => answer(core.ssf_status_json(&row)),
                Err(e) => from_app(e),
            }
        }
        Method::POST => {
            let body = match body(req).await {
                Ok(body) => body,
                Err(refusal) => return refusal,
            };
            let (Some(id), Some(status)) = (
                body.get("stream_id").and_then(Value::as_str),
                body.get("status").and_then(Value::as_str),
            ) else {
                return errors::invalid_request("stream_id and status are required strings");
            };
            let reason = body.get("reason").and_then(Value::as_str);
            match core
                .ssf_set_status(&owner, id, status, reason, chrono::Utc::now())
                .await
            {
                Ok(row) => answer(core.ssf_status_json(&row)),
                Err(e) => from_app(e),
            }
        }
        _ => errors::method_not_allowed(&Method::POST),
    }
}

/// `/ssf/verify`: POST `{stream_id, state}`; the verification SET follows
/// on the stream (204 now).
pub async fn verify(face: &Face, req: Request<tonic::body::Body>) -> HttpResponse {
    if req.method() != Method::POST {
        return errors::method_not_allowed(&Method::POST);
    }
    let owner = match caller(face, presented(face, &req), VERIFY_PATH).await {
        Ok(owner) => owner,
        Err(refusal) => return refusal,
    };
    let body = match body(req).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let Some(id) = body.get("stream_id").and_then(Value::as_str) else {
        return errors::invalid_request("stream_id is required");
    };
    let state = match body.get("state") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return errors::invalid_request("state must be a string"),
    };
    match face.core.ssf_verify(&owner, id, state, chrono::Utc::now()).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        // Too many verifications waiting for the stream (not the failed
        // authentications the shared mapping of Throttled describes).
        Err(AppError::Throttled(wait)) => {
            let mut response = errors::oauth(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many verification requests are waiting for this stream; take its SETs first",
            );
            if let Ok(value) = http::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Err(e) => from_app(e),
    }
}

/// `/ssf/poll/{stream_id}`: RFC 8936 §2.4.
pub async fn poll(face: &Face, req: Request<tonic::body::Body>) -> HttpResponse {
    if req.method() != Method::POST {
        return errors::method_not_allowed(&Method::POST);
    }
    let stream_id = req
        .uri()
        .path()
        .strip_prefix(POLL_PREFIX)
        .unwrap_or("")
        .to_owned();
    let owner = match caller(face, presented(face, &req), POLL_PREFIX).await {
        Ok(owner) => owner,
        Err(refusal) => return refusal,
    };
    let body = match body(req).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let request = match poll_request(&body) {
        Ok(request) => request,
        Err(description) => return errors::invalid_request(&description),
    };
    // A long poll ends in time for the face's own deadline.
    let wait = face
        .timeout
        .saturating_sub(std::time::Duration::from_millis(500))
        .min(std::time::Duration::from_secs(30));
    match face
        .core
        .ssf_poll(&owner, &stream_id, request, wait, chrono::Utc::now())
        .await
    {
        Ok(batch) => {
            // Written by hand to keep the SETs in log order: JSON objects
            // have none, but a receiver that reads them in document order
            // (most parsers) then sees what happened in the order it did.
            let mut body = String::from("{\"sets\":{");
            for (i, (jti, set)) in batch.sets.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&Value::from(jti.as_str()).to_string());
                body.push(':');
                body.push_str(&Value::from(set.as_str()).to_string());
            }
            body.push_str(&format!("}},\"moreAvailable\":{}}}", batch.more_available));
            errors::json_text(StatusCode::OK, body)
        }
        Err(e) => from_app(e),
    }
}

/// The members of a poll request; anything else is ignored.
fn poll_request(body: &Value) -> Result<PollRequest, String> {
    let object = match body {
        Value::Null => return Ok(PollRequest::default()),
        Value::Object(o) => o,
        _ => return Err("the body must be a JSON object".into()),
    };
    let max_events = match object.get("maxEvents") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or("maxEvents must be a non-negative integer")?,
        ),
    };
    let return_immediately = match object.get("returnImmediately") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("returnImmediately must be a boolean".into()),
    };
    let ack = match object.get("ack") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 1000 => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("ack must be an array of jti strings")?,
        Some(_) => return Err("ack must be an array of at most 1000 jti strings".into()),
    };
    let set_errs = match object.get("setErrs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(errs)) if errs.len() <= 1000 => errs
            .iter()
            .map(|(jti, e)| {
                let text = |k: &str| {
                    e.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .chars()
                        .take(256)
                        .collect()
                };
                (jti.clone(), text("err"), text("description"))
            })
            .collect(),
        Some(_) => return Err("setErrs must be an object of at most 1000 members".into()),
    };
    Ok(PollRequest {
        max_events,
        return_immediately,
        ack,
        set_errs,
    })
}
