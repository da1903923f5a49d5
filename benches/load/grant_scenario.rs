//! Tokens for one destination: a service trading its key for its own token
//! (`client_credentials`) and a user's access token exchanged for one
//! narrowed to another service (RFC 8693), each over gRPC (ExchangeToken)
//! and over the HTTP face (`POST /oauth2/token`, a form, HTTP Basic client
//! authentication as OAuth libraries send it by default).
//!
//! The HTTP calls go over HTTP/2 with prior knowledge, as many connections
//! as the gRPC channels and the same calls in flight, so that the two
//! transports differ only in what the server does with a request: a form
//! and JSON instead of protobuf, the face's own client check instead of the
//! gRPC layer's.
//!
//! A success must carry a token of the right kind; anything else is counted
//! as an error under its status and, for HTTP, the RFC 6749 `error` code.

use authd::domain::token_request::{GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS};
use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, header};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::client::{bearer, code_label};

/// The audience the tokens are minted for: a started authd registers it
/// next to its own; one started by hand must list it in AUTHD_AUDIENCES.
pub const AUDIENCE: &str = "billing";

/// The scope the service account needs for token exchange.
pub const SCOPE: &str = "tokens.exchange";

/// A service account with scope `tokens.exchange`, and HTTP/2 connections
/// to the HTTP face.
pub struct TokenClient {
    /// `Bearer sk_…`, as gRPC metadata.
    grpc_authorization: MetadataValue<Ascii>,
    /// `Basic base64(urlencode(name):urlencode(key))` (RFC 6749 §2.3.1).
    basic: HeaderValue,
    token_uri: http::Uri,
    connections: Vec<h2::client::SendRequest<Bytes>>,
}

impl TokenClient {
    /// Opens `n` HTTP/2 connections to `addr` (`http://host:port`) for the
    /// service account `name` with `key`.
    pub async fn connect(addr: &str, name: &str, key: &str, n: usize) -> Self {
        let authority = addr.strip_prefix("http://").unwrap_or(addr).trim_end_matches('/');
        let mut connections = Vec::with_capacity(n);
        for _ in 0..n {
            let tcp = tokio::net::TcpStream::connect(authority)
                .await
                .unwrap_or_else(|e| panic!("connecting to the HTTP face at {authority}: {e}"));
            tcp.set_nodelay(true).expect("TCP_NODELAY");
            let (send, connection) = h2::client::handshake(tcp)
                .await
                .unwrap_or_else(|e| panic!("HTTP/2 handshake with {authority}: {e}"));
            tokio::spawn(async move {
                let _ = connection.await;
            });
            connections.push(send);
        }
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", encode(name), encode(key)));
        Self {
            grpc_authorization: format!("Bearer {key}")
                .parse()
                .expect("a service key is printable ASCII"),
            basic: HeaderValue::from_str(&format!("Basic {credentials}")).expect("base64 is a header value"),
            token_uri: format!("http://{authority}{}", authd::http::TOKEN_PATH)
                .parse()
                .expect("the token endpoint's URI"),
            connections,
        }
    }
}

/// One ExchangeToken call with the service's key; a failure as its label.
async fn exchange_token(
    client: &mut AuthServiceClient<Channel>,
    tokens: &TokenClient,
    request: pb::ExchangeTokenRequest,
) -> Result<pb::ExchangeTokenResponse, String> {
    Ok(client
        .exchange_token(bearer(request, &tokens.grpc_authorization))
        .await
        .map_err(|s| code_label(&s))?
        .into_inner())
}

/// ExchangeToken, client_credentials for [`AUDIENCE`].
pub async fn client_credentials_grpc(
    client: &mut AuthServiceClient<Channel>,
    tokens: &TokenClient,
) -> Result<(), String> {
    let request = pb::ExchangeTokenRequest {
        grant_type: GRANT_CLIENT_CREDENTIALS.to_owned(),
        audience: AUDIENCE.to_owned(),
        ..Default::default()
    };
    let r = exchange_token(client, tokens, request).await?;
    granted(&r.access_token, &r.token_type, r.expires_in)
}

