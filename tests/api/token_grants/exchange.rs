//! Token exchange (RFC 8693) and impersonation: a user's token becomes a
//! narrower one for one audience, acting as the calling service; an
//! exchanged token is exchanged again with a nested `act`; a service with
//! users.impersonate acts for an account in a session of its own.

use serde_json::json;

use super::*;
use crate::lifecycle::list_sessions;

#[tokio::test]
async fn token_exchange_narrows_a_users_token_to_one_audience_acting_as_the_service() {
    let app = spawn().await;
    let (user, tokens) = user_with_roles(&app, &["admin", "reader"]).await;
    let name = fresh_service("gateway");
    let key = app.service_key(&name, &[EXCHANGE]).await;
    let subject = jwt_claims(&tokens.access_token);
    assert_eq!(words_of(&subject["roles"]), sorted(&["admin", "reader"]));

    let granted = exchange(
        &app,
        &key,
        token_exchange(&tokens.access_token, BILLING, "reader"),
    )
    .await
    .unwrap();
    assert_eq!(granted.issued_token_type, ACCESS_TOKEN_TYPE);
    assert_eq!(granted.token_type, "Bearer");
    assert_eq!(granted.scope, "reader");
    assert!(granted.expires_in > 0);

    assert_eq!(jwt_header(&granted.access_token)["typ"], "at+jwt");
    let claims = jwt_claims(&granted.access_token);
    assert_eq!(claims["iss"], "https://authd.test");
    assert_eq!(claims["aud"], BILLING);
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["sid"], subject["sid"], "the subject's session");
    assert_eq!(claims["client_id"], name.as_str());
    assert_eq!(claims["act"], json!({ "sub": format!("svc:{name}") }));
    assert_eq!(claims["roles"], json!(["reader"]));
    for copied in ["amr", "acr", "auth_time"] {
        assert_eq!(claims[copied], subject[copied], "{copied} is the subject's");
    }
    let exp = claims["exp"].as_i64().unwrap();
    assert!(
        exp <= subject["exp"].as_i64().unwrap(),
        "never outlives the subject"
    );
    assert_eq!(granted.expires_in, exp - claims["iat"].as_i64().unwrap());
    assert_ne!(claims["jti"], subject["jti"]);

    let answer = app.introspect(&granted.access_token).await.unwrap();
    assert!(answer.active, "{answer:?}");
    assert_eq!(answer.user_id, user.id);
    assert_eq!(answer.session_id, session_of(&tokens.access_token));
    assert_eq!(answer.audience, BILLING);
    assert_eq!(answer.client_id, name);
    assert_eq!(answer.actors, vec![format!("svc:{name}")]);
    assert_eq!(answer.roles, vec!["reader".to_owned()]);
}

fn words_of(value: &Value) -> Vec<String> {
    let mut words: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    words.sort();
    words
}

#[tokio::test]
async fn without_a_scope_the_exchange_keeps_every_role_of_the_subject() {
    let app = spawn().await;
    let (_, tokens) = user_with_roles(&app, &["admin", "reader"]).await;
    let key = app.service_key(&fresh_service("gateway"), &[EXCHANGE]).await;
    let granted = exchange(&app, &key, token_exchange(&tokens.access_token, LEDGER, ""))
        .await
        .unwrap();
    assert_eq!(words(&granted.scope), sorted(&["admin", "reader"]));
    assert_eq!(
        words_of(&jwt_claims(&granted.access_token)["roles"]),
        sorted(&["admin", "reader"])
    );
    // A user without roles: an exchanged token without roles.
    let (_, plain) = app.signed_in_user().await;
    let granted = exchange(&app, &key, token_exchange(&plain.access_token, LEDGER, ""))
        .await
        .unwrap();
    assert_eq!(granted.scope, "");
    assert_eq!(jwt_claims(&granted.access_token)["roles"], json!([]));
}

