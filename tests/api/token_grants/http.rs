//! The same grants at `POST /oauth2/token` and introspection at `POST
//! /oauth2/introspect`, over a plain HTTP/1.1 socket: each client
//! authentication method, each RFC 6749/8693 error with its status, and
//! form-encoding tricks that must get `invalid_request` (or 413) and mint
//! nothing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::admin::{delete_key, disable};
use crate::http1::{HttpResponse, Request, basic};

const FORM: &str = "application/x-www-form-urlencoded";

fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish().into_bytes()
}

fn post<'a>(path: &'a str, pairs: &[(&str, &str)]) -> Request<'a> {
    let mut request = Request::new("POST", path).header("content-type", FORM);
    request.body = encode(pairs);
    request
}

/// The app with metrics, so a test can count what was minted.
async fn spawn_with_metrics() -> TestApp {
    spawn_app_with(|c| {
        c.audiences = vec![BILLING.into(), LEDGER.into()];
        crate::metrics::with_metrics(c);
    })
    .await
}

/// Tokens minted so far, every grant together.
async fn minted(app: &TestApp) -> f64 {
    let page = crate::metrics::scrape(app, None).await;
    page.body
        .lines()
        .filter(|l| l.starts_with("authd_tokens_granted_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A 200 token response: its JSON, after the headers RFC 6749 §5.1 asks.
#[track_caller]
fn granted(response: &HttpResponse) -> Value {
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body = response.json();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0), "{body}");
    body
}

/// An RFC 6749 §5.2 error with this status and `error`.
#[track_caller]
fn oauth_error(response: &HttpResponse, status: u16, error: &str, what: &str) {
    let body = String::from_utf8_lossy(&response.body);
    assert_eq!(response.status, status, "{what}: {body}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    assert_eq!(response.header("cache-control"), Some("no-store"), "{what}");
    let json = response.json();
    assert_eq!(json["error"], error, "{what}: {json}");
    assert!(
        json["error_description"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {json}"
    );
    assert!(json.get("access_token").is_none(), "{what}");
    if status == 401 {
        assert!(
            response
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic")),
            "{what}: 401 without WWW-Authenticate Basic"
        );
    }
}

#[tokio::test]
async fn client_credentials_over_http_with_each_client_authentication_method() {
    let app = spawn().await;
    let name = fresh_service("reports");
    let key = app.service_key(&name, &[READ, INTROSPECT]).await;
    let cc = [("grant_type", CLIENT_CREDENTIALS), ("audience", BILLING)];
    let with_basic = post(TOKEN_PATH, &cc).header("authorization", basic(&name, &key));
    let mut posted = cc.to_vec();
    posted.extend([("client_id", name.as_str()), ("client_secret", key.as_str())]);
    let with_post = post(TOKEN_PATH, &posted);
    let with_bearer_key = post(TOKEN_PATH, &cc).bearer(&key);
    let mut named = cc.to_vec();
    named.push(("client_id", name.as_str()));
    let with_basic_and_client_id = post(TOKEN_PATH, &named).header("authorization", basic(&name, &key));
    for (what, request) in [
        ("Basic", with_basic),
        ("client_secret_post", with_post),
        ("Bearer", with_bearer_key),
        ("Basic with the same client_id", with_basic_and_client_id),
    ] {
        let body = granted(&request.send(app.addr).await);
        assert!(body.get("issued_token_type").is_none(), "{what}: {body}");
        assert_eq!(
            words(body["scope"].as_str().unwrap()),
            sorted(&[READ, INTROSPECT]),
            "{what}"
        );
        let claims = jwt_claims(body["access_token"].as_str().unwrap());
        assert_eq!(claims["aud"], BILLING, "{what}");
        assert_eq!(claims["sub"], format!("svc:{name}"), "{what}");
        assert_eq!(claims["client_id"], name.as_str(), "{what}");
    }
    // `resource` (RFC 8707) names the audience as well; the default is
    // authd's own; scope narrows.
    let body = granted(
        &post(
            TOKEN_PATH,
            &[
                ("grant_type", CLIENT_CREDENTIALS),
                ("resource", LEDGER),
                ("scope", READ),
            ],
        )
        .header("authorization", basic(&name, &key))
        .send(app.addr)
        .await,
    );
    assert_eq!(body["scope"], READ);
    assert_eq!(jwt_claims(body["access_token"].as_str().unwrap())["aud"], LEDGER);
    let body = granted(
        &post(TOKEN_PATH, &[("grant_type", CLIENT_CREDENTIALS)])
            .header("authorization", basic(&name, &key))
            .send(app.addr)
            .await,
    );
    let own = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jwt_claims(&own)["aud"], OWN);
    // The token works at authd's gRPC methods as the key does.
    let user = app.register(&fresh_email(), PASSWORD).await;
    crate::admin::get_user(&app, &own, &user.id).await.unwrap();
}

#[tokio::test]
async fn token_exchange_and_impersonation_over_http() {
    let app = spawn().await;
    let (user, tokens) = user_with_roles(&app, &["reader", "writer"]).await;
    let name = fresh_service("frontend");
    let key = app.service_key(&name, &[EXCHANGE, IMPERSONATE]).await;

    let body = granted(
        &post(
            TOKEN_PATH,
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &tokens.access_token),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("audience", BILLING),
                ("scope", "reader"),
            ],
        )
        .header("authorization", basic(&name, &key))
        .send(app.addr)
        .await,
    );
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(body["scope"], "reader");
    let exchanged = body["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&exchanged);
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["sid"], session_of(&tokens.access_token));
    assert_eq!(claims["act"], json!({ "sub": format!("svc:{name}") }));
    assert_eq!(claims["roles"], json!(["reader"]));

    // Exchanged again over HTTP (requested_token_type access_token is fine).
    let body = granted(
        &post(
            TOKEN_PATH,
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &exchanged),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("resource", LEDGER),
            ],
        )
        .bearer(&key)
        .send(app.addr)
        .await,
    );
    assert_eq!(
        actors(&jwt_claims(body["access_token"].as_str().unwrap())).len(),
        2
    );

    let body = granted(
        &post(
            TOKEN_PATH,
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("requested_subject", &user.id),
                ("audience", BILLING),
            ],
        )
        .header("authorization", basic(&name, &key))
        .send(app.addr)
        .await,
    );
    assert_eq!(body["expires_in"], 300);
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["act"]["sub"], format!("svc:{name}"));
    assert_eq!(claims["amr"], json!([]));
}

