//! `POST /oauth2/token` (RFC 6749 §4.4, RFC 8693) and `POST
//! /oauth2/introspect` (RFC 7662): a form in, JSON out, the client
//! authenticated by its service key (HTTP Basic, client_secret_post, or a
//! Bearer header) or, where a key would do, a token the key minted.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Value, json};

use super::Face;
use super::errors::{self, Endpoint};
use super::form::{self, Form};
use crate::domain::{ClientInfo, Grant, Scope, TokenRequestFields};
use crate::error::AppError;
use crate::grpc::middleware::HttpResponse;
use crate::service::Introspection;

/// A client's credential as presented: the name it claims (Basic or
/// `client_id`), and the secret.
struct Presented {
    name: Option<String>,
    secret: String,
}

/// Why a request's client credential is refused before it is checked.
enum Unreadable {
    /// A malformed request (`invalid_request`).
    Request(&'static str),
    /// No credential one can check (`invalid_client`).
    Client(&'static str),
}

impl Unreadable {
    fn answer(self) -> HttpResponse {
        match self {
            Self::Request(description) => errors::invalid_request(description),
            Self::Client(description) => errors::invalid_client(description),
        }
    }
}

/// The one credential of a request. RFC 6749 §2.3: a client uses one
/// method per request; two is a malformed request.
/// The form and the client's credential of a request to either endpoint,
/// or the answer that refuses it.
async fn read_request(req: Request<tonic::body::Body>) -> Result<(Form, Option<Presented>), HttpResponse> {
    let (parts, form) = match form::read(req).await {
        Ok(read) => read,
        Err(e @ form::FormError::TooLarge) => {
            return Err(errors::oauth(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                &e.description(),
            ));
        }
        Err(e) => return Err(errors::invalid_request(&e.description())),
    };
    let credential = presented(&parts.headers, &form).map_err(|refusal| refusal.answer())?;
    Ok((form, credential))
}

fn presented(headers: &HeaderMap, form: &Form) -> Result<Option<Presented>, Unreadable> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let header_value = values.next();
    if values.next().is_some() {
        return Err(Unreadable::Request("more than one Authorization header"));
    }
    let posted = form.get("client_secret");
    let from_header = match header_value {
        None => None,
        Some(value) => {
            if posted.is_some() {
                return Err(Unreadable::Request(
                    "use one client authentication method: the Authorization header or client_secret",
                ));
            }
            let value = value
                .to_str()
                .map_err(|_| Unreadable::Client("unreadable Authorization header"))?;
            Some(from_authorization(value).ok_or(Unreadable::Client("malformed Authorization header"))?)
        }
    };
    let credential = match (from_header, posted) {
        (Some(credential), _) => Some(credential),
        (None, Some(secret)) => Some(Presented {
            name: None,
            secret: secret.to_owned(),
        }),
        (None, None) => None,
    };
    let Some(mut credential) = credential else {
        return Ok(None);
    };
    // `client_id` in the form must name the same client as the header.
    if let Some(client_id) = form.get("client_id") {
        match &credential.name {
            Some(name) if name != client_id => {
                return Err(Unreadable::Client("client_id does not match the credential"));
            }
            _ => credential.name = Some(client_id.to_owned()),
        }
    }
    Ok(Some(credential))
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1) or
/// `Bearer secret`.
fn from_authorization(value: &str) -> Option<Presented> {
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Presented {
            name: None,
            secret: rest.to_owned(),
        });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some(Presented {
        name: Some(decode_component(id)?),
        secret: decode_component(secret)?,
    })
}