#[tokio::test]
async fn an_exchanged_token_expires_no_later_than_its_subject() {
    let app = spawn().await;
    let (_, tokens) = app.signed_in_user().await;
    let key = app.service_key(&fresh_service("gateway"), &[EXCHANGE]).await;
    // The same session's token, 40 seconds left (authd could have minted it
    // so: a session's tokens never outlive the session).
    let soon = now() + 40;
    let subject = resigned(&app, &tokens.access_token, |c| c["exp"] = json!(soon));
    let granted = exchange(&app, &key, token_exchange(&subject, BILLING, ""))
        .await
        .unwrap();
    let claims = jwt_claims(&granted.access_token);
    assert_eq!(claims["exp"].as_i64(), Some(soon));
    assert!(granted.expires_in <= 41, "{}", granted.expires_in);

    // A subject with plenty of time left: the exchanged token lives at most
    // the access-token lifetime.
    let granted = exchange(&app, &key, token_exchange(&tokens.access_token, BILLING, ""))
        .await
        .unwrap();
    let claims = jwt_claims(&granted.access_token);
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(
        lifetime <= i64::try_from(app.config.access_token_ttl.as_secs()).unwrap(),
        "{lifetime}"
    );
}

#[tokio::test]
async fn subject_token_type_jwt_is_accepted_as_well() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let key = app.service_key(&fresh_service("gateway"), &[EXCHANGE]).await;
    for token_type in [ACCESS_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:jwt"] {
        let granted = exchange(
            &app,
            &key,
            pb::ExchangeTokenRequest {
                subject_token_type: token_type.into(),
                ..token_exchange(&tokens.access_token, BILLING, "")
            },
        )
        .await
        .unwrap();
        assert_eq!(jwt_claims(&granted.access_token)["sub"], user.id.as_str());
        assert_eq!(granted.issued_token_type, ACCESS_TOKEN_TYPE);
    }
}

#[tokio::test]
async fn an_exchanged_token_exchanged_again_nests_the_actors() {
    let app = spawn().await;
    let (user, tokens) = user_with_roles(&app, &["admin", "reader"]).await;
    let front = fresh_service("front");
    let back = fresh_service("back");
    let front_key = app.service_key(&front, &[EXCHANGE]).await;
    let back_key = app.service_key(&back, &[EXCHANGE]).await;

    let first = exchange(
        &app,
        &front_key,
        token_exchange(&tokens.access_token, BILLING, "admin reader"),
    )
    .await
    .unwrap()
    .access_token;
    // The billing service, holding the token for billing, asks for one for
    // the ledger with fewer roles.
    let second = exchange(&app, &back_key, token_exchange(&first, LEDGER, "reader"))
        .await
        .unwrap();
    let claims = jwt_claims(&second.access_token);
    assert_eq!(claims["aud"], LEDGER);
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["sid"], session_of(&tokens.access_token));
    assert_eq!(claims["client_id"], back.as_str());
    assert_eq!(
        claims["act"],
        json!({ "sub": format!("svc:{back}"), "act": { "sub": format!("svc:{front}") } })
    );
    assert_eq!(claims["roles"], json!(["reader"]));
    assert!(claims["exp"].as_i64() <= jwt_claims(&first)["exp"].as_i64());

    let answer = app.introspect(&second.access_token).await.unwrap();
    assert!(answer.active);
    assert_eq!(answer.actors, vec![format!("svc:{back}"), format!("svc:{front}")]);
    assert_eq!(answer.client_id, back);

    // Roles dropped by the first exchange cannot come back in the second.
    let status = assert_error(
        exchange(
            &app,
            &back_key,
            token_exchange(&second.access_token, BILLING, "admin"),
        )
        .await,
        tonic::Code::InvalidArgument,
        "SCOPE_INVALID",
    );
    assert_eq!(violated_fields(&status), vec!["scope"]);
}

#[tokio::test]
async fn a_service_may_exchange_with_its_own_service_token_instead_of_its_key() {
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let name = fresh_service("gateway");
    let key = app.service_key(&name, &[EXCHANGE, READ]).await;
    let own = service_token(&app, &key, "", EXCHANGE).await;

    let granted = exchange(&app, &own, token_exchange(&tokens.access_token, BILLING, ""))
        .await
        .unwrap();
    let claims = jwt_claims(&granted.access_token);
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["act"]["sub"], format!("svc:{name}"));
    assert_eq!(claims["client_id"], name.as_str());

    // A service token without tokens.exchange may not, though the key could.
    let reader = service_token(&app, &key, "", READ).await;
    let status = assert_error(
        exchange(&app, &reader, token_exchange(&tokens.access_token, BILLING, "")).await,
        tonic::Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(crate::admin::missing_scope(&status), EXCHANGE);
}