#[tokio::test]
async fn every_rfc_error_of_the_token_endpoint() {
    let app = spawn_app_with(|c| {
        c.audiences = vec![BILLING.into(), LEDGER.into()];
        // Many refusals from one address: the limit has a test of its own.
        c.service_auth_failure_limit = 0;
    })
    .await;
    let (user, tokens) = user_with_roles(&app, &["reader"]).await;
    let (disabled, _) = app.signed_in_user().await;
    let admin = app.service_key("test-admin", &[READ, WRITE]).await;
    disable(&app, &admin, &disabled.id).await.unwrap();
    let name = fresh_service("client");
    let key = app.service_key(&name, &[READ, EXCHANGE, IMPERSONATE]).await;
    let weak_name = fresh_service("weak");
    let weak = app.service_key(&weak_name, &[READ]).await;
    let doomed_name = fresh_service("doomed");
    let doomed = app.service_key(&doomed_name, &[READ, EXCHANGE]).await;
    let doomed_token = service_token(&app, &doomed, "", "").await;
    delete_key(&app, &doomed).await;
    let own_token = service_token(&app, &key, "", "").await;
    let logged_out = app.signed_in_user().await.1;
    app.logout(&logged_out.refresh_token).await.unwrap();
    let expired = resigned(&app, &tokens.access_token, |c| {
        c["iat"] = json!(now() - 960);
        c["nbf"] = json!(now() - 960);
        c["exp"] = json!(now() - 60);
    });
    let foreign = sign_ed25519(
        &authd::crypto::keys::generate_ed25519_pem().unwrap(),
        &jwt_header(&tokens.access_token),
        &jwt_claims(&tokens.access_token),
    );
    let auth = basic(&name, &key);
    let exchange_of = |subject: &str| {
        vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("subject_token", subject.to_owned()),
            ("audience", BILLING.to_owned()),
        ]
    };
    let owned = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let cc = |more: &[(&'static str, &str)]| {
        let mut pairs = owned(&[("grant_type", CLIENT_CREDENTIALS)]);
        pairs.extend(owned(more));
        pairs
    };
    // What the case is, the form, the Authorization header, the status and the error.
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Option<String>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no client authentication", cc(&[]), None, 401, "invalid_client"),
        (
            "an unknown key",
            cc(&[]),
            Some(basic(&name, &format!("sk_{}", "A".repeat(43)))),
            401,
            "invalid_client",
        ),
        (
            "another client's name",
            cc(&[]),
            Some(basic(&weak_name, &key)),
            401,
            "invalid_client",
        ),
        (
            "a deleted key's token",
            exchange_of(&tokens.access_token),
            Some(format!("Bearer {doomed_token}")),
            401,
            "invalid_client",
        ),
        (
            "a service token minting another",
            cc(&[]),
            Some(format!("Bearer {own_token}")),
            401,
            "invalid_client",
        ),
        (
            "a malformed Basic header",
            cc(&[]),
            Some("Basic !!!".to_owned()),
            401,
            "invalid_client",
        ),
        (
            "an unknown scheme",
            cc(&[]),
            Some(format!("Digest {key}")),
            401,
            "invalid_client",
        ),
        (
            "an expired subject",
            exchange_of(&expired),
            Some(auth.clone()),
            400,
            "invalid_grant",
        ),
        (
            "a logged-out subject",
            exchange_of(&logged_out.access_token),
            Some(auth.clone()),
            400,
            "invalid_grant",
        ),
        (
            "another key's subject",
            exchange_of(&foreign),
            Some(auth.clone()),
            400,
            "invalid_grant",
        ),
        (
            "a service token as subject",
            exchange_of(&own_token),
            Some(auth.clone()),
            400,
            "invalid_grant",
        ),
        (
            "a disabled account",
            owned(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("requested_subject", &disabled.id),
                ("audience", BILLING),
            ]),
            Some(auth.clone()),
            400,
            "invalid_grant",
        ),
        (
            "an unknown account",
            owned(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("requested_subject", &uuid::Uuid::new_v4().to_string()),
                ("audience", BILLING),
            ]),
            Some(auth.clone()),
            400,
            "invalid_grant",
        ),
        (
            "an unregistered audience",
            cc(&[("audience", ELSEWHERE)]),
            Some(auth.clone()),
            400,
            "invalid_target",
        ),
        (
            "audience and resource differ",
            cc(&[("audience", BILLING), ("resource", LEDGER)]),
            Some(auth.clone()),
            400,
            "invalid_target",
        ),
        (
            "a scope the key lacks",
            cc(&[("scope", WRITE)]),
            Some(auth.clone()),
            400,
            "invalid_scope",
        ),
        (
            "a role the subject lacks",
            {
                let mut pairs = exchange_of(&tokens.access_token);
                pairs.push(("scope", "admin".to_owned()));
                pairs
            },
            Some(auth.clone()),
            400,
            "invalid_scope",
        ),
        (
            "exchange without tokens.exchange",
            exchange_of(&tokens.access_token),
            Some(basic(&weak_name, &weak)),
            400,
            "unauthorized_client",
        ),
        (
            "impersonation without users.impersonate",
            owned(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("requested_subject", &user.id),
                ("audience", BILLING),
            ]),
            Some(basic(&weak_name, &weak)),
            400,
            "unauthorized_client",
        ),
        (
            "the password grant",
            owned(&[("grant_type", "password"), ("username", "a"), ("password", "b")]),
            Some(auth.clone()),
            400,
            "unsupported_grant_type",
        ),
        (
            "the refresh_token grant",
            owned(&[("grant_type", "refresh_token")]),
            Some(auth.clone()),
            400,
            "unsupported_grant_type",
        ),
        (
            "no grant_type",
            owned(&[("audience", BILLING)]),
            Some(auth.clone()),
            400,
            "invalid_request",
        ),
        (
            "an exchange without audience",
            owned(&[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &tokens.access_token),
            ]),
            Some(auth.clone()),
            400,
            "invalid_request",
        ),
        (
            "an actor_token",
            {
                let mut p = exchange_of(&tokens.access_token);
                p.push(("actor_token", own_token.clone()));
                p
            },
            Some(auth.clone()),
            400,
            "invalid_request",
        ),
        (
            "a refresh token asked for",
            {
                let mut p = exchange_of(&tokens.access_token);
                p.push((
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token".to_owned(),
                ));
                p
            },
            Some(auth.clone()),
            400,
            "invalid_request",
        ),
        (
            "a subject_token_type of id_token",
            {
                let mut p = exchange_of(&tokens.access_token);
                p.push((
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:id_token".to_owned(),
                ));
                p
            },
            Some(auth.clone()),
            400,
            "invalid_request",
        ),
    ];
    for (what, pairs, authorization, status, error) in cases {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut request = post(TOKEN_PATH, &pairs);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        oauth_error(&request.send(app.addr).await, status, error, what);
    }
    // Another method than POST.
    let response = Request::new("GET", TOKEN_PATH).send(app.addr).await;
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
}