/// One form-urlencoded component, decoded.
fn decode_component(encoded: &str) -> Option<String> {
    let decoded: String = form_urlencoded::parse(format!("v={encoded}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    (!decoded.is_empty() && !decoded.contains('\u{FFFD}')).then_some(decoded)
}

/// The service behind the request's credential, with `scope` when given.
async fn client(
    face: &Face,
    credential: Option<Presented>,
    scope: Option<Scope>,
    peer: Option<std::net::IpAddr>,
    endpoint: &str,
    answer_as: Endpoint,
) -> Result<std::sync::Arc<crate::service::keys::ServiceIdentity>, HttpResponse> {
    let Some(credential) = credential else {
        return Err(errors::invalid_client("client authentication is required"));
    };
    let identity = face
        .credentials
        .check_service(&credential.secret, scope, peer, endpoint)
        .await
        .map_err(|e| errors::from_app(e, answer_as))?;
    if credential
        .name
        .as_deref()
        .is_some_and(|name| name != identity.name)
    {
        return Err(errors::invalid_client("client_id does not match the credential"));
    }
    Ok(identity)
}

pub async fn token(face: &Face, req: Request<tonic::body::Body>) -> HttpResponse {
    let peer = face.credentials.peer_of(&req);
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (form, credential) = match read_request(req).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    if form.get("actor_token").is_some() {
        return errors::invalid_request("actor_token is not supported: the client is the actor");
    }
    if !matches!(
        form.value("requested_token_type"),
        "" | crate::domain::token_request::TOKEN_TYPE_ACCESS | crate::domain::token_request::TOKEN_TYPE_JWT
    ) {
        return errors::invalid_request("requested_token_type: only access tokens are issued");
    }
    // RFC 8707 `resource` names the service as RFC 8693's `audience` does.
    let audience = match (form.get("audience"), form.get("resource")) {
        (Some(a), Some(r)) if a != r => {
            return errors::oauth(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "audience and resource name different services",
            );
        }
        (a, r) => a.or(r).unwrap_or(""),
    };
    let grant = match Grant::parse(TokenRequestFields {
        grant_type: form.value("grant_type"),
        audience,
        scope: form.value("scope"),
        subject_token: form.value("subject_token"),
        subject_token_type: form.value("subject_token_type"),
        requested_subject: form.value("requested_subject"),
    }) {
        Ok(grant) => grant,
        Err(e) => return errors::from_app(AppError::from(e), Endpoint::Token),
    };
    let caller = match client(face, credential, None, peer, super::TOKEN_PATH, Endpoint::Token).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let client_info = ClientInfo::new(user_agent.as_deref(), peer);
    match face
        .core
        .grant_token(&caller, grant, &client_info, chrono::Utc::now())
        .await
    {
        Ok(granted) => {
            let mut body = json!({
                "access_token": granted.access_token,
                "token_type": "Bearer",
                "expires_in": granted.expires_in.as_secs(),
            });
            if !granted.scope.is_empty() {
                body["scope"] = Value::from(granted.scope);
            }
            if let Some(issued) = granted.issued_token_type {
                body["issued_token_type"] = Value::from(issued);
            }
            errors::json(StatusCode::OK, &body)
        }
        Err(e) => errors::from_app(e, Endpoint::Token),
    }
}

pub async fn introspect(face: &Face, req: Request<tonic::body::Body>) -> HttpResponse {
    let peer = face.credentials.peer_of(&req);
    let (form, credential) = match read_request(req).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    let caller = match client(
        face,
        credential,
        Some(Scope::TokensIntrospect),
        peer,
        super::INTROSPECTION_PATH,
        Endpoint::Introspection,
    )
    .await
    {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let Some(token) = form.get("token") else {
        return errors::invalid_request("token is required");
    };
    let answer = face.core.introspect(token, chrono::Utc::now()).await;
    let outcome = match &answer {
        Ok(Introspection::Inactive) => "inactive",
        Ok(_) => "active",
        Err(_) => "error",
    };
    tracing::info!(
        target: "authd::audit",
        service_account = %caller.name,
        method = super::INTROSPECTION_PATH,
        outcome,
        "token introspected"
    );
    match answer {
        Ok(introspection) => errors::json(StatusCode::OK, &introspection_body(face, introspection)),
        Err(e) => errors::from_app(e, Endpoint::Introspection),
    }
}

/// RFC 7662 §2.2 members, and authd's own claims a resource server may
/// need (`sid`, `roles`, assurance, the `act` chain).
fn introspection_body(face: &Face, introspection: Introspection) -> Value {
    let issuer = face.core.issuer();
    match introspection {
        Introspection::Inactive => json!({"active": false}),
        Introspection::Active { claims, user, .. } => {
            let mut body = json!({
                "active": true,
                "iss": issuer,
                "sub": claims.sub,
                "aud": claims.aud,
                "exp": claims.exp,
                "iat": claims.iat,
                "nbf": claims.nbf,
                "jti": claims.jti,
                "token_type": "Bearer",
                "sid": claims.sid,
                "roles": claims.roles,
                "amr": claims.methods(),
                "acr": claims.level(),
                "auth_time": claims.proven_at(),
                "disabled": user.disabled,
            });
            if let Some(client_id) = &claims.client_id {
                body["client_id"] = Value::from(client_id.as_str());
            }
            if let Some(act) = &claims.act {
                body["act"] = serde_json::to_value(act).unwrap_or(Value::Null);
            }
            body
        }
        Introspection::Service(token) => json!({
            "active": true,
            "iss": issuer,
            "sub": format!("{}{}", authd_token_rules::SERVICE_SUBJECT_PREFIX, token.name),
            "aud": token.audience,
            "client_id": token.name,
            "scope": token.scopes.join(" "),
            "exp": token.expires_at,
            "iat": token.issued_at,
            "jti": token.jti,
            "token_type": "Bearer",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = format!("Basic {}", STANDARD.encode("billing%2Dsvc:sk_a%2Bb"));
        let presented = from_authorization(&header).unwrap();
        assert_eq!(presented.name.as_deref(), Some("billing-svc"));
        assert_eq!(presented.secret, "sk_a+b");
        assert!(from_authorization("Basic !!!").is_none());
        assert!(from_authorization("Digest x").is_none());
        assert_eq!(from_authorization("bearer sk_x").unwrap().secret, "sk_x");
    }
}
