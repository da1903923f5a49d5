use std::time::Duration;

use authd::pb::auth::v1 as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::*;

/// The retry delay of an answer that must be a throttled one.
fn throttled_retry_delay(status: &Status) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    retry_delay(status)
}

async fn fail_login(app: &TestApp, login: &str) -> Status {
    app.login(login, "definitely wrong").await.unwrap_err()
}

#[tokio::test]
async fn failed_logins_back_off_after_five_free_attempts() {
    let app = spawn_app().await;
    let user = app.register("frank@example.com", PASSWORD).await;
    for _ in 0..6 {
        assert_eq!(
            reason(&fail_login(&app, &user.email).await),
            "INVALID_CREDENTIALS"
        );
    }
    let status = fail_login(&app, &user.email).await;
    let delay = throttled_retry_delay(&status);
    assert!(
        delay <= Duration::from_secs(1) && delay > Duration::ZERO,
        "{delay:?}"
    );
    assert_eq!(reason(&status), "THROTTLED");
    // While throttled even the right password is not evaluated: no oracle.
    assert_eq!(
        app.login(&user.email, PASSWORD).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    tokio::time::sleep(delay + Duration::from_millis(100)).await;
    app.login(&user.email, PASSWORD)
        .await
        .expect("allowed again after the delay");
}

#[tokio::test]
async fn unknown_accounts_are_throttled_exactly_like_known_ones() {
    let app = spawn_app().await;
    app.register("gina@example.com", PASSWORD).await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..8 {
        known.push(fail_login(&app, "gina@example.com").await);
        unknown.push(fail_login(&app, "ghost@example.com").await);
    }
    for (k, u) in known.iter().zip(&unknown) {
        assert_eq!(k.code(), u.code());
        assert_eq!(reason(k), reason(u));
        assert_eq!(
            k.get_details_retry_info().is_some(),
            u.get_details_retry_info().is_some()
        );
    }
    assert_eq!(known.last().unwrap().code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn a_successful_login_resets_the_count() {
    let app = spawn_app().await;
    let user = app.register("hank@example.com", PASSWORD).await;
    for _ in 0..4 {
        fail_login(&app, &user.email).await;
    }
    app.login(&user.email, PASSWORD).await.unwrap();
    for _ in 0..5 {
        assert_eq!(
            reason(&fail_login(&app, &user.email).await),
            "INVALID_CREDENTIALS"
        );
    }
}

#[tokio::test]
async fn concurrent_guesses_cannot_outrun_the_counter() {
    let app = spawn_app().await;
    app.register("jill@example.com", PASSWORD).await;
    let attempts = (0..20).map(|_| {
        let mut client = app.client.clone();
        async move {
            client
                .login(pb::LoginRequest {
                    login: "jill@example.com".into(),
                    password: "wrong guess".into(),
                })
                .await
        }
    });
    let results = crate::register::futures_join_all(attempts).await;
    let evaluated = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    assert!(evaluated <= 6, "{evaluated} guesses were evaluated");
}

#[tokio::test]
async fn the_throttle_holds_across_replicas() {
    let a = spawn_app().await;
    let url = a.database_url();
    let b = spawn_app_on(&url, |_| {}).await;
    a.register("kim@example.com", PASSWORD).await;
    for _ in 0..6 {
        fail_login(&a, "kim@example.com").await;
    }
    assert_eq!(
        fail_login(&b, "kim@example.com").await.code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn change_password_guesses_count_against_the_account() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let attempt = |current: &'static str| {
        let mut client = app.client.clone();
        let access = tokens.access_token.clone();
        async move {
            client
                .change_password(with_bearer(
                    pb::ChangePasswordRequest {
                        current_password: current.into(),
                        new_password: "a brand new passphrase".into(),
                    },
                    &access,
                ))
                .await
        }
    };
    for _ in 0..6 {
        assert_error(
            attempt("wrong guess").await,
            Code::InvalidArgument,
            "INVALID_CREDENTIALS",
        );
    }
    let status = attempt("wrong guess").await.unwrap_err();
    throttled_retry_delay(&status);
}

#[tokio::test]
async fn the_peer_limit_guards_password_rpcs_only() {
    let app = spawn_app_with(|c| c.peer_rate_limit = 2.0).await;
    let (_, tokens) = app.signed_in_user().await; // two calls: Register and Login
    let status = app.login("someone@example.com", PASSWORD).await.unwrap_err();
    let delay = throttled_retry_delay(&status);
    assert!(delay <= Duration::from_millis(500), "{delay:?}");
    // The token RPCs of internal callers are never limited per peer.
    for _ in 0..30 {
        app.get_me(&tokens.access_token).await.unwrap();
        app.introspect(&tokens.access_token).await.unwrap();
        app.client.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap();
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_address_has_its_own_budget() {
    let app = spawn_app_with(|c| {
        c.peer_rate_limit = 1.0;
        c.trusted_proxy_header = Some(http::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    let login_from = |client_ip: &'static str| {
        let mut client = app.client.clone();
        async move {
            let mut request = tonic::Request::new(pb::LoginRequest {
                login: "nobody@example.com".into(),
                password: "whatever it is".into(),
            });
            request.metadata_mut().insert(
                "x-forwarded-for",
                format!("10.9.9.9, {client_ip}").parse().unwrap(),
            );
            client.login(request).await.unwrap_err().code()
        }
    };
    assert_eq!(login_from("198.51.100.1").await, Code::Unauthenticated);
    assert_eq!(login_from("198.51.100.1").await, Code::ResourceExhausted);
    assert_eq!(login_from("198.51.100.2").await, Code::Unauthenticated);
}

/// `charge` computes the back-off in SQL; this holds it to the schedule
/// `Backoff::delay_after` documents, including the fresh start after a
/// quiet hour.
#[tokio::test]
async fn the_back_off_schedule_in_sql_is_the_documented_one() {
    use authd::db::throttle::{Backoff, charge};
    use chrono::SubsecRound as _;
    let app = spawn_app().await;
    let (b, key) = (Backoff::LOGIN, "test:schedule");
    // The database keeps microseconds.
    let mut now = chrono::Utc::now().trunc_subsecs(6);
    for failure in 1..=20 {
        let counted = charge(&app.db, key, &b, now).await.unwrap();
        assert_eq!(counted, None, "attempt {failure} comes after the previous wait");
        match b.delay_after(failure) {
            None => now += chrono::Duration::milliseconds(1),
            Some(wait) => {
                let refused = charge(&app.db, key, &b, now).await.unwrap();
                assert_eq!(refused, Some(wait), "wait after failure {failure}");
                now += chrono::Duration::from_std(wait).unwrap();
            }
        }
    }
    let failures = || async {
        sqlx::query_scalar::<_, i32>("SELECT failures FROM login_throttle WHERE key = $1")
            .bind(key)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    assert_eq!(failures().await, 20, "refused attempts are not counted");
    now += chrono::Duration::from_std(b.forget_after).unwrap();
    assert_eq!(charge(&app.db, key, &b, now).await.unwrap(), None);
    assert_eq!(failures().await, 1, "a quiet hour starts the count over");
}

/// A right current password is never a failed attempt, even when the change
/// it guards does not happen: here every ChangePassword, ChangeEmail and
/// DeleteMe passes the password check and then runs out of its deadline
/// waiting for the account row (as under a slow or contended database).
/// Two of each are more than the five free attempts.
#[tokio::test]
async fn a_right_current_password_is_not_charged_when_its_change_does_not_happen() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_millis(300)).await;
    let (user, tokens) = app.signed_in_user().await;
    // Another transaction holds the account row during each call (and lets
    // go after it, so the connections of the abandoned calls come back).
    let hold_account = || async {
        let mut blocker = app.db.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
            .bind(&user.id)
            .execute(&mut *blocker)
            .await
            .unwrap();
        blocker
    };
    let mut client = app.client.clone();
    for _ in 0..2 {
        let blocker = hold_account().await;
        let changed = client
            .change_password(with_bearer(
                pb::ChangePasswordRequest {
                    current_password: PASSWORD.into(),
                    new_password: "an entirely different passphrase".into(),
                },
                &tokens.access_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(changed.code(), Code::DeadlineExceeded, "{changed:?}");
        blocker.rollback().await.unwrap();
        let blocker = hold_account().await;
        let moved = client
            .change_email(with_bearer(
                pb::ChangeEmailRequest {
                    new_email: "elsewhere@example.com".into(),
                    current_password: PASSWORD.into(),
                },
                &tokens.access_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(moved.code(), Code::DeadlineExceeded, "{moved:?}");
        blocker.rollback().await.unwrap();
        let blocker = hold_account().await;
        let deleted = client
            .delete_me(with_bearer(
                pb::DeleteMeRequest {
                    current_password: PASSWORD.into(),
                },
                &tokens.access_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(deleted.code(), Code::DeadlineExceeded, "{deleted:?}");
        blocker.rollback().await.unwrap();
    }
    // Refunds are written just after the calls end.
    let key = authd::domain::ThrottleKey::account(user.id.parse().unwrap())
        .as_str()
        .to_owned();
    let started = std::time::Instant::now();
    loop {
        let failures: i32 =
            sqlx::query_scalar("SELECT coalesce(max(failures), 0) FROM login_throttle WHERE key = $1")
                .bind(&key)
                .fetch_one(&app.db)
                .await
                .unwrap();
        if failures == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{failures} failed attempts charged for the right password"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.login(&user.email, PASSWORD)
        .await
        .expect("the account holder is not locked out");
}

/// Were Login by email and Login by username counted together, an attacker
/// could throttle an address and then see whether a username is throttled
/// too: proof that both name one account.
#[tokio::test]
async fn failures_through_an_email_do_not_throttle_the_username_of_the_same_account() {
    let app = spawn_app().await;
    let email = format!("linked-{}@example.com", uuid::Uuid::new_v4().simple());
    let username = format!("linked_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    app.register_as(pb::RegisterRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        username: username.clone(),
        ..Default::default()
    })
    .await;
    // The address's counter runs out.
    let mut last = fail_login(&app, &email).await;
    for _ in 0..7 {
        last = fail_login(&app, &email).await;
    }
    assert_eq!(last.code(), Code::ResourceExhausted, "{last:?}");
    // The username answers like any other name with a fresh counter.
    let by_name = fail_login(&app, &username).await;
    assert_eq!(by_name.code(), Code::Unauthenticated, "{by_name:?}");
    assert_eq!(reason(&by_name), "INVALID_CREDENTIALS");
    // And with the right password it gets in, so the owner is not locked
    // out through a name an attacker guessed at.
    app.login(&username, PASSWORD).await.unwrap();
}

/// Failed passkey logins are charged per client address the way every
/// per-client budget is: an IPv6 client owns its whole /64, so answers
/// from ever new addresses of one /64 share one budget (as VerifyEmail's
/// guesses and FinishPasskeyRegistration's do).
#[tokio::test]
async fn failed_passkey_logins_from_one_ipv6_64_share_one_budget() {
    use crate::passkey_kit::{SoftKey, to_struct};

    let app = spawn_app_with(|c| {
        c.trusted_proxy_header = Some(http::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    let (_, tokens) = app.signed_in_user().await;
    let mut client = app.client.clone();
    // A key whose credential authd never stored: every answer it gives is
    // well formed and refused.
    let started = client
        .start_passkey_registration(with_bearer(
            pb::StartPasskeyRegistrationRequest::default(),
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut stranger = SoftKey::new();
    stranger.create(started.options.as_ref().unwrap());
    let mut refused = 0;
    let throttled = loop {
        let started = client
            .start_passkey_login(pb::StartPasskeyLoginRequest::default())
            .await
            .unwrap()
            .into_inner();
        let assertion = stranger.get(started.options.as_ref().unwrap());
        let mut request = tonic::Request::new(pb::FinishPasskeyLoginRequest {
            ceremony_id: started.ceremony_id,
            credential: Some(to_struct(assertion)),
        });
        request.metadata_mut().insert(
            "x-forwarded-for",
            format!("2001:db8:7:9::{:x}", refused + 1).parse().unwrap(),
        );
        match client.finish_passkey_login(request).await {
            Err(s) if s.code() == Code::ResourceExhausted => break s,
            other => assert_error(other, Code::Unauthenticated, "PASSKEY_INVALID"),
        };
        refused += 1;
        // Ten free failures, the eleventh starts the wait (a slow machine
        // may let a wait pass before the next answer arrives).
        assert!(
            refused <= 15,
            "{refused} failures from one /64 and not throttled: each address had a budget of its own"
        );
    };
    assert_eq!(reason(&throttled), "THROTTLED");
    assert!(refused >= 11, "throttled after {refused} failures");
}
