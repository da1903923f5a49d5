use std::time::Duration;

use authd::pb::auth::v1 as pb;
use tonic::Code;

use crate::helpers::*;
use crate::register::futures_join_all;

async fn introspect(app: &TestApp, access: &str) -> bool {
    app.introspect(access).await.unwrap().active
}

#[tokio::test]
async fn a_chain_of_twenty_rotations_and_the_replay_of_any_earlier_token() {
    let app = spawn_app().await;
    let (user, first) = app.signed_in_user().await;
    let mut chain = vec![first];
    for _ in 0..20 {
        let last = chain.last().unwrap();
        let next = app.refresh(&last.refresh_token).await.unwrap();
        assert_ne!(next.refresh_token, last.refresh_token, "rotated");
        assert_eq!(next.token_type, "Bearer");
        assert_eq!(app.get_me(&next.access_token).await.unwrap().id, user.id);
        chain.push(next);
    }
    let latest = chain.pop().unwrap();
    // Every consumed token is a replay: the first one ends the session,
    // and every later one is still recognised as reuse.
    for earlier in &chain {
        assert_error(
            app.refresh(&earlier.refresh_token).await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_REUSED",
        );
    }
    assert!(
        app.refresh(&latest.refresh_token).await.is_err(),
        "the family is dead"
    );
    assert_error(
        app.get_me(&latest.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert!(!introspect(&app, &latest.access_token).await);
}

#[tokio::test]
async fn replaying_a_middle_token_ends_the_session_for_its_legitimate_holder_too() {
    let app = spawn_app().await;
    let (_, t0) = app.signed_in_user().await;
    let t1 = app.refresh(&t0.refresh_token).await.unwrap();
    let t2 = app.refresh(&t1.refresh_token).await.unwrap();
    // An attacker replays t1.
    assert_error(
        app.refresh(&t1.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    // The victim's current pair is dead as well.
    assert!(app.refresh(&t2.refresh_token).await.is_err());
    assert_error(
        app.get_me(&t2.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    // Other sessions of the same user are untouched.
    let (_, other) = app.signed_in_user().await;
    app.get_me(&other.access_token).await.unwrap();
}

#[tokio::test]
async fn of_twenty_concurrent_refreshes_with_one_token_exactly_one_wins() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let attempts = (0..20).map(|_| {
        let mut client = app.client.clone();
        let token = tokens.refresh_token.clone();
        async move { client.refresh(pb::RefreshRequest { refresh_token: token }).await }
    });
    let results = futures_join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.into_iter().filter(Result::is_err) {
        let status = r.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}

/// Refresh and Logout of one session racing: whatever order the database
/// puts them in, once both answered the session is over and no token a
/// Refresh handed out works.
#[tokio::test]
async fn a_refresh_racing_a_logout_never_outlives_it() {
    let app = spawn_app().await;
    let user = app.register("race@example.com", PASSWORD).await;
    for round in 0..10 {
        let tokens = app.tokens_of(&user.email).await;
        let (refreshed, logged_out) = tokio::join!(
            app.refresh(&tokens.refresh_token),
            app.logout(&tokens.refresh_token)
        );
        logged_out.unwrap_or_else(|e| panic!("round {round}: logout {e:?}"));
        if let Ok(pair) = refreshed {
            assert!(
                app.refresh(&pair.refresh_token).await.is_err(),
                "round {round}: a token from the race outlived the logout"
            );
            assert!(!introspect(&app, &pair.access_token).await, "round {round}");
        }
        assert!(!introspect(&app, &tokens.access_token).await, "round {round}");
    }
}

#[tokio::test]
async fn refresh_slides_the_idle_expiry() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let next = app.refresh(&tokens.refresh_token).await.unwrap();
    assert_eq!(next.expires_in, 900);
    assert_eq!(next.refresh_expires_in, 7 * 86_400);
}

#[tokio::test]
async fn a_session_idle_for_longer_than_its_idle_lifetime_is_over() {
    let app = spawn_app_with(|c| c.session_idle_ttl = Duration::from_secs(1)).await;
    let (_, tokens) = app.signed_in_user().await;
    assert_eq!(tokens.refresh_expires_in, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_error(
        app.refresh(&tokens.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    assert_error(
        app.get_me(&tokens.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
}

#[tokio::test]
async fn refreshing_never_extends_a_session_past_its_absolute_lifetime() {
    let app = spawn_app_with(|c| {
        c.session_idle_ttl = Duration::from_secs(2);
        c.session_max_ttl = Duration::from_secs(2);
    })
    .await;
    let (_, tokens) = app.signed_in_user().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let next = app.refresh(&tokens.refresh_token).await.unwrap();
    assert!(
        next.refresh_expires_in <= 1,
        "capped by the absolute expiry: {}",
        next.refresh_expires_in
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Only ~1.3 s idle, but 2.3 s old.
    assert_error(
        app.refresh(&next.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
}

#[tokio::test]
async fn logout_ends_the_session_at_once_and_is_repeatable() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    app.logout(&tokens.refresh_token).await.unwrap();
    assert_error(
        app.get_me(&tokens.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert!(!introspect(&app, &tokens.access_token).await);
    assert!(
        app.refresh(&tokens.refresh_token).await.is_err(),
        "refresh after logout"
    );
    app.logout(&tokens.refresh_token).await.unwrap();
}

#[tokio::test]
async fn logout_with_garbage_says_nothing_more() {
    let app = spawn_app().await;
    for garbage in [
        "rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "nonsense",
        "eyJ.eyJ.sig",
    ] {
        assert_error(
            app.logout(garbage).await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_INVALID",
        );
    }
    let status = app.logout("").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["refresh_token"]);
}

#[tokio::test]
async fn an_access_token_is_not_a_refresh_token() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    assert_error(
        app.refresh(&tokens.access_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
}

#[tokio::test]
async fn within_the_grace_window_a_replay_of_the_previous_token_keeps_the_session() {
    let app = spawn_app_with(|c| c.refresh_reuse_grace = Duration::from_secs(30)).await;
    let (_, t0) = app.signed_in_user().await;
    let t1 = app.refresh(&t0.refresh_token).await.unwrap();
    assert_error(
        app.refresh(&t0.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    let t2 = app
        .refresh(&t1.refresh_token)
        .await
        .expect("session survived the benign replay");
    // Two generations back is never benign.
    assert_error(
        app.refresh(&t0.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    assert!(app.refresh(&t2.refresh_token).await.is_err());
}

#[tokio::test]
async fn change_password_with_a_wrong_current_password_changes_nothing() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let (_, other) = {
        let t = app.login(&user.email, PASSWORD).await.unwrap();
        (t.user, t.tokens.unwrap())
    };
    let hash_before: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let result = app
        .change_password(&tokens.access_token, "not my password", "a brand new passphrase")
        .await;
    // INVALID_ARGUMENT, not UNAUTHENTICATED: the bearer is fine, and clients
    // log their user out on UNAUTHENTICATED.
    assert_error(result, Code::InvalidArgument, "INVALID_CREDENTIALS");
    let hash_after: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(hash_before, hash_after);
    app.get_me(&other.access_token).await.unwrap();
    app.refresh(&tokens.refresh_token).await.unwrap();
    app.login(&user.email, PASSWORD).await.unwrap();
}

#[tokio::test]
async fn change_password_ends_other_sessions_and_renews_this_one() {
    let app = spawn_app().await;
    let (user, this) = app.signed_in_user().await;
    let other = app.tokens_of(&user.email).await;
    let new_password = "a brand new passphrase";
    let renewed = app
        .change_password(&this.access_token, PASSWORD, new_password)
        .await
        .unwrap();

    assert_error(
        app.get_me(&other.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert!(app.refresh(&other.refresh_token).await.is_err());
    // This session lives on with the new pair; its old refresh token is dead.
    app.get_me(&renewed.access_token).await.unwrap();
    app.get_me(&this.access_token).await.unwrap();
    assert!(app.refresh(&this.refresh_token).await.is_err());
    app.refresh(&renewed.refresh_token).await.unwrap();
    assert_error(
        app.login(&user.email, PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.login(&user.email, new_password).await.unwrap();
}

#[tokio::test]
async fn change_password_applies_the_policy_and_needs_a_live_session() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let status = app
        .change_password(&tokens.access_token, "", "short")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["current_password", "new_password"]);
    app.logout(&tokens.refresh_token).await.unwrap();
    let result = app
        .change_password(&tokens.access_token, PASSWORD, "a brand new passphrase")
        .await;
    assert_error(result, Code::Unauthenticated, "SESSION_REVOKED");
    let result = app
        .client
        .clone()
        .change_password(pb::ChangePasswordRequest::default())
        .await;
    assert_error(result, Code::Unauthenticated, "TOKEN_MISSING");
}

#[tokio::test]
async fn two_replicas_on_one_database_share_every_session() {
    let a = spawn_app().await;
    let b = a.replica().await;

    let (user, tokens) = a.signed_in_user().await;
    assert_eq!(
        b.get_me(&tokens.access_token).await.unwrap().id,
        user.id,
        "A's token works at B"
    );

    let rotated_at_a = a.refresh(&tokens.refresh_token).await.unwrap();
    assert_error(
        b.refresh(&tokens.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    assert_error(
        b.get_me(&rotated_at_a.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );

    let second = b.tokens_of(&user.email).await;
    a.logout(&second.refresh_token).await.unwrap();
    assert_error(
        b.get_me(&second.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
}

#[tokio::test]
async fn clean_up_deletes_long_dead_sessions_only() {
    let app = spawn_app().await;
    let (_, ended) = app.signed_in_user().await;
    let (_, live) = app.signed_in_user().await;
    app.logout(&ended.refresh_token).await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    let deleted = authd::db::sessions::delete_dead(&app.db, later, chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    app.get_me(&live.access_token).await.unwrap();
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(tokens, 1, "the ended session's tokens went with it");
}

/// A password change is one transaction: when its last write fails (a mail
/// insert made to fail by a trigger, standing in for a crash), nothing of it
/// remains: not the hash, not the ended sessions, not the new refresh token,
/// and not the forgiving of earlier failed attempts, which used to be
/// committed on its own before the change.
#[tokio::test]
async fn a_password_change_that_fails_midway_changes_nothing() {
    let app = spawn_app().await;
    let (user, this) = app.signed_in_user().await;
    let other = app.tokens_of(&user.email).await;
    let new_password = "a brand new passphrase";
    for _ in 0..2 {
        assert_error(
            app.change_password(&this.access_token, "not my password", new_password)
                .await,
            Code::InvalidArgument,
            "INVALID_CREDENTIALS",
        );
    }
    let hash_before: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION fail_mail() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER fail_mail BEFORE INSERT ON email_outbox
         FOR EACH ROW EXECUTE FUNCTION fail_mail();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let failed = app
        .change_password(&this.access_token, PASSWORD, new_password)
        .await;
    assert_eq!(failed.unwrap_err().code(), Code::Internal);
    // The log says which step and which query failed.
    if let Some(logs) = captured_logs() {
        let line = logs
            .lines()
            .rev()
            .find(|l| l.contains("injected failure"))
            .map(str::to_owned)
            .unwrap_or_default();
        assert!(
            line.contains("authd::db::outbox::enqueue") && line.contains("change_password"),
            "the INTERNAL log names the query and the use case: {line}"
        );
    }

    let hash_after: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(hash_before, hash_after);
    // The two wrong passwords count; the right one whose change failed is
    // given back.
    app.wait_for_counted_failures(&user.id, 2).await;
    app.get_me(&other.access_token).await.unwrap();
    app.refresh(&this.refresh_token).await.unwrap();
    app.login(&user.email, PASSWORD).await.unwrap();
}

/// A token that outlived its session would stay valid at local verifiers
/// after every session of its user was ended (a revocation names only
/// sessions that could still be used), so its expiry is capped at the
/// session's: here 90 s of absolute lifetime against 15 min of token.
#[tokio::test]
async fn an_access_token_ends_with_its_session() {
    let app = spawn_app_with(|c| {
        c.access_token_ttl = Duration::from_secs(900);
        c.session_idle_ttl = Duration::from_secs(90);
        c.session_max_ttl = Duration::from_secs(90);
    })
    .await;
    let user = app
        .register(
            &format!("capped-{}@example.com", uuid::Uuid::new_v4().simple()),
            PASSWORD,
        )
        .await;
    let tokens = app.tokens_of(&user.email).await;
    let claims = jwt_claims(&tokens.access_token);
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    let session_ends: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM LEAST(idle_expires_at, absolute_expires_at))::bigint
           FROM sessions WHERE user_id = $1::uuid",
    )
    .bind(&user.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(exp <= session_ends, "exp {exp}, session ends {session_ends}");
    assert!(exp - iat <= 90, "lifetime {}", exp - iat);
    assert!(tokens.expires_in <= 90, "expires_in {}", tokens.expires_in);
    // Refresh issues a token capped the same way.
    let next = app.refresh(&tokens.refresh_token).await.unwrap();
    let exp = jwt_claims(&next.access_token)["exp"].as_i64().unwrap();
    assert!(exp <= session_ends + 1, "exp {exp}, session ends {session_ends}");
}