/// Sends `head` and `body` as they are, reading the answer while still
/// writing (a server may answer a body it will not read before it ends).
async fn send_raw(to: SocketAddr, head: String, body: Vec<u8>) -> HttpResponse {
    let stream = tokio::net::TcpStream::connect(to).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
        let _ = writer.shutdown().await;
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut raw)).await;
    writing.abort();
    match read {
        Ok(Ok(_)) => {}
        // A reset after the answer arrived still leaves the answer.
        Ok(Err(e)) => assert!(!raw.is_empty(), "no answer: {e}"),
        Err(_) => panic!("no answer within 20 s"),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn form_encoding_tricks_get_invalid_request_and_mint_nothing() {
    let app = spawn_with_metrics().await;
    let name = fresh_service("tricked");
    let key = app.service_key(&name, &[READ, EXCHANGE]).await;
    let auth = basic(&name, &key);
    let cc = format!("grant_type={CLIENT_CREDENTIALS}");
    let control = post(TOKEN_PATH, &[("grant_type", CLIENT_CREDENTIALS)])
        .header("authorization", auth.clone())
        .send(app.addr)
        .await;
    granted(&control);
    let before = minted(&app).await;
    assert_eq!(before, 1.0, "the control is counted");

    let raw = |body: &str| {
        let mut r = Request::new("POST", TOKEN_PATH).header("authorization", auth.clone());
        r.body = body.as_bytes().to_vec();
        r
    };
    let cases: Vec<(&str, Request<'_>, u16)> = vec![
        (
            "grant_type twice",
            raw(&format!("{cc}&{cc}")).header("content-type", FORM),
            400,
        ),
        (
            "grant_type twice, different values",
            raw(&format!("{cc}&grant_type=password")).header("content-type", FORM),
            400,
        ),
        (
            "audience twice",
            raw(&format!("{cc}&audience={BILLING}&audience={LEDGER}")).header("content-type", FORM),
            400,
        ),
        (
            "an escaped name repeating another",
            raw(&format!("{cc}&grant%5Ftype=client_credentials")).header("content-type", FORM),
            400,
        ),
        (
            "scope twice, once empty",
            raw(&format!("{cc}&scope=&scope=users.read")).header("content-type", FORM),
            400,
        ),
        ("no content type", raw(&cc), 400),
        ("text/plain", raw(&cc).header("content-type", "text/plain"), 400),
        (
            "JSON",
            raw(&json!({"grant_type": CLIENT_CREDENTIALS}).to_string())
                .header("content-type", "application/json"),
            400,
        ),
        (
            "multipart",
            raw(&cc).header("content-type", "multipart/form-data; boundary=x"),
            400,
        ),
        (
            "a form type with a suffix",
            raw(&cc).header("content-type", "application/x-www-form-urlencodedx"),
            400,
        ),
        (
            "two content types",
            raw(&cc)
                .header("content-type", FORM)
                .header("content-type", "application/json"),
            400,
        ),
        (
            "an escape that is not UTF-8",
            raw(&format!("{cc}&scope=%FF")).header("content-type", FORM),
            400,
        ),
        (
            "Basic and client_secret_post",
            raw(&format!("{cc}&client_id={name}&client_secret={key}")).header("content-type", FORM),
            400,
        ),
        (
            "two Authorization headers",
            raw(&cc)
                .header("content-type", FORM)
                .header("authorization", format!("Bearer {key}")),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let response = request.send(app.addr).await;
        oauth_error(&response, status, "invalid_request", what);
    }

    // Raw bytes that are not UTF-8.
    let mut body = cc.clone().into_bytes();
    body.extend_from_slice(b"&scope=\xff\xfe");
    let mut request = Request::new("POST", TOKEN_PATH)
        .header("content-type", FORM)
        .header("authorization", auth.clone());
    request.body = body;
    oauth_error(
        &request.send(app.addr).await,
        400,
        "invalid_request",
        "raw non-UTF-8",
    );

    // A client secret in the query string is no client authentication.
    let mut request = Request::new("POST", "/oauth2/token?client_secret=x").header("content-type", FORM);
    request.body = cc.clone().into_bytes();
    oauth_error(
        &request.send(app.addr).await,
        401,
        "invalid_client",
        "no credential",
    );
    let path = format!("{TOKEN_PATH}?client_id={name}&client_secret={key}");
    let mut request = Request::new("POST", &path).header("content-type", FORM);
    request.body = cc.clone().into_bytes();
    oauth_error(
        &request.send(app.addr).await,
        401,
        "invalid_client",
        "a secret in the query",
    );

    // A megabyte, declared and chunked: 413 before it is read whole.
    let megabyte = format!("{cc}&scope={}", "a".repeat(1024 * 1024));
    let head = format!(
        "POST {TOKEN_PATH} HTTP/1.1\r\nhost: authd\r\nconnection: close\r\ncontent-type: {FORM}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
        megabyte.len()
    );
    let response = send_raw(app.addr, head, megabyte.clone().into_bytes()).await;
    oauth_error(&response, 413, "invalid_request", "a declared megabyte");
    let mut chunked = Vec::new();
    for chunk in megabyte.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST {TOKEN_PATH} HTTP/1.1\r\nhost: authd\r\nconnection: close\r\ncontent-type: {FORM}\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let response = send_raw(app.addr, head, chunked).await;
    oauth_error(&response, 413, "invalid_request", "a chunked megabyte");
    // Just past the limit.
    let mut request = Request::new("POST", TOKEN_PATH)
        .header("content-type", FORM)
        .header("authorization", auth.clone());
    request.body = format!("{cc}&pad={}", "a".repeat(16 * 1024)).into_bytes();
    oauth_error(
        &request.send(app.addr).await,
        413,
        "invalid_request",
        "16 KiB and a bit",
    );

    assert_eq!(minted(&app).await, before, "a trick minted a token");
    // And the same client is still served afterwards.
    granted(
        &post(TOKEN_PATH, &[("grant_type", CLIENT_CREDENTIALS)])
            .header("authorization", auth)
            .send(app.addr)
            .await,
    );
}

#[tokio::test]
async fn introspection_over_http_reads_exchanged_and_service_tokens() {
    let app = spawn().await;
    let (user, tokens) = user_with_roles(&app, &["reader"]).await;
    let name = fresh_service("resource");
    let key = app.service_key(&name, &[INTROSPECT, EXCHANGE]).await;
    let front = fresh_service("front");
    let front_key = app.service_key(&front, &[EXCHANGE]).await;
    let first = exchanged(&app, &front_key, &tokens.access_token, BILLING).await;
    let second = exchanged(&app, &key, &first, LEDGER).await;
    let service = service_token(&app, &front_key, BILLING, "").await;
    let ask = |token: &str| {
        post(
            INTROSPECTION_PATH,
            &[("token", token), ("token_type_hint", "access_token")],
        )
        .header("authorization", basic(&name, &key))
    };

    let response = ask(&second).send(app.addr).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let about = response.json();
    let claims = jwt_claims(&second);
    assert_eq!(about["active"], true, "{about}");
    assert_eq!(about["iss"], "https://authd.test");
    assert_eq!(about["sub"], user.id.as_str());
    assert_eq!(about["sid"], session_of(&tokens.access_token));
    assert_eq!(about["aud"], LEDGER);
    assert_eq!(about["client_id"], name.as_str());
    assert_eq!(about["act"], claims["act"]);
    assert_eq!(
        actors(&about),
        vec![format!("svc:{name}"), format!("svc:{front}")]
    );
    assert_eq!(about["roles"], json!(["reader"]));
    for copied in ["exp", "iat", "nbf", "jti", "amr", "acr", "auth_time"] {
        assert_eq!(about[copied], claims[copied], "{copied}");
    }

    let about = ask(&service).send(app.addr).await.json();
    assert_eq!(about["active"], true, "{about}");
    assert_eq!(about["sub"], format!("svc:{front}"));
    assert_eq!(about["client_id"], front.as_str());
    assert_eq!(about["aud"], BILLING);
    assert_eq!(about["scope"], EXCHANGE);
    assert!(about.get("sid").is_none());

    // client_secret_post works here too; without the scope: 403.
    let response = post(
        INTROSPECTION_PATH,
        &[
            ("token", &second),
            ("client_id", &front),
            ("client_secret", &front_key),
        ],
    )
    .send(app.addr)
    .await;
    oauth_error(&response, 403, "unauthorized_client", "without tokens.introspect");
    let response = post(INTROSPECTION_PATH, &[("token", &second)])
        .send(app.addr)
        .await;
    oauth_error(&response, 401, "invalid_client", "no client");
    let response = post(INTROSPECTION_PATH, &[("token_type_hint", "access_token")])
        .header("authorization", basic(&name, &key))
        .send(app.addr)
        .await;
    oauth_error(&response, 400, "invalid_request", "no token");

    // Ended: exactly {"active": false}.
    app.logout(&tokens.refresh_token).await.unwrap();
    for token in [&first, &second, &tokens.access_token] {
        let response = ask(token).send(app.addr).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.json(), json!({ "active": false }));
    }
}

#[tokio::test]
async fn a_users_token_as_the_clients_credential_over_http_is_an_invalid_client() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let cc = [("grant_type", CLIENT_CREDENTIALS)];
    let exchange = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", tokens.access_token.as_str()),
        ("audience", BILLING),
    ];
    let impersonate = [
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_subject", user.id.as_str()),
        ("audience", BILLING),
    ];
    for (what, pairs) in [
        ("client_credentials", &cc[..]),
        ("exchange", &exchange[..]),
        ("impersonation", &impersonate[..]),
    ] {
        let response = post(TOKEN_PATH, pairs)
            .bearer(&tokens.access_token)
            .send(app.addr)
            .await;
        oauth_error(&response, 401, "invalid_client", what);
        let mut posted = pairs.to_vec();
        posted.push(("client_secret", tokens.access_token.as_str()));
        let response = post(TOKEN_PATH, &posted).send(app.addr).await;
        oauth_error(&response, 401, "invalid_client", what);
    }
    let response = post(INTROSPECTION_PATH, &[("token", tokens.access_token.as_str())])
        .bearer(&tokens.access_token)
        .send(app.addr)
        .await;
    oauth_error(&response, 401, "invalid_client", "introspection");
}

