//! What ends the tokens ExchangeToken mints, at authd: a Logout ends the
//! exchanged token (same session), DisableUser and RevokeUserSessions end
//! an impersonation (its own session), deleting a key ends its service
//! tokens at once; a verifier elsewhere keeps a service token until `exp`.

use std::time::{Duration, Instant};

use authd_token_rules::{Leeway, PinnedKey, Refusal, Rules, ServiceAccess};
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use tonic::Code;

use super::*;
use crate::admin::{delete_key, disable, get_user, revoke_sessions, wait_for_listeners};

/// Introspection until `token` is inactive; fails after a second.
async fn inactive_within_a_second(app: &TestApp, token: &str) {
    let started = Instant::now();
    loop {
        let answer = app.introspect(token).await.unwrap();
        if !answer.active {
            assert_eq!(
                answer,
                pb::IntrospectTokenResponse::default(),
                "nothing else is said"
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still active after 1 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn logout_of_the_users_session_ends_the_exchanged_tokens_at_authd() {
    let app = spawn().await;
    let (_, tokens) = app.signed_in_user().await;
    let (_, bystander) = app.signed_in_user().await;
    let front = app.service_key(&fresh_service("front"), &[EXCHANGE]).await;
    let back = app.service_key(&fresh_service("back"), &[EXCHANGE]).await;
    let first = exchanged(&app, &front, &tokens.access_token, BILLING).await;
    let second = exchanged(&app, &back, &first, LEDGER).await;
    let unrelated = exchanged(&app, &front, &bystander.access_token, BILLING).await;
    for token in [&first, &second] {
        assert!(app.introspect(token).await.unwrap().active);
    }

    app.logout(&tokens.refresh_token).await.unwrap();
    for token in [&first, &second] {
        inactive_within_a_second(&app, token).await;
        let status = assert_error(
            exchange(&app, &back, token_exchange(token, LEDGER, "")).await,
            Code::InvalidArgument,
            "GRANT_INVALID",
        );
        assert_eq!(violated_fields(&status), vec!["subject_token"]);
    }
    assert!(
        app.introspect(&unrelated).await.unwrap().active,
        "another user's session is untouched"
    );
}

#[tokio::test]
async fn disabling_the_account_ends_an_impersonation() {
    let app = spawn().await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let key = app.service_key(&fresh_service("helpdesk"), &[IMPERSONATE]).await;
    let admin = app.service_key("test-admin", &[READ, WRITE]).await;
    let token = exchange(&app, &key, impersonation(&user.id, BILLING, ""))
        .await
        .unwrap()
        .access_token;
    assert!(app.introspect(&token).await.unwrap().active);
    disable(&app, &admin, &user.id).await.unwrap();
    inactive_within_a_second(&app, &token).await;
}

#[tokio::test]
async fn revoking_the_users_sessions_ends_an_impersonation_and_its_exchanges() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let key = app
        .service_key(&fresh_service("helpdesk"), &[IMPERSONATE, EXCHANGE])
        .await;
    let admin = app.service_key("test-admin", &[READ, WRITE]).await;
    let token = exchange(&app, &key, impersonation(&user.id, BILLING, ""))
        .await
        .unwrap()
        .access_token;
    // An impersonation passed on to another service is the same session.
    let passed_on = exchanged(&app, &key, &token, LEDGER).await;
    assert_eq!(session_of(&passed_on), session_of(&token));
    assert_eq!(actors(&jwt_claims(&passed_on)).len(), 2);
    assert!(app.introspect(&passed_on).await.unwrap().active);

    let revoked = revoke_sessions(&app, &admin, &user.id).await.unwrap();
    assert_eq!(revoked, 2, "the login's session and the impersonation's");
    for ended in [&token, &passed_on, &tokens.access_token] {
        inactive_within_a_second(&app, ended).await;
    }
    // And a new impersonation works afterwards.
    exchange(&app, &key, impersonation(&user.id, BILLING, ""))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_impersonation_ends_after_five_minutes_at_authd() {
    let app = spawn().await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let key = app.service_key(&fresh_service("helpdesk"), &[IMPERSONATE]).await;
    let token = exchange(&app, &key, impersonation(&user.id, BILLING, ""))
        .await
        .unwrap()
        .access_token;
    let sid = session_of(&token);
    let ends: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT absolute_expires_at FROM sessions WHERE id = $1::uuid")
            .bind(&sid)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let lifetime = ends.timestamp() - jwt_claims(&token)["iat"].as_i64().unwrap();
    assert!((299..=301).contains(&lifetime), "the session lives {lifetime} s");
    let refreshable: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE session_id = $1::uuid")
            .bind(&sid)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(refreshable, 0, "nothing can prolong it");
}

/// The public half of the app's signing key, pinned as a verifier pins it.
fn verifier_key(app: &TestApp) -> PinnedKey {
    let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&app.signing_pem).unwrap();
    let x = b64(signing.verifying_key().to_bytes());
    PinnedKey::from_jwk("OKP", "Ed25519", "EdDSA", &x, "").unwrap()
}

#[tokio::test]
async fn deleting_a_key_ends_its_service_tokens_at_authd_at_once_but_not_elsewhere_before_exp() {
    let app = spawn().await;
    wait_for_listeners(&app, 1).await;
    let name = fresh_service("doomed");
    let key = app.service_key(&name, &[READ]).await;
    let other_key = app.service_key(&name, &[READ]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let own = service_token(&app, &key, "", "").await;
    let for_billing = service_token(&app, &key, BILLING, "").await;
    let by_other_key = service_token(&app, &other_key, "", "").await;
    // Used twice, so whatever authd remembers of it is warm.
    get_user(&app, &own, &user.id).await.unwrap();
    get_user(&app, &own, &user.id).await.unwrap();
    assert!(app.introspect(&for_billing).await.unwrap().active);

    delete_key(&app, &key).await;
    let started = Instant::now();
    let status = loop {
        match get_user(&app, &own, &user.id).await {
            Err(status) => break status,
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(1),
                "the deleted key's token is still accepted after 1 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    inactive_within_a_second(&app, &for_billing).await;
    inactive_within_a_second(&app, &own).await;
    // The account's other key, and its tokens, live on.
    get_user(&app, &by_other_key, &user.id).await.unwrap();
    assert!(app.introspect(&by_other_key).await.unwrap().active);

    // A verifier of the billing service holds no key list: the token stays
    // valid there until its `exp` (AUTHD_SERVICE_TOKEN_TTL bounds that).
    let pinned = verifier_key(&app);
    let rules = Rules::<ServiceAccess>::new("https://authd.test", BILLING, Leeway::DEFAULT);
    let claims = rules
        .verify(&for_billing, now(), |_| Some(&pinned))
        .expect("still valid at a verifier");
    assert_eq!(claims.client_id, name);
    let after_exp = claims.exp + Leeway::DEFAULT.secs() + 1;
    assert_eq!(
        rules.verify(&for_billing, after_exp, |_| Some(&pinned)),
        Err(Refusal::Expired)
    );
}

#[tokio::test]
async fn a_service_token_watches_revocations_until_its_key_is_deleted() {
    let app = spawn().await;
    wait_for_listeners(&app, 1).await;
    let key = app
        .service_key(&fresh_service("watcher"), &["revocations.watch", READ])
        .await;
    let token = service_token(&app, &key, "", "").await;
    let (_, tokens) = app.signed_in_user().await;

    // Narrowed without revocations.watch: refused.
    let reader = service_token(&app, &key, "", READ).await;
    let status = assert_error(
        app.admin()
            .watch_revocations(with_bearer(pb::WatchRevocationsRequest::default(), &reader))
            .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(crate::admin::missing_scope(&status), "revocations.watch");

    let mut stream = app
        .admin()
        .watch_revocations(with_bearer(pb::WatchRevocationsRequest::default(), &token))
        .await
        .expect("a service token opens the stream")
        .into_inner();
    // The cursor first, then the logout's event.
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the cursor in time")
        .unwrap()
        .unwrap();
    app.logout(&tokens.refresh_token).await.unwrap();
    let sid = session_of(&tokens.access_token);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the logout's event in time")
            .unwrap()
            .expect("the stream is open");
        if event.session_id == sid {
            break;
        }
    }

    delete_key(&app, &key).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let status = loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("the stream of a deleted key's token is still open after 2 s"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
}

#[tokio::test]
async fn the_user_ends_an_impersonation_from_their_session_list() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let key = app.service_key(&fresh_service("helpdesk"), &[IMPERSONATE]).await;
    let token = exchange(&app, &key, impersonation(&user.id, BILLING, ""))
        .await
        .unwrap()
        .access_token;
    crate::lifecycle::revoke_session(&app, &tokens.access_token, &session_of(&token))
        .await
        .unwrap();
    inactive_within_a_second(&app, &token).await;
    assert!(
        app.introspect(&tokens.access_token).await.unwrap().active,
        "the user's own session goes on"
    );
}

#[tokio::test]
async fn a_deleted_keys_service_token_is_refused_at_once_by_every_replica() {
    let a = spawn().await;
    let b = {
        let keys = a.config.signing_keys.clone();
        let data_keys = a.config.data_keys.clone();
        spawn_app_on(&a.database_url(), |c| {
            c.signing_keys = keys;
            c.data_keys = data_keys;
            c.audiences = vec![BILLING.into(), LEDGER.into()];
        })
        .await
    };
    wait_for_listeners(&a, 2).await;
    let key = a.service_key(&fresh_service("shared"), &[READ]).await;
    let user = a.register(&fresh_email(), PASSWORD).await;
    // Minted by one replica, used at both (so both remember the key).
    let token = service_token(&a, &key, "", "").await;
    for app in [&a, &b] {
        get_user(app, &token, &user.id).await.unwrap();
        get_user(app, &token, &user.id).await.unwrap();
    }
    delete_key(&a, &key).await;
    for (replica, app) in [("A", &a), ("B", &b)] {
        let started = Instant::now();
        while get_user(app, &token, &user.id).await.is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "replica {replica} still takes the deleted key's token after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        inactive_within_a_second(app, &token).await;
    }
}
