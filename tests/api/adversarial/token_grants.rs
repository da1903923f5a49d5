//! Attacks on the tokens for one destination: a user's token or a service
//! token where a key belongs, a token for one audience replayed at authd,
//! tokens of one kind dressed as another (`typ`, `alg`, claim shapes, all
//! signed with authd's own key so only the shape differs), delegated tokens
//! at authd's own RPCs, and `act` chains past the limit.

use authd::pb::auth::v1 as pb;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;

use crate::admin::{disable, get_user, missing_scope};
use crate::helpers::*;
use crate::token_grants::*;

use super::service_keys::get_user_from;

/// A signed-in user, a service key with these scopes, its name.
async fn setting(app: &TestApp, scopes: &[&str]) -> (pb::User, pb::TokenPair, String, String) {
    let (user, tokens) = app.signed_in_user().await;
    let name = fresh_service("svc");
    let key = app.service_key(&name, scopes).await;
    (user, tokens, name, key)
}

/// `token` is no credential of a service: AdminService refuses it as
/// TOKEN_INVALID and ExchangeToken mints nothing with it.
async fn no_service_credential(app: &TestApp, token: &str, user_id: &str, subject: &str, what: &str) {
    let status = get_user(app, token, user_id).await.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID", "{what}");
    let status = exchange(app, token, token_exchange(subject, BILLING, ""))
        .await
        .expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
}

/// `token` is no user's token: GetMe refuses it, it is no subject token,
/// and it introspects as inactive.
async fn no_user_token(app: &TestApp, key: &str, token: &str, what: &str) {
    let status = app.get_me(token).await.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID", "{what}");
    let status = exchange(app, key, token_exchange(token, BILLING, ""))
        .await
        .expect_err(what);
    assert_eq!(reason(&status), "GRANT_INVALID", "{what}: {status:?}");
}

async fn inactive(app: &TestApp, token: &str, what: &str) {
    assert_eq!(
        app.introspect(token).await.unwrap(),
        pb::IntrospectTokenResponse::default(),
        "{what} introspects as inactive"
    );
}

#[tokio::test]
async fn a_users_token_as_the_clients_credential_mints_nothing() {
    let app = spawn().await;
    let (user, tokens, _, key) = setting(&app, &[EXCHANGE]).await;
    let (_, other) = app.signed_in_user().await;
    for request in [
        client_credentials("", ""),
        client_credentials(BILLING, ""),
        token_exchange(&other.access_token, BILLING, ""),
        impersonation(&user.id, BILLING, ""),
    ] {
        let status = assert_error(
            exchange(&app, &tokens.access_token, request.clone()).await,
            Code::PermissionDenied,
            "MISSING_SCOPE",
        );
        assert_eq!(missing_scope(&status), EXCHANGE, "{request:?}");
    }
    // An exchanged token (for another audience, with `act`) is no
    // credential either.
    let delegated = exchanged(&app, &key, &tokens.access_token, BILLING).await;
    assert_error(
        exchange(&app, &delegated, client_credentials("", "")).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    // Nothing was started for anyone.
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sessions, 2, "the two logins' sessions only");
}

#[tokio::test]
async fn a_service_token_for_another_audience_is_refused_at_authd_but_introspects() {
    let app = spawn().await;
    let (user, tokens, name, key) = setting(&app, &[READ, EXCHANGE]).await;
    let for_billing = service_token(&app, &key, BILLING, "").await;
    no_service_credential(
        &app,
        &for_billing,
        &user.id,
        &tokens.access_token,
        "billing's token",
    )
    .await;
    let answer = app.introspect(&for_billing).await.unwrap();
    assert!(answer.active);
    assert_eq!(answer.audience, BILLING);
    assert_eq!(answer.client_id, name);
    // The same key's token for authd is taken.
    let own = service_token(&app, &key, "", "").await;
    get_user(&app, &own, &user.id).await.unwrap();
}