#[tokio::test]
async fn a_client_past_the_failure_limit_gets_429_with_retry_after_over_http() {
    let app = spawn_app_with(|c| {
        c.audiences = vec![BILLING.into()];
        c.service_auth_failure_limit = 3;
        crate::metrics::with_metrics(c);
    })
    .await;
    caches_on(&app).await;
    let name = fresh_service("limited");
    let key = app.service_key(&name, &[READ]).await;
    let (prober, neighbour) = ("127.0.0.21", "127.0.0.22");
    // The real key is used once, so this replica holds it.
    granted(
        &post(TOKEN_PATH, &[("grant_type", CLIENT_CREDENTIALS)])
            .header("authorization", basic(&name, &key))
            .from(neighbour)
            .send(app.addr)
            .await,
    );
    let mut failures = 0;
    let throttled = loop {
        let response = post(TOKEN_PATH, &[("grant_type", CLIENT_CREDENTIALS)])
            .header("authorization", basic(&name, &format!("sk_{}", "B".repeat(43))))
            .from(prober)
            .send(app.addr)
            .await;
        match response.status {
            401 => failures += 1,
            429 => break response,
            other => panic!("{other}: {}", String::from_utf8_lossy(&response.body)),
        }
        assert!(failures <= 20, "20 wrong secrets and no throttling");
    };
    let json = throttled.json();
    assert_eq!(json["error"], "temporarily_unavailable", "{json}");
    let retry: u64 = throttled
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // Another address is served.
    granted(
        &post(TOKEN_PATH, &[("grant_type", CLIENT_CREDENTIALS)])
            .header("authorization", basic(&name, &key))
            .from(neighbour)
            .send(app.addr)
            .await,
    );
    // The live key still works from the prober's address (held in memory).
    granted(
        &post(TOKEN_PATH, &[("grant_type", CLIENT_CREDENTIALS)])
            .header("authorization", basic(&name, &key))
            .from(prober)
            .send(app.addr)
            .await,
    );
}