#[tokio::test]
async fn impersonation_mints_a_five_minute_audited_token_in_a_session_of_its_own() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn().await;
    let (user, tokens) = user_with_roles(&app, &["admin", "support"]).await;
    let name = fresh_service("helpdesk");
    let key = app.service_key(&name, &[IMPERSONATE]).await;

    let before = now();
    let granted = exchange(&app, &key, impersonation(&user.id, BILLING, "support"))
        .await
        .unwrap();
    assert_eq!(granted.expires_in, 300);
    assert_eq!(granted.scope, "support");
    assert_eq!(granted.issued_token_type, ACCESS_TOKEN_TYPE);
    let claims = jwt_claims(&granted.access_token);
    assert_eq!(claims["aud"], BILLING);
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["client_id"], name.as_str());
    assert_eq!(claims["act"], json!({ "sub": format!("svc:{name}") }));
    assert_eq!(claims["amr"], json!([]), "nothing of the user was proven");
    assert_eq!(claims["auth_time"], 0);
    assert_eq!(claims["roles"], json!(["support"]));
    let iat = claims["iat"].as_i64().unwrap();
    assert!(iat >= before - 1);
    assert_eq!(claims["exp"].as_i64(), Some(iat + 300));
    let sid = claims["sid"].as_str().unwrap().to_owned();
    assert_ne!(sid, session_of(&tokens.access_token), "a session of its own");

    // The user sees it among their sessions, named for the service.
    let sessions = list_sessions(&app, &tokens.access_token).await.unwrap();
    let listed = sessions
        .iter()
        .find(|s| s.id == sid)
        .unwrap_or_else(|| panic!("no session {sid} in {sessions:?}"));
    assert_eq!(listed.user_agent, format!("impersonation by svc:{name}"));
    assert!(!listed.current);
    let ends = listed.expires_at.as_ref().unwrap().seconds;
    assert!((iat + 299..=iat + 301).contains(&ends), "{ends} vs {iat}");

    let answer = app.introspect(&granted.access_token).await.unwrap();
    assert!(answer.active, "{answer:?}");
    assert_eq!(answer.user_id, user.id);
    assert_eq!(answer.session_id, sid);
    assert_eq!(answer.actors, vec![format!("svc:{name}")]);

    // Audited: which service, for whom, which session; never the token.
    let logs = captured_logs().unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("authd::audit") && l.contains("impersonation token issued") && l.contains(&name))
        .unwrap_or_else(|| panic!("no audit line for the impersonation by {name}"));
    assert!(line.contains(&user.id), "{line}");
    assert!(line.contains(&sid), "{line}");
    assert!(line.contains("WARN"), "{line}");
    let signature = granted.access_token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "the token is in the log");

    // Without a scope: every role of the account.
    let all = exchange(&app, &key, impersonation(&user.id, LEDGER, ""))
        .await
        .unwrap();
    assert_eq!(words(&all.scope), sorted(&["admin", "support"]));
}

#[tokio::test]
async fn token_exchange_is_audited_with_service_user_and_session() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let name = fresh_service("audited");
    let key = app.service_key(&name, &[EXCHANGE]).await;
    let granted = exchanged(&app, &key, &tokens.access_token, LEDGER).await;
    let logs = captured_logs().unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("authd::audit") && l.contains("token exchanged") && l.contains(&name))
        .unwrap_or_else(|| panic!("no audit line for the exchange by {name}"));
    assert!(line.contains(&user.id), "{line}");
    assert!(line.contains(&session_of(&tokens.access_token)), "{line}");
    assert!(line.contains(LEDGER), "{line}");
    for token in [&tokens.access_token, &granted] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token is in the log");
    }
}