#[tokio::test]
async fn only_the_key_mints_a_service_token() {
    let app = spawn().await;
    let (_, _, _, key) = setting(&app, &[READ, EXCHANGE]).await;
    let own = service_token(&app, &key, "", "").await;
    for audience in ["", OWN, BILLING] {
        assert_error(
            exchange(&app, &own, client_credentials(audience, "")).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }
}

#[tokio::test]
async fn a_user_shaped_token_naming_a_service_is_neither_kind() {
    let app = spawn().await;
    let (user, tokens, name, key) = setting(&app, &[READ, EXCHANGE]).await;
    let service = jwt_claims(&service_token(&app, &key, "", "").await);
    for (what, edit) in [
        ("sub svc:NAME", json!({ "sub": format!("svc:{name}") })),
        (
            "sub svc:NAME with client_id, scope and key_id",
            json!({
                "sub": format!("svc:{name}"),
                "client_id": name,
                "scope": "users.read tokens.exchange",
                "key_id": service["key_id"],
            }),
        ),
    ] {
        let forged = resigned(&app, &tokens.access_token, |c| merge(c, &edit));
        no_user_token(&app, &key, &forged, what).await;
        no_service_credential(&app, &forged, &user.id, &tokens.access_token, what).await;
        inactive(&app, &forged, what).await;
    }
}

#[tokio::test]
async fn a_service_token_with_a_sid_act_or_events_is_neither_kind() {
    let app = spawn().await;
    let (user, tokens, name, key) = setting(&app, &[READ, EXCHANGE]).await;
    let genuine = service_token(&app, &key, "", "").await;
    // The control: re-signed as it is, it is taken.
    let control = resigned(&app, &genuine, |_| {});
    get_user(&app, &control, &user.id).await.unwrap();

    let sid = session_of(&tokens.access_token);
    for (what, edit) in [
        ("a sid", json!({ "sid": sid })),
        ("an act", json!({ "act": { "sub": "svc:someone" } })),
        ("events", json!({ "events": { "urn:x": {} } })),
        ("a sub that is not svc:client_id", json!({ "sub": "svc:another" })),
        ("a user's sub", json!({ "sub": user.id })),
    ] {
        let forged = resigned(&app, &genuine, |c| merge(c, &edit));
        no_service_credential(&app, &forged, &user.id, &tokens.access_token, what).await;
        no_user_token(&app, &key, &forged, what).await;
        inactive(&app, &forged, what).await;
    }
    // With a sid and a user's sub it is a user's token (authd's key signed
    // it), whatever service claims it carries besides: a user's token is
    // never a service's credential.
    let forged = resigned(&app, &genuine, |c| {
        merge(c, &json!({ "sid": sid, "sub": user.id, "roles": ["admin"] }));
    });
    let status = assert_error(
        get_user(&app, &forged, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), READ);
    assert_eq!(
        app.introspect(&forged).await.unwrap().client_id,
        name,
        "read as the user's token it is"
    );
}

#[tokio::test]
async fn a_token_of_the_wrong_typ_is_refused_in_every_role() {
    let app = spawn().await;
    let (user, tokens, _, key) = setting(&app, &[READ, EXCHANGE]).await;
    let service = service_token(&app, &key, "", "").await;
    let user_token = tokens.access_token.clone();
    for typ in [
        json!("secevent+jwt"),
        json!("application/secevent+jwt"),
        json!("JWT"),
        json!("jwt"),
        json!("at+jwt "),
        json!(""),
        Value::Null,
    ] {
        let retyped = |token: &str| {
            let mut header = jwt_header(token);
            match &typ {
                Value::Null => {
                    header.as_object_mut().unwrap().remove("typ");
                }
                other => header["typ"] = other.clone(),
            }
            sign_ed25519(&app.signing_pem, &header, &jwt_claims(token))
        };
        let what = format!("typ {typ}");
        no_service_credential(&app, &retyped(&service), &user.id, &user_token, &what).await;
        no_user_token(&app, &key, &retyped(&user_token), &what).await;
        inactive(&app, &retyped(&service), &what).await;
    }
    // The media-type spelling of at+jwt is at+jwt (RFC 7515 §4.1.9).
    let mut header = jwt_header(&service);
    header["typ"] = json!("application/AT+JWT");
    let spelled = sign_ed25519(&app.signing_pem, &header, &jwt_claims(&service));
    get_user(&app, &spelled, &user.id).await.unwrap();
}

#[tokio::test]
async fn a_security_event_token_is_no_access_token_of_either_kind() {
    let app = spawn().await;
    let (user, tokens, _, key) = setting(&app, &[READ, EXCHANGE]).await;
    let header = jwt_header(&tokens.access_token);
    // What a revocation stream sends, typed as an access token.
    let set = json!({
        "iss": "https://authd.test",
        "aud": OWN,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now(),
        "sub_id": { "format": "opaque", "id": session_of(&tokens.access_token) },
        "events": { "https://schemas.openid.net/secevent/caep/event-type/session-revoked": {} },
    });
    for typ in ["at+jwt", "secevent+jwt"] {
        let mut h = header.clone();
        h["typ"] = json!(typ);
        let forged = sign_ed25519(&app.signing_pem, &h, &set);
        let what = format!("a SET typed {typ}");
        no_user_token(&app, &key, &forged, &what).await;
        no_service_credential(&app, &forged, &user.id, &tokens.access_token, &what).await;
        inactive(&app, &forged, &what).await;
    }
    // A user token carrying `events` is not one either.
    let forged = resigned(&app, &tokens.access_token, |c| {
        c["events"] = set["events"].clone()
    });
    no_user_token(&app, &key, &forged, "a user token with events").await;
}

#[tokio::test]
async fn alg_none_and_hmac_with_the_public_key_are_refused_for_service_and_subject_tokens() {
    let app = spawn().await;
    let (user, tokens, _, key) = setting(&app, &[READ, EXCHANGE]).await;
    let service = service_token(&app, &key, "", "").await;
    let public = {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        ed25519_dalek::SigningKey::from_pkcs8_pem(&app.signing_pem)
            .unwrap()
            .verifying_key()
    };
    let x = b64(public.as_bytes());
    for token in [&service, &tokens.access_token] {
        let header = jwt_header(token);
        let claims = jwt_claims(token);
        let mut forgeries = Vec::new();
        for alg in ["none", "None"] {
            let mut h = header.clone();
            h["alg"] = json!(alg);
            forgeries.push(format!("{}.{}.", b64(h.to_string()), b64(claims.to_string())));
        }
        for secret in [public.as_bytes().as_slice(), x.as_bytes()] {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = header["kid"].as_str().map(str::to_owned);
            h.typ = Some("at+jwt".into());
            forgeries.push(jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap());
        }
        for forged in forgeries {
            no_service_credential(&app, &forged, &user.id, &tokens.access_token, "forged alg").await;
            no_user_token(&app, &key, &forged, "forged alg").await;
            inactive(&app, &forged, "forged alg").await;
        }
    }
}

#[tokio::test]
async fn a_forged_scope_claim_does_not_widen_what_the_key_may() {
    let app = spawn().await;
    let (user, tokens, name, key) = setting(&app, &[READ]).await;
    let other = fresh_service("other");
    let other_key = app.service_key(&other, &[READ, crate::token_grants::WRITE]).await;
    let genuine = service_token(&app, &key, "", "").await;
    // Signed by authd's key (as if the account had had users.write when
    // it was minted): the account's scopes today still decide.
    let widened = resigned(&app, &genuine, |c| c["scope"] = json!("users.read users.write"));
    get_user(&app, &widened, &user.id).await.unwrap();
    let status = assert_error(
        disable(&app, &widened, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "users.write");
    // Another account's name on this key's id: no one's token.
    let renamed = resigned(&app, &genuine, |c| {
        c["sub"] = json!(format!("svc:{other}"));
        c["client_id"] = json!(other);
    });
    no_service_credential(&app, &renamed, &user.id, &tokens.access_token, "renamed").await;
    inactive(&app, &renamed, "renamed").await;
    // A key id nobody has.
    let orphan = resigned(&app, &genuine, |c| {
        c["key_id"] = json!(uuid::Uuid::new_v4().to_string())
    });
    no_service_credential(&app, &orphan, &user.id, &tokens.access_token, "orphan").await;
    inactive(&app, &orphan, "orphan").await;
    let _ = (name, other_key);
}

#[tokio::test]
async fn delegated_tokens_are_refused_by_authds_own_rpcs() {
    let app = spawn().await;
    let (user, tokens, _, key) = setting(&app, &[EXCHANGE, IMPERSONATE]).await;
    // Even minted for authd's own audience: a token with `act` is for
    // other services.
    let exchanged_for_authd = exchanged(&app, &key, &tokens.access_token, OWN).await;
    assert_eq!(jwt_claims(&exchanged_for_authd)["aud"], OWN);
    let impersonating = exchange(&app, &key, impersonation(&user.id, OWN, ""))
        .await
        .unwrap()
        .access_token;
    let for_billing = exchanged(&app, &key, &tokens.access_token, BILLING).await;
    // A user's token for another audience, without `act`.
    let other_audience = resigned(&app, &tokens.access_token, |c| c["aud"] = json!(BILLING));
    for (what, token) in [
        ("exchanged for authd", &exchanged_for_authd),
        ("impersonating for authd", &impersonating),
        ("exchanged for billing", &for_billing),
        ("a user's token for billing", &other_audience),
    ] {
        assert_error(app.get_me(token).await, Code::Unauthenticated, "TOKEN_INVALID");
        let status = crate::lifecycle::list_sessions(&app, token)
            .await
            .expect_err(what);
        assert_eq!(reason(&status), "TOKEN_INVALID", "{what}");
        let status = app
            .change_password(token, PASSWORD, "a brand new passphrase 42")
            .await
            .expect_err(what);
        assert_eq!(reason(&status), "TOKEN_INVALID", "{what}");
    }
    // The user's own token still works: nothing was ended.
    app.get_me(&tokens.access_token).await.unwrap();
}

#[tokio::test]
async fn an_act_chain_five_deep_is_not_exchanged_again() {
    let app = spawn().await;
    let (_, tokens) = app.signed_in_user().await;
    let mut names = Vec::new();
    let mut keys = Vec::new();
    for i in 0..6 {
        let name = fresh_service(&format!("hop{i}"));
        keys.push(app.service_key(&name, &[EXCHANGE]).await);
        names.push(name);
    }
    let mut token = tokens.access_token.clone();
    for (depth, key) in keys.iter().take(5).enumerate() {
        token = exchanged(&app, key, &token, if depth % 2 == 0 { BILLING } else { LEDGER }).await;
        assert_eq!(actors(&jwt_claims(&token)).len(), depth + 1);
    }
    let expected: Vec<String> = names.iter().take(5).rev().map(|n| format!("svc:{n}")).collect();
    assert_eq!(actors(&jwt_claims(&token)), expected);
    assert_eq!(app.introspect(&token).await.unwrap().actors, expected);
    let status = assert_error(
        exchange(&app, &keys[5], token_exchange(&token, BILLING, "")).await,
        Code::InvalidArgument,
        "GRANT_INVALID",
    );
    assert_eq!(violated_fields(&status), vec!["subject_token"]);

    // A chain forged deeper still (signed by authd's key) is refused too.
    let mut act = json!({ "sub": "svc:a0" });
    for i in 1..40 {
        act = json!({ "sub": format!("svc:a{i}"), "act": act });
    }
    let deep = resigned(&app, &token, |c| c["act"] = act);
    let status = assert_error(
        exchange(&app, &keys[5], token_exchange(&deep, BILLING, "")).await,
        Code::InvalidArgument,
        "GRANT_INVALID",
    );
    assert_eq!(violated_fields(&status), vec!["subject_token"]);
}

#[tokio::test]
async fn an_act_naming_no_service_is_refused() {
    let app = spawn().await;
    let (user, tokens, _, key) = setting(&app, &[EXCHANGE]).await;
    let delegated = exchanged(&app, &key, &tokens.access_token, BILLING).await;
    for (what, act) in [
        ("a user as actor", json!({ "sub": user.id })),
        ("an empty service name", json!({ "sub": "svc:" })),
        (
            "a user deeper in the chain",
            json!({ "sub": "svc:a", "act": { "sub": user.id } }),
        ),
        ("an actor without sub", json!({})),
        ("an act that is a string", json!("svc:a")),
    ] {
        let forged = resigned(&app, &delegated, |c| c["act"] = act.clone());
        let status = exchange(&app, &key, token_exchange(&forged, LEDGER, ""))
            .await
            .expect_err(what);
        assert_eq!(reason(&status), "GRANT_INVALID", "{what}");
        inactive(&app, &forged, what).await;
    }
}

#[tokio::test]
async fn a_subject_token_awaiting_second_factor_enrollment_is_not_exchanged() {
    let app = spawn().await;
    let (_, tokens, _, key) = setting(&app, &[EXCHANGE]).await;
    let pending = resigned(&app, &tokens.access_token, |c| {
        c["mfa_enrollment_required"] = json!(true);
    });
    let status = assert_error(
        exchange(&app, &key, token_exchange(&pending, BILLING, "")).await,
        Code::InvalidArgument,
        "GRANT_INVALID",
    );
    assert_eq!(violated_fields(&status), vec!["subject_token"]);
}

#[tokio::test]
async fn a_subject_token_cannot_be_moved_to_another_users_session() {
    let app = spawn().await;
    let (_, tokens, _, key) = setting(&app, &[EXCHANGE]).await;
    let (victim, victim_tokens) = app.signed_in_user().await;
    // Signed by authd's key but naming the victim with the attacker's
    // session (or the reverse): the session is not that account's.
    for edit in [
        json!({ "sub": victim.id }),
        json!({ "sid": session_of(&victim_tokens.access_token) }),
    ] {
        let forged = resigned(&app, &tokens.access_token, |c| merge(c, &edit));
        let status = assert_error(
            exchange(&app, &key, token_exchange(&forged, BILLING, "")).await,
            Code::InvalidArgument,
            "GRANT_INVALID",
        );
        assert_eq!(violated_fields(&status), vec!["subject_token"]);
    }
}

/// Sets every member of `edit` on `claims`.
fn merge(claims: &mut Value, edit: &Value) {
    for (k, v) in edit.as_object().unwrap() {
        claims[k] = v.clone();
    }
}

#[tokio::test]
async fn a_live_keys_service_token_works_from_a_client_past_its_failure_limit() {
    let app = spawn_app_with(|c| {
        c.audiences = vec![BILLING.into()];
        c.trusted_proxy_header = Some(http::header::HeaderName::from_static("x-forwarded-for"));
        c.service_auth_failure_limit = 3;
        crate::metrics::with_metrics(c);
    })
    .await;
    caches_on(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let key = app.service_key(&fresh_service("innocent"), &[READ]).await;
    let token = service_token(&app, &key, "", "").await;
    let (prober, neighbour) = ("198.51.100.7", "203.0.113.9");
    // Both used once, so this replica holds the key as live.
    get_user_from(&app, neighbour, &key, &user.id).await.unwrap();
    get_user_from(&app, neighbour, &token, &user.id).await.unwrap();

    let mut failures = 0;
    loop {
        let made_up = authd::crypto::opaque::NewToken::generate(authd::crypto::opaque::TokenKind::ServiceKey)
            .unwrap()
            .expose()
            .to_owned();
        match get_user_from(&app, prober, &made_up, &user.id).await {
            Err(status) if status.code() == Code::Unauthenticated => failures += 1,
            Err(status) if status.code() == Code::ResourceExhausted => break,
            other => panic!("a made-up key answered {other:?}"),
        }
        assert!(failures <= 20, "20 made-up keys and no throttling");
    }
    // Behind the prober's (shared) address, a live key still works, and
    // so must a token it minted: it is worth what the key is worth.
    get_user_from(&app, prober, &key, &user.id).await.unwrap();
    let answer = get_user_from(&app, prober, &token, &user.id).await;
    assert!(
        answer.is_ok(),
        "the live key's service token was refused: {answer:?}"
    );
}

#[tokio::test]
async fn an_expired_service_token_is_told_so() {
    let app = spawn().await;
    let (user, _, _, key) = setting(&app, &[READ]).await;
    let genuine = service_token(&app, &key, "", "").await;
    let expired = resigned(&app, &genuine, |c| {
        c["iat"] = json!(now() - 400);
        c["nbf"] = json!(now() - 400);
        c["exp"] = json!(now() - 60);
    });
    assert_error(
        get_user(&app, &expired, &user.id).await,
        Code::Unauthenticated,
        "TOKEN_EXPIRED",
    );
    inactive(&app, &expired, "an expired service token").await;
    get_user(&app, &genuine, &user.id).await.unwrap();
}

#[tokio::test]
async fn no_minted_token_is_too_long_for_the_verifiers_that_must_read_it() {
    let app = spawn().await;
    // As many roles as an account may have, each as long as allowed.
    let roles: Vec<String> = (0..32).map(|i| format!("{i:02}{}", "r".repeat(62))).collect();
    let role_refs: Vec<&str> = roles.iter().map(String::as_str).collect();
    let (_, tokens) = user_with_roles(&app, &role_refs).await;
    assert!(
        tokens.access_token.len() <= authd_token_rules::MAX_TOKEN_BYTES,
        "the login's own token is {} bytes",
        tokens.access_token.len()
    );
    // Five services with names as long as allowed, each passing it on.
    let mut token = tokens.access_token.clone();
    for hop in 0..5 {
        let name = format!("{hop}{}", "s".repeat(62));
        let key = app.service_key(&name, &[EXCHANGE]).await;
        match exchange(&app, &key, token_exchange(&token, BILLING, "")).await {
            Ok(granted) => {
                token = granted.access_token;
                assert!(
                    token.len() <= authd_token_rules::MAX_TOKEN_BYTES,
                    "hop {hop}: authd minted a {}-byte token, which every verifier (authd's own \
                     introspection included) refuses unread",
                    token.len()
                );
                assert!(app.introspect(&token).await.unwrap().active, "hop {hop}");
            }
            // Refused instead, as a subject with no room for one more actor.
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument, "hop {hop}: {status:?}");
                assert_eq!(reason(&status), "GRANT_INVALID", "hop {hop}");
                assert_eq!(violated_fields(&status), vec!["subject_token"]);
                return;
            }
        }
    }
}
