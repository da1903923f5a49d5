//! authd-verifier end to end: a real authd, the example service
//! (examples/verified_service.rs) behind `VerifierLayer` on a real socket,
//! and a real client. Revocations reach the service through
//! WatchRevocations; nothing here waits for a token to expire.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use authd::crypto::keys::Key;
use authd_verifier::{Acr, OnStale, Policy, Verifier, VerifierConfig, VerifierLayer};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

use crate::helpers::*;

#[path = "../../examples/verified_service.rs"]
#[allow(dead_code)]
mod verified_service;

const WATCH: &str = "revocations.watch";
const INTROSPECT: &str = "tokens.introspect";
/// Generous: the suite runs many servers on two cores. The time actually
/// taken is printed (`--nocapture`); BENCHMARKS.md has measured numbers.
const REFUSAL_WAIT: Duration = Duration::from_secs(10);

/// The example service behind a verifier of `app`'s tokens.
struct VerifiedService {
    client: HealthClient<Channel>,
    verifier: Verifier,
    _stop: oneshot::Sender<()>,
}

/// Who the service says the caller is.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    user_id: String,
    session_id: String,
    roles: String,
}

pub(crate) async fn start_verifier(app_addr: SocketAddr, config: VerifierConfig) -> Verifier {
    let channel = Channel::from_shared(format!("http://{app_addr}"))
        .unwrap()
        .connect_lazy();
    Verifier::start(channel, config).await.unwrap()
}

fn config_for(app: &TestApp, key: &str) -> VerifierConfig {
    VerifierConfig::new(&app.config.issuer, &app.config.audience, key)
}

async fn serve(verifier: Verifier) -> VerifiedService {
    serve_layer(VerifierLayer::new(verifier.clone()), verifier).await
}

