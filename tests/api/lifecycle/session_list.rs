//! Sessions a user can see and end: ListSessions, RevokeSession,
//! RevokeOtherSessions.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Endpoint;

use super::*;

/// A client on `app` whose user agent is `agent` (tonic adds its own after).
async fn client_calling_itself(app: &TestApp, agent: &str) -> Client {
    let channel = Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .user_agent(agent)
        .unwrap()
        .connect()
        .await
        .unwrap();
    Client::new(channel)
}

async fn login_with(client: &Client, email: &str) -> pb::TokenPair {
    client
        .clone()
        .login(pb::LoginRequest {
            login: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
}

fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[tokio::test]
async fn list_sessions_marks_the_current_one_and_shows_where_each_came_from() {
    let app = spawn_app_with(|c| {
        c.trusted_proxy_header = Some(http::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let phone = client_calling_itself(&app, "PhoneApp/2.1 (iOS 17)").await;
    let laptop = client_calling_itself(&app, "LaptopApp/1.0").await;
    let on_phone = login_with(&phone, &email).await;
    // The laptop comes through the trusted gateway.
    let mut request = tonic::Request::new(pb::LoginRequest {
        login: email.clone(),
        password: PASSWORD.into(),
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.23, 203.0.113.9".parse().unwrap());
    let on_laptop = laptop
        .clone()
        .login(request)
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    // Someone else's session never shows.
    app.signed_in_user().await;

    let listed = list_sessions(&app, &on_laptop.access_token).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let current: Vec<&pb::Session> = listed.iter().filter(|s| s.current).collect();
    assert_eq!(current.len(), 1, "{listed:?}");
    assert_eq!(current[0].id, session_of(&on_laptop.access_token));
    // Most recently used first.
    assert_eq!(listed[0].id, session_of(&on_laptop.access_token));
    assert_eq!(listed[1].id, session_of(&on_phone.access_token));
    assert!(listed[0].user_agent.starts_with("LaptopApp/1.0"), "{listed:?}");
    assert_eq!(
        listed[0].ip_address, "203.0.113.9",
        "the last entry, the gateway's"
    );
    assert!(
        listed[1].user_agent.starts_with("PhoneApp/2.1 (iOS 17)"),
        "{listed:?}"
    );
    assert_eq!(listed[1].ip_address, "127.0.0.1");
    for s in &listed {
        let (created, used, expires) = (
            s.created_at.as_ref().unwrap(),
            s.last_used_at.as_ref().unwrap(),
            s.expires_at.as_ref().unwrap(),
        );
        assert_eq!(created, used, "not refreshed yet");
        let lifetime = millis(expires) - millis(created);
        let idle = i64::try_from(app.config.session_idle_ttl.as_millis()).unwrap();
        assert!((lifetime - idle).abs() < 1000, "{lifetime} vs {idle}");
    }

    // A refresh moves the phone's session to the top and slides its expiry.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let renewed = app.refresh(&on_phone.refresh_token).await.unwrap();
    let listed = list_sessions(&app, &renewed.access_token).await.unwrap();
    assert_eq!(listed[0].id, session_of(&on_phone.access_token));
    assert!(listed[0].current);
    assert!(!listed[1].current);
    assert!(
        millis(listed[0].last_used_at.as_ref().unwrap()) > millis(listed[0].created_at.as_ref().unwrap())
    );
}

#[tokio::test]
async fn an_overlong_or_garbled_user_agent_is_capped_not_refused() {
    let app = spawn_app().await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let long = format!("Agent/{}", "x".repeat(5000));
    let client = client_calling_itself(&app, &long).await;
    let tokens = login_with(&client, &email).await;
    let listed = list_sessions(&app, &tokens.access_token).await.unwrap();
    assert_eq!(listed[0].user_agent.chars().count(), 256);
    assert!(listed[0].user_agent.starts_with("Agent/xxx"));
}

#[tokio::test]
async fn revoke_session_cannot_touch_another_users_session() {
    let app = spawn_app().await;
    let (_, mine) = app.signed_in_user().await;
    let (_, theirs) = app.signed_in_user().await;
    let their_session = session_of(&theirs.access_token);

    let foreign = assert_error(
        revoke_session(&app, &mine.access_token, &their_session).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let unknown = assert_error(
        revoke_session(&app, &mine.access_token, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_eq!(foreign.message(), unknown.message());
    assert_eq!(foreign.details(), unknown.details());

    // Their session is untouched.
    app.get_me(&theirs.access_token).await.unwrap();
    let renewed = app.refresh(&theirs.refresh_token).await.unwrap();
    app.get_me(&renewed.access_token).await.unwrap();

    for bad in ["not-a-uuid", "", "' OR 1=1 --"] {
        let status = assert_error(
            revoke_session(&app, &mine.access_token, bad).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["session_id"], "{bad:?}");
    }
}

#[tokio::test]
async fn revoke_session_ends_one_of_mine_at_once() {
    let app = spawn_app().await;
    let (user, here) = app.signed_in_user().await;
    let there = app.tokens_of(&user.email).await;
    let there_id = session_of(&there.access_token);
    // Cached as live before it ends.
    app.get_me(&there.access_token).await.unwrap();

    revoke_session(&app, &here.access_token, &there_id).await.unwrap();
    assert_error(
        app.get_me(&there.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert!(app.refresh(&there.refresh_token).await.is_err());
    let listed = list_sessions(&app, &here.access_token).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].current);
    // Ending an ended session of mine is fine.
    revoke_session(&app, &here.access_token, &there_id).await.unwrap();

    // The current session too: the bearer is then over.
    revoke_session(&app, &here.access_token, &session_of(&here.access_token))
        .await
        .unwrap();
    assert_error(
        app.get_me(&here.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert_error(
        list_sessions(&app, &here.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
}

#[tokio::test]
async fn revoke_other_sessions_ends_all_but_the_current_and_counts_them() {
    let app = spawn_app().await;
    let (user, here) = app.signed_in_user().await;
    let others = [app.tokens_of(&user.email).await, app.tokens_of(&user.email).await];
    // An ended one is not counted.
    let ended = app.tokens_of(&user.email).await;
    app.logout(&ended.refresh_token).await.unwrap();
    for other in &others {
        app.get_me(&other.access_token).await.unwrap();
    }

    assert_eq!(revoke_others(&app, &here.access_token).await.unwrap(), 2);
    for other in &others {
        assert_error(
            app.get_me(&other.access_token).await,
            Code::Unauthenticated,
            "SESSION_REVOKED",
        );
        assert!(app.refresh(&other.refresh_token).await.is_err());
    }
    app.get_me(&here.access_token).await.unwrap();
    let renewed = app.refresh(&here.refresh_token).await.unwrap();
    assert_eq!(revoke_others(&app, &renewed.access_token).await.unwrap(), 0);
    let listed = list_sessions(&app, &renewed.access_token).await.unwrap();
    assert_eq!(listed.len(), 1);
}

/// GetMe at `app` until it refuses `access`, for at most 2 s.
async fn refused_within_two_seconds(app: &TestApp, access: &str) {
    let started = std::time::Instant::now();
    while app.get_me(access).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still served after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_error(app.get_me(access).await, Code::Unauthenticated, "SESSION_REVOKED");
}

/// Sessions ended and profiles changed through one replica stop being
/// served from another replica's cache within milliseconds.
#[tokio::test]
async fn lifecycle_changes_at_one_replica_reach_the_cache_of_another() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let (user, here) = a.signed_in_user().await;
    let (one, two, three) = (
        a.tokens_of(&user.email).await,
        a.tokens_of(&user.email).await,
        a.tokens_of(&user.email).await,
    );
    // B serves all four from its cache.
    for t in [&here, &one, &two, &three] {
        b.get_me(&t.access_token).await.unwrap();
        b.get_me(&t.access_token).await.unwrap();
    }

    revoke_session(&a, &here.access_token, &session_of(&one.access_token))
        .await
        .unwrap();
    refused_within_two_seconds(&b, &one.access_token).await;

    update_me(
        &a,
        &here.access_token,
        pb::User {
            full_name: "Renamed At A".into(),
            ..Default::default()
        },
        &["full_name"],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    while b.get_me(&here.access_token).await.unwrap().full_name != "Renamed At A" {
        assert!(started.elapsed() < Duration::from_secs(2), "stale profile at B");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(revoke_others(&a, &here.access_token).await.unwrap(), 2);
    refused_within_two_seconds(&b, &two.access_token).await;
    refused_within_two_seconds(&b, &three.access_token).await;
    b.get_me(&here.access_token).await.unwrap();

    delete_me(&a, &here.access_token, PASSWORD).await.unwrap();
    refused_within_two_seconds(&b, &here.access_token).await;
}