#[tokio::test]
async fn the_metadata_describes_what_the_token_endpoint_does() {
    let app = spawn().await;
    let doc = Request::new("GET", "/.well-known/oauth-authorization-server")
        .send(app.addr)
        .await;
    let same = Request::new("GET", "/.well-known/openid-configuration")
        .send(app.addr)
        .await;
    assert_eq!(doc.body, same.body, "one document at both paths");
    assert!(
        doc.header("cache-control")
            .is_some_and(|v| v.starts_with("public, max-age="))
    );
    let doc = doc.json();
    let issuer = "https://authd.test";
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(doc["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
    assert_eq!(doc["token_endpoint"], format!("{issuer}/oauth2/token"));
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{issuer}/oauth2/introspect")
    );
    assert_eq!(
        doc["grant_types_supported"],
        json!([CLIENT_CREDENTIALS, TOKEN_EXCHANGE])
    );
    for member in [
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
    ] {
        assert_eq!(
            doc[member],
            json!(["client_secret_basic", "client_secret_post"]),
            "{member}"
        );
    }
    assert_eq!(doc["response_types_supported"], json!([]));
    assert_eq!(doc["subject_types_supported"], json!(["public"]));
    assert_eq!(doc["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
    for scope in [READ, WRITE, INTROSPECT, EXCHANGE, IMPERSONATE] {
        assert!(
            doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(scope)),
            "{scope}"
        );
    }
    // The key set verifies the tokens the endpoint mints.
    let jwks = Request::new("GET", "/.well-known/jwks.json").send(app.addr).await;
    assert_eq!(jwks.header("content-type"), Some("application/jwk-set+json"));
    assert!(
        jwks.header("cache-control")
            .is_some_and(|v| v.contains("max-age"))
    );
    let jwks = jwks.json();
    let key = app.service_key(&fresh_service("jwks"), &[READ]).await;
    let token = service_token(&app, &key, BILLING, "").await;
    let kid = jwt_header(&token)["kid"].clone();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the signing key is published");
    let pinned = authd_token_rules::PinnedKey::from_jwk(
        jwk["kty"].as_str().unwrap(),
        jwk["crv"].as_str().unwrap(),
        jwk["alg"].as_str().unwrap_or(""),
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap_or(""),
    )
    .unwrap();
    let rules = authd_token_rules::Rules::<authd_token_rules::ServiceAccess>::new(
        issuer,
        BILLING,
        authd_token_rules::Leeway::DEFAULT,
    );
    rules
        .verify(&token, now(), |_| Some(&pinned))
        .expect("verifies with the published key");
    assert!(jwk.get("d").is_none(), "no private part");
}

const TOKEN_PATH: &str = "/oauth2/token";
const INTROSPECTION_PATH: &str = "/oauth2/introspect";

/// One request over HTTP/2 with prior knowledge (what gRPC clients speak on
/// this port): status, headers and body.
async fn over_h2(
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, ::http::HeaderMap, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = ::http::Request::builder()
        .method(method)
        .uri(format!("http://{to}{path}"))
        .body(())
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            ::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send.send_request(request, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream.send_data(bytes::Bytes::from(body), true).unwrap();
    }
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        read.extend_from_slice(&chunk);
    }
    (status, headers, read)
}

#[tokio::test]
async fn the_token_endpoint_and_the_documents_answer_over_http2_too() {
    let app = spawn().await;
    let name = fresh_service("h2");
    let key = app.service_key(&name, &[READ, INTROSPECT]).await;
    let (status, headers, body) = over_h2(
        app.addr,
        "POST",
        TOKEN_PATH,
        &[
            ("content-type", FORM.to_owned()),
            ("authorization", basic(&name, &key)),
        ],
        encode(&[("grant_type", CLIENT_CREDENTIALS), ("audience", BILLING)]),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");
    let granted: Value = serde_json::from_slice(&body).unwrap();
    let token = granted["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jwt_claims(&token)["aud"], BILLING);

    let (status, _, body) = over_h2(
        app.addr,
        "POST",
        INTROSPECTION_PATH,
        &[
            ("content-type", FORM.to_owned()),
            ("authorization", basic(&name, &key)),
        ],
        encode(&[("token", &token)]),
    )
    .await;
    assert_eq!(status, 200);
    let about: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(about["active"], true, "{about}");

    let (status, headers, body) = over_h2(
        app.addr,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["issuer"], "https://authd.test");

    // A form error over HTTP/2 is the same RFC error.
    let (status, _, body) = over_h2(
        app.addr,
        "POST",
        TOKEN_PATH,
        &[("authorization", basic(&name, &key))],
        encode(&[("grant_type", CLIENT_CREDENTIALS)]),
    )
    .await;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"], "invalid_request");
}