/// The example service behind `layer`, which wraps `verifier`.
async fn serve_layer(layer: VerifierLayer, verifier: Verifier) -> VerifiedService {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(verified_service::serve_with(listener, layer, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    VerifiedService {
        client: HealthClient::new(channel),
        verifier,
        _stop: stop,
    }
}

/// A service following `app`'s revocations with a fresh key, once its
/// stream has started.
async fn fresh_service(
    app: &TestApp,
    tweak: impl FnOnce(VerifierConfig) -> VerifierConfig,
) -> VerifiedService {
    let key = app.service_key("verified-service", &[WATCH]).await;
    let service = serve(start_verifier(app.addr, tweak(config_for(app, &key))).await).await;
    assert!(
        service.verifier.wait_until_fresh(REFUSAL_WAIT).await,
        "the revocation stream never started: {:?}",
        service.verifier.status()
    );
    service
}

impl VerifiedService {
    async fn who_am_i(&self, access_token: &str) -> Result<Identity, Status> {
        let request = with_bearer(
            HealthCheckRequest {
                service: String::new(),
            },
            access_token,
        );
        let response = self.client.clone().check(request).await?;
        let read = |name: &str| {
            response
                .metadata()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        Ok(Identity {
            user_id: read("x-user-id"),
            session_id: read("x-session-id"),
            roles: read("x-roles"),
        })
    }

    /// How the caller proved who they are, as the service read it: `amr`,
    /// `acr`, `auth_time`.
    async fn assurance(&self, access_token: &str) -> Result<(String, String, i64), Status> {
        let request = with_bearer(
            HealthCheckRequest {
                service: String::new(),
            },
            access_token,
        );
        let response = self.client.clone().check(request).await?;
        let read = |name: &str| {
            response
                .metadata()
                .get(name)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        Ok((read("x-amr"), read("x-acr"), read("x-auth-time").parse().unwrap()))
    }

    /// Calls until the service refuses `access_token`; the refusal and how
    /// long it took. Fails if it is still accepted after `within`.
    async fn refused_within(&self, access_token: &str, within: Duration) -> (Status, Duration) {
        let started = Instant::now();
        loop {
            match self.who_am_i(access_token).await {
                Err(status) => return (status, started.elapsed()),
                Ok(_) => assert!(
                    started.elapsed() < within,
                    "still accepted after {within:?}: {:?}; the verifier's log:\n{}",
                    self.verifier.status(),
                    verifier_log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// What every verifier in this test binary logged (the last 40 lines).
fn verifier_log() -> String {
    let logs = captured_logs().unwrap_or_default();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("authd_verifier")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[track_caller]
fn assert_refusal(status: &Status, code: Code, expected_reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(status), expected_reason, "{status:?}");
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Signs `claims` with `pem` under the header fields given.
fn sign(pem: &str, claims: &Value, kid: &str, typ: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    header.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_verified_service_accepts_a_token_and_refuses_it_right_after_logout() {
    let app = spawn_app().await;
    let service = fresh_service(&app, |c| c).await;
    let (user, tokens) = app.signed_in_user().await;

    let me = service.who_am_i(&tokens.access_token).await.unwrap();
    let claims = jwt_claims(&tokens.access_token);
    assert_eq!(
        me,
        Identity {
            user_id: user.id.clone(),
            session_id: claims["sid"].as_str().unwrap().to_owned(),
            roles: String::new(),
        },
        "the handler reads the verified claims"
    );

    app.logout(&tokens.refresh_token).await.unwrap();
    let (status, took) = service.refused_within(&tokens.access_token, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    println!("Logout answered → refused by the service in {took:?}");
    assert!(service.verifier.cursor() > 0, "{:?}", service.verifier.status());
    assert!(service.verifier.status().remembered_revocations >= 1);

    // Another session of the same account is untouched.
    let other = app.tokens_of(&user.email).await;
    assert!(service.who_am_i(&other.access_token).await.is_ok());
}

#[tokio::test]
async fn forged_expired_wrong_audience_and_wrong_typ_tokens_are_refused_by_the_service() {
    let app = spawn_app().await;
    let service = fresh_service(&app, |c| c).await;
    let (_, tokens) = app.signed_in_user().await;
    let genuine = jwt_claims(&tokens.access_token);
    let kid = Key::from_pkcs8_pem(&app.signing_pem).unwrap().kid;
    assert_eq!(kid, kid_of(&tokens.access_token));
    let now = chrono::Utc::now().timestamp();
    // Each differs from the genuine token in one respect.
    let changed = |field: &str, value: Value| {
        let mut c = genuine.clone();
        c[field] = value;
        c
    };
    let mut expired = changed("iat", (now - 1000).into());
    expired["nbf"] = (now - 1000).into();
    expired["exp"] = (now - 100).into();
    let own_key = authd::crypto::keys::generate_ed25519_pem().unwrap();
    let cases = [
        (
            "signed with another key under authd's kid",
            sign(&own_key, &genuine, &kid, Some("at+jwt")),
            "TOKEN_INVALID",
        ),
        (
            "expired",
            sign(&app.signing_pem, &expired, &kid, Some("at+jwt")),
            "TOKEN_EXPIRED",
        ),
        (
            "another audience",
            sign(
                &app.signing_pem,
                &changed("aud", "other-services".into()),
                &kid,
                Some("at+jwt"),
            ),
            "TOKEN_INVALID",
        ),
        (
            "another issuer",
            sign(
                &app.signing_pem,
                &changed("iss", "https://evil.test".into()),
                &kid,
                Some("at+jwt"),
            ),
            "TOKEN_INVALID",
        ),
        (
            "typ JWT (an ID token, not an access token)",
            sign(&app.signing_pem, &genuine, &kid, Some("JWT")),
            "TOKEN_INVALID",
        ),
        (
            "an unknown kid",
            sign(&app.signing_pem, &genuine, "no-such-key", Some("at+jwt")),
            "TOKEN_INVALID",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{kid}"}}"#)),
                tokens.access_token.split('.').nth(1).unwrap()
            ),
            "TOKEN_INVALID",
        ),
        (
            "a service key",
            app.service_key("not-a-user", &[WATCH]).await,
            "TOKEN_INVALID",
        ),
    ];
    for (what, token, expected) in cases {
        let status = service.who_am_i(&token).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(reason(&status), expected, "{what}: {status:?}");
    }
    let anonymous = service
        .client
        .clone()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_refusal(&anonymous, Code::Unauthenticated, "TOKEN_MISSING");
    assert!(
        service.who_am_i(&tokens.access_token).await.is_ok(),
        "and the genuine one passes"
    );
}

#[tokio::test]
async fn a_new_signing_key_is_picked_up_by_the_first_token_that_uses_it() {
    let a = spawn_app().await;
    let service = fresh_service(&a, |c| c).await;
    let (_, before) = a.signed_in_user().await;
    service.who_am_i(&before.access_token).await.unwrap();

    // A restart of authd (on the same address and database) with a new
    // signing key in front of the old one, as a rotation is done.
    let keys = scratch_dir("rotated-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (new_key, old_key) = (keys.join("new.pem"), keys.join("old.pem"));
    std::fs::write(&new_key, authd::crypto::keys::generate_ed25519_pem().unwrap()).unwrap();
    std::fs::write(&old_key, &a.signing_pem).unwrap();
    let (addr, url) = (a.addr, a.database_url());
    a.stop().await.unwrap();
    let b = spawn_app_on(&url, |c| {
        c.listen = addr;
        c.signing_keys = vec![new_key, old_key];
    })
    .await;

    let (_, after) = b.signed_in_user().await;
    assert_ne!(kid_of(&after.access_token), kid_of(&before.access_token));
    let started = Instant::now();
    assert!(
        service.who_am_i(&after.access_token).await.is_ok(),
        "the new kid is fetched at once"
    );
    println!("first token of the new key accepted in {:?}", started.elapsed());
    assert!(
        service.who_am_i(&before.access_token).await.is_ok(),
        "the old key still verifies"
    );
    let _ = std::fs::remove_dir_all(keys);
}

#[tokio::test]
async fn a_disabled_account_is_refused_by_the_service() {
    let app = spawn_app().await;
    let service = fresh_service(&app, |c| c).await;
    let (user, tokens) = app.signed_in_user().await;
    service.who_am_i(&tokens.access_token).await.unwrap();
    let admin_key = app.service_key("account-admin", &["users.write"]).await;
    crate::admin::disable(&app, &admin_key, &user.id).await.unwrap();
    let (status, took) = service.refused_within(&tokens.access_token, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    println!("DisableUser answered → refused by the service in {took:?}");
}

#[tokio::test]
async fn the_stream_resumes_after_authd_restarts_and_delivers_what_it_missed() {
    let a = spawn_app_with(|c| c.revocation_heartbeat = Duration::from_millis(200)).await;
    // Long enough that the verifier keeps trusting its state while authd
    // restarts: what is tested is the resume, not the staleness bound.
    let service = fresh_service(&a, |c| c.with_max_staleness(Duration::from_secs(60))).await;
    // A cursor to resume from: one event, or a heartbeat after it. (On a
    // log with no event at all the cursor is 0, which means "from now".)
    let (_, earlier) = a.signed_in_user().await;
    a.logout(&earlier.refresh_token).await.unwrap();
    let known = Instant::now();
    while service.verifier.cursor() == 0 {
        assert!(
            known.elapsed() < REFUSAL_WAIT,
            "no cursor: {:?}",
            service.verifier.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, tokens) = a.signed_in_user().await;
    service.who_am_i(&tokens.access_token).await.unwrap();

    let url = a.database_url();
    let keys = a.config.signing_keys.clone();
    let addr = a.addr;
    let other = spawn_app_on(&url, |c| c.signing_keys = keys.clone()).await;
    // The verifier's authd goes away; the logout happens at the other
    // replica while the verifier cannot hear of it.
    let pem = a.signing_pem.clone();
    a.stop().await.unwrap();
    other.logout(&tokens.refresh_token).await.unwrap();
    assert!(
        service.who_am_i(&tokens.access_token).await.is_ok(),
        "unheard of yet: {:?}",
        service.verifier.status()
    );
    let cursor_before = service.verifier.cursor();

    let key_file = scratch_dir("restart-key");
    std::fs::write(&key_file, pem).unwrap();
    let _restarted = spawn_app_on(&url, |c| {
        c.listen = addr;
        c.signing_keys = vec![key_file.clone()];
    })
    .await;
    let (status, took) = service.refused_within(&tokens.access_token, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    println!("restarted authd → missed logout applied in {took:?}");
    assert!(service.verifier.cursor() > cursor_before);
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test]
async fn with_the_stream_down_longer_than_max_staleness_the_service_fails_closed() {
    let max_staleness = Duration::from_secs(1);
    // Heartbeats well within the bound, so only a real outage makes it stale.
    let app = spawn_app_with(|c| c.revocation_heartbeat = Duration::from_millis(200)).await;
    let service = fresh_service(&app, |c| c.with_max_staleness(max_staleness)).await;
    let (_, tokens) = app.signed_in_user().await;
    service.who_am_i(&tokens.access_token).await.unwrap();

    app.stop().await.unwrap();
    let (status, took) = service.refused_within(&tokens.access_token, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::Unavailable, "UNAVAILABLE");
    println!("authd stopped → service fails closed after {took:?} (max_staleness {max_staleness:?})");
    assert!(took <= max_staleness + Duration::from_secs(2), "{took:?}");
    let status = service.verifier.status();
    assert!(!status.fresh && !status.connected, "{status:?}");
}

#[tokio::test]
async fn without_the_stream_the_introspection_fallback_asks_authd() {
    let app = spawn_app().await;
    // A key that may introspect but not watch: the stream is refused, so
    // the verifier never becomes fresh.
    let key = app.service_key("introspecting-service", &[INTROSPECT]).await;
    let introspecting = serve(
        start_verifier(
            app.addr,
            config_for(&app, &key).with_on_stale(OnStale::Introspect),
        )
        .await,
    )
    .await;
    let failing_closed = serve(start_verifier(app.addr, config_for(&app, &key)).await).await;
    let (user, tokens) = app.signed_in_user().await;

    let me = introspecting.who_am_i(&tokens.access_token).await.unwrap();
    assert_eq!(me.user_id, user.id);
    assert!(!introspecting.verifier.is_fresh());
    let refused = failing_closed.who_am_i(&tokens.access_token).await.unwrap_err();
    assert_refusal(&refused, Code::Unavailable, "UNAVAILABLE");

    app.logout(&tokens.refresh_token).await.unwrap();
    let (status, took) = introspecting
        .refused_within(&tokens.access_token, REFUSAL_WAIT)
        .await;
    assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    println!("Logout answered → refused via IntrospectToken in {took:?}");

    // With authd gone as well, nothing can vouch for a token.
    let (_, still_live) = app.signed_in_user().await;
    assert!(introspecting.who_am_i(&still_live.access_token).await.is_ok());
    app.stop().await.unwrap();
    let (status, _) = introspecting
        .refused_within(&still_live.access_token, REFUSAL_WAIT)
        .await;
    assert_refusal(&status, Code::Unavailable, "UNAVAILABLE");
}

#[tokio::test]
async fn a_session_ended_before_the_verifier_started_is_refused_in_either_mode() {
    let app = spawn_app().await;
    let (_, ended_earlier) = app.signed_in_user().await;
    app.logout(&ended_earlier.refresh_token).await.unwrap();
    let (_, live) = app.signed_in_user().await;
    let key = app
        .service_key("watching-and-introspecting", &[WATCH, INTROSPECT])
        .await;
    let introspecting = serve(
        start_verifier(
            app.addr,
            config_for(&app, &key).with_on_stale(OnStale::Introspect),
        )
        .await,
    )
    .await;
    let failing_closed = serve(start_verifier(app.addr, config_for(&app, &key)).await).await;
    for service in [&introspecting, &failing_closed] {
        assert!(service.verifier.wait_until_fresh(REFUSAL_WAIT).await);
    }

    // The stream started a token lifetime back, so it carried that Logout.
    for service in [&introspecting, &failing_closed] {
        let refused = service.who_am_i(&ended_earlier.access_token).await.unwrap_err();
        assert_refusal(&refused, Code::Unauthenticated, "SESSION_REVOKED");
        assert!(service.who_am_i(&live.access_token).await.is_ok());
    }
    // ...and a later revocation arrives by the stream.
    app.logout(&live.refresh_token).await.unwrap();
    for service in [&introspecting, &failing_closed] {
        let (status, _) = service.refused_within(&live.access_token, REFUSAL_WAIT).await;
        assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    }
}

#[tokio::test]
async fn the_service_reads_the_assurance_authd_signed_and_a_route_can_require_more() {
    let app = spawn_app().await;
    let key = app.service_key("verified-service", &[WATCH]).await;
    let verifier = start_verifier(app.addr, config_for(&app, &key)).await;
    assert!(
        verifier.wait_until_fresh(REFUSAL_WAIT).await,
        "{:?}",
        verifier.status()
    );
    let open = serve(verifier.clone()).await;
    let strict = serve_layer(
        VerifierLayer::new(verifier.clone()).route(
            verified_service::CHECK,
            Policy::new()
                .require_acr(Acr::Aal2)
                .max_age(Duration::from_secs(600)),
        ),
        verifier,
    )
    .await;
    let before = chrono::Utc::now().timestamp();
    let (_, tokens) = app.signed_in_user().await;

    let (amr, acr, auth_time) = open.assurance(&tokens.access_token).await.unwrap();
    assert_eq!((amr.as_str(), acr.as_str()), ("pwd", "aal1"), "a password login");
    let after = chrono::Utc::now().timestamp();
    assert!(
        (before - 1..=after + 1).contains(&auth_time),
        "{auth_time} not in {before}..{after}"
    );

    let status = strict.who_am_i(&tokens.access_token).await.unwrap_err();
    assert_refusal(&status, Code::FailedPrecondition, "REAUTHENTICATION_REQUIRED");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.domain, "authd");
    assert_eq!(info.metadata.get("max_age").map(String::as_str), Some("600"));
}

/// Enrols and confirms a TOTP factor with the session of `tokens`; the
/// recovery codes.
async fn enrol_totp(app: &TestApp, tokens: &authd::pb::auth::v1::TokenPair) -> Vec<String> {
    use authd::pb::auth::v1 as pb;
    let mut client = app.client.clone();
    let enrolled = client
        .enroll_totp(with_bearer(
            pb::EnrollTotpRequest::default(),
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let confirm = pb::ConfirmTotpRequest {
        enrollment_id: enrolled.enrollment_id,
        code: crate::totp::code_now(&enrolled.secret),
    };
    let confirmed = client
        .confirm_totp(with_bearer(confirm, &tokens.access_token))
        .await
        .unwrap()
        .into_inner();
    confirmed.recovery_codes.iter().map(|c| c.to_string()).collect()
}

#[tokio::test]
async fn after_a_factor_change_a_second_factor_route_asks_older_proofs_to_step_up() {
    use authd::pb::auth::v1 as pb;
    let app = spawn_app().await;
    let key = app.service_key("verified-service", &[WATCH]).await;
    // No leeway, so a change one second after the proof is after it.
    let config = config_for(&app, &key).with_leeway(Duration::ZERO);
    let verifier = start_verifier(app.addr, config).await;
    assert!(
        verifier.wait_until_fresh(REFUSAL_WAIT).await,
        "{:?}",
        verifier.status()
    );
    let open = serve(verifier.clone()).await;
    let aal2 = serve_layer(
        VerifierLayer::new(verifier.clone())
            .route(verified_service::CHECK, Policy::new().require_acr(Acr::Aal2)),
        verifier,
    )
    .await;
    let (_, tokens) = app.signed_in_user().await;
    let codes = enrol_totp(&app, &tokens).await;
    // Confirming proved the code in this session, at the time of the
    // change itself: not older than it.
    let proven = app.refresh(&tokens.refresh_token).await.unwrap();
    assert_eq!(jwt_claims(&proven.access_token)["acr"], "aal2");
    let cursor = open.verifier.cursor();
    assert!(aal2.who_am_i(&proven.access_token).await.is_ok());

    // A later change: the codes regenerated by this very session.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let regenerated = app
        .client
        .clone()
        .regenerate_recovery_codes(with_bearer(
            pb::RegenerateRecoveryCodesRequest {},
            &proven.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_ne!(regenerated[0].to_string(), codes[0]);
    let (status, took) = aal2.refused_within(&proven.access_token, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::FailedPrecondition, "REAUTHENTICATION_REQUIRED");
    println!("RegenerateRecoveryCodes answered → aal2 route asks for a new proof in {took:?}");
    let after_change = aal2.verifier.cursor();
    assert!(after_change > cursor, "a FACTORS_CHANGED event arrived");
    assert!(
        open.who_am_i(&proven.access_token).await.is_ok(),
        "it revokes nothing: a route without a second-factor policy still accepts it"
    );
    let refreshed = app.refresh(&proven.refresh_token).await.unwrap();
    assert_refusal(
        &aal2.who_am_i(&refreshed.access_token).await.unwrap_err(),
        Code::FailedPrecondition,
        "REAUTHENTICATION_REQUIRED",
    );

    // A new proof passes again, also once the change it made itself (a
    // recovery code spent, at the time of the proof) has arrived.
    let stepped = app
        .client
        .clone()
        .step_up(with_bearer(
            pb::StepUpRequest {
                proof: Some(pb::step_up_request::Proof::RecoveryCode(
                    regenerated[0].to_string(),
                )),
            },
            &refreshed.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    wait_for(|| aal2.verifier.cursor() > after_change).await;
    let me = aal2.who_am_i(&stepped.access_token).await.unwrap();
    assert!(!me.user_id.is_empty());
}

/// Waits (at most REFUSAL_WAIT) until `done` holds.
async fn wait_for(done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < REFUSAL_WAIT, "never happened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_account_that_must_enrol_a_second_factor_is_refused_except_where_allowed() {
    let app = spawn_app_with(|c| c.require_mfa = "all".into()).await;
    let key = app.service_key("verified-service", &[WATCH]).await;
    let verifier = start_verifier(app.addr, config_for(&app, &key)).await;
    assert!(
        verifier.wait_until_fresh(REFUSAL_WAIT).await,
        "{:?}",
        verifier.status()
    );
    let default = serve(verifier.clone()).await;
    let enrolment = serve_layer(
        VerifierLayer::new(verifier.clone()).route(
            verified_service::CHECK,
            Policy::new().allow_mfa_enrollment_pending(),
        ),
        verifier,
    )
    .await;
    let (user, tokens) = app.signed_in_user().await;
    assert_eq!(jwt_claims(&tokens.access_token)["mfa_enrollment_required"], true);
    assert_refusal(
        &default.who_am_i(&tokens.access_token).await.unwrap_err(),
        Code::FailedPrecondition,
        "MFA_ENROLLMENT_REQUIRED",
    );
    assert_eq!(
        enrolment.who_am_i(&tokens.access_token).await.unwrap().user_id,
        user.id
    );

    enrol_totp(&app, &tokens).await;
    let enrolled = app.refresh(&tokens.refresh_token).await.unwrap();
    assert!(
        jwt_claims(&enrolled.access_token)
            .get("mfa_enrollment_required")
            .is_none()
    );
    assert_eq!(
        default.who_am_i(&enrolled.access_token).await.unwrap().user_id,
        user.id
    );
}

/// The example service behind a verifier of `app`'s tokens for `audience`
/// (and `additional` on the routes that ask for it), routed by `route`,
/// once its stream has started.
async fn service_for(
    app: &TestApp,
    audience: &str,
    additional: &[&str],
    route: impl FnOnce(VerifierLayer) -> VerifierLayer,
) -> VerifiedService {
    let key = app.service_key(&format!("{audience}-verifier"), &[WATCH]).await;
    let config = additional.iter().fold(
        VerifierConfig::new(&app.config.issuer, audience, key),
        |config, extra| config.with_additional_audience(*extra),
    );
    let verifier = start_verifier(app.addr, config).await;
    assert!(
        verifier.wait_until_fresh(REFUSAL_WAIT).await,
        "the revocation stream never started: {:?}",
        verifier.status()
    );
    serve_layer(route(VerifierLayer::new(verifier.clone())), verifier).await
}

impl VerifiedService {
    /// The response metadata the example service answered with.
    async fn described(&self, access_token: &str) -> Result<HashMap<String, String>, Status> {
        let request = with_bearer(
            HealthCheckRequest {
                service: String::new(),
            },
            access_token,
        );
        let response = self.client.clone().check(request).await?;
        Ok(response
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(key, value) if key.as_str().starts_with("x-") => {
                    Some((key.as_str().to_owned(), value.to_str().unwrap().to_owned()))
                }
                _ => None,
            })
            .collect())
    }
}

/// `claims` as authd signs them, with its key.
fn signed_by(app: &TestApp, claims: &Value) -> String {
    let kid = Key::from_pkcs8_pem(&app.signing_pem).unwrap().kid;
    sign(&app.signing_pem, claims, &kid, Some("at+jwt"))
}

#[tokio::test]
async fn tokens_authd_signs_for_billing_pass_only_there_and_a_logout_ends_the_users_not_the_services() {
    let app = spawn_app().await;
    let billing = service_for(&app, "billing", &[], |layer| {
        layer.route(
            verified_service::CHECK,
            Policy::new().allow_services().require_scope("invoices.read"),
        )
    })
    .await;
    let authd_audience = fresh_service(&app, |c| c).await;
    let (user, tokens) = app.signed_in_user().await;
    // What token exchange and client credentials make, signed with authd's
    // key: the user's token for billing with orders acting, and the
    // reports service's own.
    let mut exchanged = jwt_claims(&tokens.access_token);
    exchanged["aud"] = "billing".into();
    exchanged["client_id"] = "orders".into();
    exchanged["act"] = serde_json::json!({"sub": "svc:orders"});
    let exchanged = signed_by(&app, &exchanged);
    let now = chrono::Utc::now().timestamp();
    let own = signed_by(
        &app,
        &serde_json::json!({
            "iss": app.config.issuer, "aud": "billing", "sub": "svc:reports", "client_id": "reports",
            "scope": "invoices.read users.read", "iat": now, "nbf": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        }),
    );

    let seen = billing.described(&exchanged).await.unwrap();
    assert_eq!(seen["x-user-id"], user.id);
    assert_eq!(seen["x-actors"], "svc:orders");
    assert_eq!(seen["x-client-id"], "orders");
    assert_eq!(seen["x-audience"], "billing");
    let seen = billing.described(&own).await.unwrap();
    assert_eq!(seen["x-service"], "reports");
    assert_eq!(seen["x-scopes"], "invoices.read,users.read");
    assert!(!seen.contains_key("x-user-id"), "{seen:?}");
    for token in [&exchanged, &own] {
        assert_refusal(
            &authd_audience.who_am_i(token).await.unwrap_err(),
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }
    assert_refusal(
        &billing.who_am_i(&tokens.access_token).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );

    app.logout(&tokens.refresh_token).await.unwrap();
    let (status, took) = billing.refused_within(&exchanged, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    println!("Logout answered → the token exchanged from it refused by the service in {took:?}");
    assert_eq!(
        billing.described(&own).await.unwrap()["x-service"],
        "reports",
        "no session: nothing on the stream ends a service's own token"
    );
}

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const EXCHANGE: &str = "tokens.exchange";

/// An authd that may mint tokens for `billing` and `billing-admin`.
async fn spawn_app_for_billing() -> TestApp {
    spawn_app_with(|c| c.audiences = vec!["billing".into(), "billing-admin".into()]).await
}

/// ExchangeToken as the service with `key` calls it.
async fn exchange_token(
    app: &TestApp,
    key: &str,
    request: authd::pb::auth::v1::ExchangeTokenRequest,
) -> Result<String, Status> {
    Ok(app
        .client
        .clone()
        .exchange_token(with_bearer(request, key))
        .await?
        .into_inner()
        .access_token)
}

/// `subject_token` exchanged by the service with `key` for `audience`.
async fn exchanged_for(app: &TestApp, key: &str, subject_token: &str, audience: &str) -> String {
    exchange_token(
        app,
        key,
        authd::pb::auth::v1::ExchangeTokenRequest {
            grant_type: TOKEN_EXCHANGE.into(),
            audience: audience.into(),
            subject_token: subject_token.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_exchanged_token_verifies_for_its_audience_with_its_actors_and_nowhere_else() {
    let app = spawn_app_for_billing().await;
    let orders = app.service_key("orders", &[EXCHANGE]).await;
    let billing_key = app.service_key("billing", &[EXCHANGE]).await;
    let billing = service_for(&app, "billing", &[], |layer| layer).await;
    let authd_audience = fresh_service(&app, |c| c).await;
    let (user, tokens) = app.signed_in_user().await;

    let for_billing = exchanged_for(&app, &orders, &tokens.access_token, "billing").await;
    let seen = billing.described(&for_billing).await.unwrap();
    assert_eq!(seen["x-user-id"], user.id, "still the user's token");
    assert_eq!(seen["x-session-id"], jwt_claims(&tokens.access_token)["sid"]);
    assert_eq!(seen["x-actors"], "svc:orders", "orders calls for the user");
    assert_eq!(seen["x-client-id"], "orders");
    assert_eq!(seen["x-audience"], "billing");
    let direct = authd_audience.described(&tokens.access_token).await.unwrap();
    assert!(
        !direct.contains_key("x-actors") && !direct.contains_key("x-client-id"),
        "the user called: {direct:?}"
    );

    for (what, service, token) in [
        (
            "billing's token at a verifier for authd's audience",
            &authd_audience,
            &for_billing,
        ),
        ("the login's token at billing", &billing, &tokens.access_token),
    ] {
        let status = service.who_am_i(token).await.expect_err(what);
        assert_refusal(&status, Code::Unauthenticated, "TOKEN_INVALID");
    }

    // Billing calls on for the user: the chain grows, the current actor first.
    let for_admin = exchanged_for(&app, &billing_key, &for_billing, "billing-admin").await;
    let admin = service_for(&app, "billing", &["billing-admin"], |layer| {
        layer.route(
            verified_service::CHECK,
            Policy::new().require_audience("billing-admin"),
        )
    })
    .await;
    let seen = admin.described(&for_admin).await.unwrap();
    assert_eq!(seen["x-actors"], "svc:billing,svc:orders");
    assert_eq!(seen["x-client-id"], "billing");
    assert_eq!(seen["x-audience"], "billing-admin");
    assert_refusal(
        &admin.who_am_i(&for_billing).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_refusal(
        &billing.who_am_i(&for_admin).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

#[tokio::test]
async fn a_logout_ends_the_exchanged_token_at_the_verifier_within_the_revocation_bound() {
    let app = spawn_app_for_billing().await;
    let orders = app.service_key("orders", &[EXCHANGE]).await;
    let billing = service_for(&app, "billing", &[], |layer| layer).await;
    let (_, tokens) = app.signed_in_user().await;
    let for_billing = exchanged_for(&app, &orders, &tokens.access_token, "billing").await;
    assert_eq!(
        jwt_claims(&for_billing)["sid"],
        jwt_claims(&tokens.access_token)["sid"],
        "the exchanged token keeps the session"
    );
    billing.who_am_i(&for_billing).await.unwrap();

    app.logout(&tokens.refresh_token).await.unwrap();
    let (status, took) = billing.refused_within(&for_billing, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    println!("Logout answered → exchanged token refused by the service in {took:?}");
}

#[tokio::test]
async fn a_client_credentials_token_verifies_as_the_services_own_with_its_scopes() {
    let app = spawn_app_for_billing().await;
    let reports = app.service_key("reports", &[EXCHANGE, INTROSPECT]).await;
    let services_only = service_for(&app, "billing", &[], |layer| {
        layer.route(
            verified_service::CHECK,
            Policy::services().require_scope(EXCHANGE),
        )
    })
    .await;
    let users_only = service_for(&app, "billing", &[], |layer| layer).await;
    let wants_introspect = service_for(&app, "billing", &[], |layer| {
        layer.route(
            verified_service::CHECK,
            Policy::new().allow_services().require_scope(INTROSPECT),
        )
    })
    .await;
    let client_credentials = |scope: &str| authd::pb::auth::v1::ExchangeTokenRequest {
        grant_type: "client_credentials".into(),
        audience: "billing".into(),
        scope: scope.into(),
        ..Default::default()
    };
    let narrowed = exchange_token(&app, &reports, client_credentials(EXCHANGE))
        .await
        .unwrap();
    let all = exchange_token(&app, &reports, client_credentials(""))
        .await
        .unwrap();

    let seen = services_only.described(&narrowed).await.unwrap();
    assert_eq!(seen["x-service"], "reports");
    assert_eq!(seen["x-scopes"], EXCHANGE);
    assert_eq!(seen["x-audience"], "billing");
    assert!(!seen.contains_key("x-user-id"), "no user: {seen:?}");
    let seen = wants_introspect.described(&all).await.unwrap();
    let mut scopes: Vec<&str> = seen["x-scopes"].split(',').collect();
    scopes.sort_unstable();
    assert_eq!(scopes, [EXCHANGE, INTROSPECT]);

    assert_refusal(
        &wants_introspect.who_am_i(&narrowed).await.unwrap_err(),
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_refusal(
        &users_only.who_am_i(&narrowed).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let (_, tokens) = app.signed_in_user().await;
    let orders = app.service_key("orders", &[EXCHANGE]).await;
    let users_token = exchanged_for(&app, &orders, &tokens.access_token, "billing").await;
    assert_refusal(
        &services_only.who_am_i(&users_token).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert!(users_only.who_am_i(&users_token).await.is_ok());
    let own_audience = exchange_token(
        &app,
        &reports,
        authd::pb::auth::v1::ExchangeTokenRequest {
            grant_type: "client_credentials".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_refusal(
        &services_only.who_am_i(&own_audience).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

#[tokio::test]
async fn an_impersonating_token_names_its_actor_proves_nothing_and_ends_with_the_account() {
    let app = spawn_app_for_billing().await;
    let support = app.service_key("support", &["users.impersonate"]).await;
    let billing = service_for(&app, "billing", &[], |layer| layer).await;
    let recent_proof = service_for(&app, "billing", &[], |layer| {
        layer.route(
            verified_service::CHECK,
            Policy::new().max_age(Duration::from_secs(600)),
        )
    })
    .await;
    let (user, _) = app.signed_in_user().await;
    let impersonating = exchange_token(
        &app,
        &support,
        authd::pb::auth::v1::ExchangeTokenRequest {
            grant_type: TOKEN_EXCHANGE.into(),
            audience: "billing".into(),
            requested_subject: user.id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let seen = billing.described(&impersonating).await.unwrap();
    assert_eq!(seen["x-user-id"], user.id);
    assert_eq!(seen["x-actors"], "svc:support", "support acts as the user");
    assert_eq!((seen["x-amr"].as_str(), seen["x-auth-time"].as_str()), ("", "0"));
    assert_refusal(
        &recent_proof.who_am_i(&impersonating).await.unwrap_err(),
        Code::FailedPrecondition,
        "REAUTHENTICATION_REQUIRED",
    );

    let admin_key = app.service_key("account-admin", &["users.write"]).await;
    crate::admin::disable(&app, &admin_key, &user.id).await.unwrap();
    let (status, took) = billing.refused_within(&impersonating, REFUSAL_WAIT).await;
    assert_refusal(&status, Code::Unauthenticated, "SESSION_REVOKED");
    println!("DisableUser answered → impersonating token refused by the service in {took:?}");
}