/// ExchangeToken, token exchange of the user's `subject_token` for
/// [`AUDIENCE`].
pub async fn exchange_grpc(
    client: &mut AuthServiceClient<Channel>,
    tokens: &TokenClient,
    subject_token: &str,
) -> Result<(), String> {
    let request = pb::ExchangeTokenRequest {
        grant_type: GRANT_TOKEN_EXCHANGE.to_owned(),
        audience: AUDIENCE.to_owned(),
        subject_token: subject_token.to_owned(),
        subject_token_type: TOKEN_TYPE_ACCESS.to_owned(),
        ..Default::default()
    };
    let r = exchange_token(client, tokens, request).await?;
    if r.issued_token_type != TOKEN_TYPE_ACCESS {
        return Err("wrong_issued_token_type".into());
    }
    granted(&r.access_token, &r.token_type, r.expires_in)
}

/// `POST /oauth2/token`, client_credentials for [`AUDIENCE`], on HTTP/2
/// connection `task % connections`.
pub async fn client_credentials_http(tokens: &TokenClient, task: usize) -> Result<(), String> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT_CLIENT_CREDENTIALS)
        .append_pair("audience", AUDIENCE)
        .finish();
    let body = post_form(tokens, task, form).await?;
    granted_json(&body, None)
}

/// `POST /oauth2/token`, token exchange of `subject_token` for
/// [`AUDIENCE`].
pub async fn exchange_http(tokens: &TokenClient, task: usize, subject_token: &str) -> Result<(), String> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT_TOKEN_EXCHANGE)
        .append_pair("audience", AUDIENCE)
        .append_pair("subject_token", subject_token)
        .append_pair("subject_token_type", TOKEN_TYPE_ACCESS)
        .finish();
    let body = post_form(tokens, task, form).await?;
    granted_json(&body, Some(TOKEN_TYPE_ACCESS))
}

/// One form POST to the token endpoint; the body of a 200, or the label
/// of anything else.
async fn post_form(tokens: &TokenClient, task: usize, form: String) -> Result<Bytes, String> {
    let request = Request::post(tokens.token_uri.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, tokens.basic.clone())
        .body(())
        .map_err(|e| format!("request: {e}"))?;
    let send = tokens.connections[task % tokens.connections.len()].clone();
    let mut send = send.ready().await.map_err(h2_label)?;
    let (response, mut stream) = send.send_request(request, false).map_err(h2_label)?;
    stream.send_data(Bytes::from(form), true).map_err(h2_label)?;
    let response = response.await.map_err(h2_label)?;
    let status = response.status();
    let mut recv = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_label)?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    if status == http::StatusCode::OK {
        return Ok(Bytes::from(body));
    }
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Err(format!("http_{}/{error}", status.as_u16()))
}

fn h2_label(e: h2::Error) -> String {
    format!("h2: {e}")
}

/// What every grant's success carries.
fn granted(access_token: &str, token_type: &str, expires_in: i64) -> Result<(), String> {
    if access_token.is_empty() {
        Err("no_token".into())
    } else if token_type != "Bearer" {
        Err("wrong_token_type".into())
    } else if expires_in <= 0 {
        Err("expired".into())
    } else {
        Ok(())
    }
}

/// The same from the JSON of RFC 6749 §5.1, and for an exchange RFC 8693
/// §2.2.1's `issued_token_type`.
fn granted_json(body: &[u8], issued_token_type: Option<&str>) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "not_json".to_owned())?;
    if let Some(expected) = issued_token_type
        && v["issued_token_type"].as_str() != Some(expected)
    {
        return Err("wrong_issued_token_type".into());
    }
    granted(
        v["access_token"].as_str().unwrap_or_default(),
        v["token_type"].as_str().unwrap_or_default(),
        v["expires_in"].as_i64().unwrap_or_default(),
    )
}
