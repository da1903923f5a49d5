//! Attacks on service keys and AdminService: keys an attacker can make or
//! bend, keys used where they do not belong (and other credentials used as
//! keys), a read-only key trying to write, forged page tokens, and oversized
//! or ambiguous requests. Every refusal has its documented code and reason;
//! none is INTERNAL.

use std::time::{Duration, Instant};

use authd::pb::auth::v1 as pb;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use secrecy::SecretString;
use sha2::Sha256;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use crate::admin::{
    READ, READ_RPCS, WRITE, WRITE_RPCS, admin_key, authorized, batch_get, bearer, call_admin, delete_key,
    get_user, key_refused_within_a_second, list, lookup, missing_scope,
};
use crate::helpers::*;
use crate::metrics::caches_on;
use crate::smtp::SmtpServer;

/// Asserts a refusal as UNAUTHENTICATED TOKEN_INVALID on every AdminService
/// RPC and on IntrospectToken.
async fn assert_refused_everywhere(app: &TestApp, authorization: &[&str], user_id: &str, what: &str) {
    for method in READ_RPCS.into_iter().chain(WRITE_RPCS) {
        let status = call_admin(app, method, authorization, user_id)
            .await
            .expect_err(what);
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{what} on {method}: {status:?}"
        );
        assert_eq!(reason(&status), "TOKEN_INVALID", "{what} on {method}");
    }
    let status = app
        .client
        .clone()
        .introspect_token(authorized(
            pb::IntrospectTokenRequest {
                access_token: "x.y.z".into(),
            },
            authorization,
        ))
        .await
        .expect_err(what);
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "{what} on IntrospectToken: {status:?}"
    );
    assert_eq!(reason(&status), "TOKEN_INVALID", "{what} on IntrospectToken");
}

/// `key` with the character at `at` replaced by another base64url one.
fn with_one_character_changed(key: &str, at: usize) -> String {
    let replacement = if &key[at..=at] == "A" { "B" } else { "A" };
    format!("{}{replacement}{}", &key[..at], &key[at + 1..])
}

#[tokio::test]
async fn malformed_and_forged_service_keys_are_token_invalid() {
    // 144 refusals from one address: past the failure limit, which has a
    // test of its own.
    let app = spawn_app_with(|c| c.service_auth_failure_limit = 0).await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let body = key.strip_prefix("sk_").unwrap();
    let forged = [
        ("42 characters", format!("sk_{}", "A".repeat(42))),
        ("44 characters", format!("sk_{}", "A".repeat(44))),
        ("well-formed but never issued", format!("sk_{}", "A".repeat(43))),
        ("standard base64 alphabet", format!("sk_{}+/", "A".repeat(41))),
        ("non-base64 characters", format!("sk_{}!$", "A".repeat(41))),
        ("the prefix alone", "sk_".to_owned()),
        (
            "one character changed (middle)",
            with_one_character_changed(&key, 20),
        ),
        (
            "one character changed (last)",
            with_one_character_changed(&key, key.len() - 1),
        ),
        ("trailing garbage", format!("{key}x")),
        ("trailing padding", format!("{key}=")),
        ("trailing words", format!("{key} users.write")),
        ("two keys", format!("{key} {key}")),
        ("upper-case prefix", format!("SK_{body}")),
        ("upper-cased key", key.to_uppercase()),
        ("another prefix", format!("rt_{body}")),
        ("no prefix", body.to_owned()),
    ];
    for (what, value) in &forged {
        assert_refused_everywhere(&app, &[&bearer(value)], &user.id, what).await;
    }
    // Nothing was written on the account's behalf, and the real key works.
    let unchanged = get_user(&app, &key, &user.id).await.unwrap();
    assert_eq!(unchanged, user);
}

#[tokio::test]
async fn two_authorization_headers_are_refused_even_with_two_good_keys() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let other = app.service_key("other-admin", &[READ, WRITE]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let junk = bearer(&format!("sk_{}", "A".repeat(43)));
    for pair in [
        [bearer(&key), bearer(&other)],
        [bearer(&key), bearer(&key)],
        [junk.clone(), bearer(&key)],
        [bearer(&key), junk.clone()],
    ] {
        let pair = [pair[0].as_str(), pair[1].as_str()];
        assert_refused_everywhere(&app, &pair, &user.id, "two authorization headers").await;
    }
}

/// The scheme is read in any case (RFC 9110 §11.1), for service keys as for
/// users' tokens (`forged_tokens::authorization_header_without_the_bearer_scheme_is_refused`);
/// what must not bend is the key itself.
#[tokio::test]
async fn the_scheme_is_read_in_any_case_but_the_key_is_not() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    for scheme in ["bearer", "BEARER"] {
        let authorization = format!("{scheme} {key}");
        call_admin(&app, "GetUser", &[&authorization], &user.id)
            .await
            .unwrap_or_else(|s| panic!("{scheme}: {s:?}"));
        let forged = format!("{scheme} {}", with_one_character_changed(&key, 10));
        assert_refused_everywhere(&app, &[&forged], &user.id, &format!("{scheme}, a forged key")).await;
    }
    for value in [
        format!("Basic {key}"),
        format!("Bearer:{key}"),
        format!("Bearer{key}"),
        key.clone(),
    ] {
        assert_refused_everywhere(&app, &[&value], &user.id, &value).await;
    }
}

#[tokio::test]
async fn a_read_only_key_can_write_nothing() {
    let app = spawn_app().await;
    let reader = app.service_key("reader", &[READ]).await;
    let (user, tokens) = app.signed_in_user().await;
    for method in WRITE_RPCS {
        let status = call_admin(&app, method, &[&bearer(&reader)], &user.id)
            .await
            .expect_err(method);
        assert_eq!(status.code(), Code::PermissionDenied, "{method}: {status:?}");
        assert_eq!(missing_scope(&status), "users.write", "{method}");
    }
    let now = get_user(&app, &reader, &user.id).await.unwrap();
    assert_eq!(now, user, "not disabled, no roles, not even updated");
    app.get_me(&tokens.access_token)
        .await
        .expect("the session was not revoked");
}

#[tokio::test]
async fn a_revoked_key_is_refused_while_its_sibling_works() {
    let app = spawn_app().await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    // Two keys of one account (a rotation).
    let old = app.service_key("rotating", &[READ]).await;
    let new = app.service_key("rotating", &[READ]).await;
    get_user(&app, &old, &user.id).await.unwrap();
    get_user(&app, &new, &user.id).await.unwrap();
    delete_key(&app, &old).await;
    let status = key_refused_within_a_second(&app, &old, &user.id).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    get_user(&app, &new, &user.id).await.unwrap();

    // Revoking the whole account refuses every key of it.
    sqlx::query("DELETE FROM service_accounts WHERE name = 'rotating'")
        .execute(&app.db)
        .await
        .unwrap();
    let status = key_refused_within_a_second(&app, &new, &user.id).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
}

#[tokio::test]
async fn a_key_of_another_deployment_is_unknown_here() {
    let here = spawn_app().await;
    let elsewhere = spawn_app().await;
    let foreign = admin_key(&elsewhere).await;
    let user = here.register(&fresh_email(), PASSWORD).await;
    assert_refused_everywhere(&here, &[&bearer(&foreign)], &user.id, "a foreign key").await;
}

/// A page token of this server for the page after the first of three users.
async fn genuine_page_token(app: &TestApp, key: &str) -> String {
    for _ in 0..3 {
        app.register(&fresh_email(), PASSWORD).await;
    }
    let (_, token) = list(app, key, 1, "").await.unwrap();
    assert!(!token.is_empty());
    token
}

#[track_caller]
fn assert_page_token_refused(result: Result<(Vec<pb::User>, String), Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert_eq!(reason(&status), "INVALID_ARGUMENT", "{what}");
    assert_eq!(violated_fields(&status), ["page_token"], "{what}");
}

#[tokio::test]
async fn tampered_page_tokens_are_invalid_argument() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let token = genuine_page_token(&app, &key).await;
    let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
    let (payload, _mac) = bytes.split_at(bytes.len() - 16);

    let mut attacker = Hmac::<Sha256>::new_from_slice(b"the attacker's own page-token key").unwrap();
    attacker.update(payload);
    let other_mac = [payload, &attacker.finalize().into_bytes()[..16]].concat();
    let zero_mac = [payload, &[0u8; 16]].concat();
    let mut earlier = payload.to_vec();
    earlier[..8].copy_from_slice(&0i64.to_be_bytes());
    let rewound = [earlier.as_slice(), &bytes[bytes.len() - 16..]].concat();

    let tampered = [
        ("truncated by one", token[..token.len() - 1].to_owned()),
        ("truncated by half", token[..token.len() / 2].to_owned()),
        ("extended by one", format!("{token}A")),
        ("extended by three bytes", format!("{token}AAAA")),
        ("re-encoded with another MAC", URL_SAFE_NO_PAD.encode(&other_mac)),
        ("re-encoded with a zero MAC", URL_SAFE_NO_PAD.encode(&zero_mac)),
        ("position moved, MAC kept", URL_SAFE_NO_PAD.encode(&rewound)),
        ("payload without a MAC", URL_SAFE_NO_PAD.encode(payload)),
        ("standard base64 with padding", STANDARD.encode(&bytes)),
        ("not base64", "not a page token!".to_owned()),
        ("10 KB of base64", "A".repeat(10_000)),
    ];
    for (what, forged) in &tampered {
        assert_page_token_refused(list(&app, &key, 1, forged).await, what);
    }
    for at in 0..token.len() {
        let forged = with_one_character_changed(&token, at);
        assert_page_token_refused(
            list(&app, &key, 1, &forged).await,
            &format!("character {at} changed"),
        );
    }
    // The genuine token still works.
    assert_eq!(list(&app, &key, 1, &token).await.unwrap().0.len(), 1);
}

#[tokio::test]
async fn a_page_token_from_another_deployment_is_invalid_argument() {
    let here = spawn_app().await;
    let elsewhere = spawn_app().await;
    let here_key = here.service_key("reader", &[READ]).await;
    let elsewhere_key = elsewhere.service_key("reader", &[READ]).await;
    for _ in 0..3 {
        here.register(&fresh_email(), PASSWORD).await;
    }
    let foreign = genuine_page_token(&elsewhere, &elsewhere_key).await;
    assert_page_token_refused(list(&here, &here_key, 1, &foreign).await, "a foreign page token");
}

#[tokio::test]
async fn ten_thousand_ids_in_batch_get_users_are_refused_without_internal() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let ids: Vec<String> = (0..10_000).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let status = batch_get(&app, &key, &ids).await.expect_err("10 000 ids");
    match status.code() {
        Code::OutOfRange => assert_eq!(reason(&status), "MESSAGE_TOO_LARGE", "{status:?}"),
        Code::InvalidArgument => assert_eq!(reason(&status), "INVALID_ARGUMENT", "{status:?}"),
        other => panic!("10 000 ids answered {other:?}: {status:?}"),
    }
    // The server is none the worse for it.
    get_user(&app, &key, &user.id).await.unwrap();
}

#[tokio::test]
async fn lookup_user_with_both_neither_or_blank_fields_is_invalid_argument() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    for (email, username) in [
        (user.email.as_str(), "someone"),
        ("", ""),
        ("   ", "\t"),
        (user.email.as_str(), " x "),
    ] {
        let status = assert_error(
            lookup(&app, &key, email, username).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(
            violated_fields(&status),
            ["email", "username"],
            "{email:?} {username:?}"
        );
    }
}

#[tokio::test]
async fn lookup_user_takes_wildcards_and_quotes_literally() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    app.register_as(pb::RegisterRequest {
        email: "target@example.com".into(),
        password: PASSWORD.into(),
        username: "target".into(),
        ..Default::default()
    })
    .await;
    for (email, username) in [
        ("%@example.com", ""),
        ("t_rget@example.com", ""),
        ("' OR '1'='1@example.com", ""),
        ("", "t_rget"),
        ("", "targe%"),
        ("", "' OR 1=1 --"),
    ] {
        let status = lookup(&app, &key, email, username)
            .await
            .expect_err("no account matches a pattern");
        match status.code() {
            Code::NotFound => assert_eq!(reason(&status), "USER_NOT_FOUND"),
            Code::InvalidArgument => assert_eq!(reason(&status), "INVALID_ARGUMENT"),
            other => panic!("{email:?} {username:?} answered {other:?}: {status:?}"),
        }
    }
}

#[tokio::test]
async fn a_service_key_is_not_a_users_bearer() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    assert_error(app.get_me(&key).await, Code::Unauthenticated, "TOKEN_INVALID");
    assert_error(
        app.change_password(&key, PASSWORD, "another long passphrase here")
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

#[tokio::test]
async fn a_users_refresh_token_is_not_a_service_key() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let refresh_token = tokens.refresh_token.clone();
    assert!(refresh_token.starts_with("rt_"));
    assert_refused_everywhere(&app, &[&bearer(&refresh_token)], &user.id, "a refresh token").await;
    // Glued onto the key prefix, it is still no key.
    let glued = format!("sk_{}", refresh_token.strip_prefix("rt_").unwrap());
    assert_refused_everywhere(&app, &[&bearer(&glued)], &user.id, "a refresh token as sk_").await;
    // And the refresh token itself is untouched.
    app.refresh(&refresh_token).await.unwrap();
}

#[tokio::test]
async fn a_password_reset_token_is_not_a_service_key() {
    let smtp = SmtpServer::start().await;
    let smtp_url = smtp.url();
    let app = spawn_app_with(|c| {
        c.smtp_url = Some(SecretString::from(smtp_url));
        c.reset_url = "https://app.example/reset?token={token}".into();
        c.mail_poll_interval = Duration::from_millis(100);
    })
    .await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    app.forgot_password(&user.email).await.unwrap();
    // Register's verification mail may come first.
    let is_reset = |m: &crate::smtp::ReceivedMail| m.text().contains("token=pr_");
    smtp.wait_until(Duration::from_secs(15), |s| s.received().iter().any(is_reset))
        .await;
    let reset_token = smtp.received().into_iter().find(is_reset).unwrap().reset_token();
    assert!(reset_token.starts_with("pr_"), "{reset_token}");
    assert_refused_everywhere(&app, &[&bearer(&reset_token)], &user.id, "a reset token").await;
    let glued = format!("sk_{}", reset_token.strip_prefix("pr_").unwrap());
    assert_refused_everywhere(&app, &[&bearer(&glued)], &user.id, "a reset token as sk_").await;
}

#[tokio::test]
async fn a_deleted_read_write_key_is_refused_by_every_rpc() {
    // Whatever the account could once do, a deleted key does nothing.
    let app = spawn_app().await;
    let key = app.service_key("read-write", &[READ, WRITE]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    delete_key(&app, &key).await;
    assert_refused_everywhere(&app, &[&bearer(&key)], &user.id, "a deleted key").await;
}

/// A user who learns of their ban logs in while it is being applied: the
/// Login read the account before DisableUser committed and starts its
/// session after DisableUser ended every session. A disabled account has
/// no live session (the proto's `User.disabled`), so that session must not
/// serve.
#[tokio::test]
async fn a_login_racing_disable_user_gets_no_live_session() {
    let app = spawn_app_with(|c| c.argon2 = super::HEAVY_ARGON2).await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let mut client = app.client.clone();
    let login = pb::LoginRequest {
        login: user.email.clone(),
        password: PASSWORD.into(),
    };
    let racing = tokio::spawn(async move { client.login(login).await });
    // The Login charges the account's throttle row right before it hashes
    // (the better part of a second with these parameters): from then on it
    // has read the account.
    let throttle_key = authd::domain::ThrottleKey::account(user.id.parse().unwrap())
        .as_str()
        .to_owned();
    let started = Instant::now();
    loop {
        let charged: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM login_throttle WHERE key = $1)")
            .bind(&throttle_key)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if charged {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the Login never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    crate::admin::disable(&app, &key, &user.id).await.unwrap();
    match racing.await.unwrap() {
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert_eq!(reason(&status), "ACCOUNT_DISABLED");
        }
        Ok(answer) => {
            let tokens = answer.into_inner().tokens.unwrap();
            assert_error(
                app.get_me(&tokens.access_token).await,
                Code::Unauthenticated,
                "SESSION_REVOKED",
            );
            let introspected = app.introspect(&tokens.access_token).await.unwrap();
            assert!(!introspected.active, "{introspected:?}");
            assert_error(
                app.refresh(&tokens.refresh_token).await,
                Code::Unauthenticated,
                "REFRESH_TOKEN_INVALID",
            );
        }
    }
}

// ------------------------------------------- a key revoked while it streams

const WATCH: &str = "revocations.watch";
/// How soon a stream must end once its key is revoked: the notification
/// takes milliseconds; without it the periodic re-check takes a second.
const STREAM_END_BOUND: Duration = Duration::from_secs(2);

/// A WatchRevocations stream opened with `key`, past its first message (the
/// cursor), so the call was accepted before anything is revoked.
async fn open_watch(app: &TestApp, key: &str) -> tonic::Streaming<pb::WatchRevocationsResponse> {
    let mut stream = app
        .admin()
        // From now (every field at its default).
        .watch_revocations(with_bearer(pb::WatchRevocationsRequest::default(), key))
        .await
        .expect("the stream opens")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the cursor within 10 s")
        .expect("the cursor")
        .expect("the stream is open");
    stream
}

/// The status that ends `stream` within `bound`; panics if it is still open
/// then, or ends without an error.
async fn ended_within(
    stream: &mut tonic::Streaming<pb::WatchRevocationsResponse>,
    bound: Duration,
    what: &str,
) -> Status {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("{what}: the stream is still open {bound:?} after the revocation"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("{what}: the stream ended without a status"),
            Ok(Err(status)) => return status,
        }
    }
}

/// The id of `key`'s row, as `authd service-account list` shows it.
async fn key_id_of(app: &TestApp, key: &str) -> uuid::Uuid {
    use sha2::Digest as _;
    sqlx::query_scalar("SELECT id FROM service_account_keys WHERE key_hash = $1")
        .bind(sha2::Sha256::digest(key.as_bytes()).to_vec())
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Ends a session, so that a revocation event is written.
async fn log_a_session_out(app: &TestApp) {
    let (_, tokens) = app.signed_in_user().await;
    app.logout(&tokens.refresh_token).await.unwrap();
}

#[track_caller]
fn assert_revoked_key_status(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(reason(status), "TOKEN_INVALID", "{what}");
}

#[tokio::test]
async fn a_watch_stream_ends_when_its_key_or_its_account_is_revoked() {
    let app = spawn_app().await;
    crate::admin::wait_for_listeners(&app, 1).await;
    let name = "leaky-watcher";
    let first = app.service_key(name, &[WATCH]).await;
    let second = app.service_key(name, &[WATCH]).await;
    let mut first_stream = open_watch(&app, &first).await;
    let mut second_stream = open_watch(&app, &second).await;

    // `authd service-account revoke leaky-watcher --key-id …`
    let key_id = key_id_of(&app, &first).await;
    assert!(
        authd::db::service_accounts::delete_key(&app.db, name, key_id)
            .await
            .unwrap()
    );
    let status = ended_within(&mut first_stream, STREAM_END_BOUND, "the revoked key").await;
    assert_revoked_key_status(&status, "the revoked key");

    // The sibling key's stream goes on delivering events.
    log_a_session_out(&app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, second_stream.message())
            .await
            .expect("an event on the sibling's stream")
            .expect("the sibling's stream goes on")
            .expect("the sibling's stream goes on");
        if message.kind() == pb::RevocationKind::SessionEnded {
            break;
        }
    }

    // `authd service-account revoke leaky-watcher`
    assert!(
        authd::db::service_accounts::delete_account(&app.db, name)
            .await
            .unwrap()
    );
    let status = ended_within(&mut second_stream, STREAM_END_BOUND, "the revoked account").await;
    assert_revoked_key_status(&status, "the revoked account");
}

/// Scopes change only in the database (the CLI refuses to change them), but
/// a stream must not outlive the scope it was opened with either.
#[tokio::test]
async fn a_watch_stream_ends_when_its_account_loses_the_scope() {
    let app = spawn_app().await;
    crate::admin::wait_for_listeners(&app, 1).await;
    let key = app.service_key("narrowed-watcher", &[WATCH]).await;
    let mut stream = open_watch(&app, &key).await;
    sqlx::query("UPDATE service_accounts SET scopes = '{users.read}' WHERE name = 'narrowed-watcher'")
        .execute(&app.db)
        .await
        .unwrap();
    let status = ended_within(&mut stream, STREAM_END_BOUND, "the narrowed account").await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(missing_scope(&status), WATCH);
}

#[tokio::test]
async fn a_key_revoked_ends_its_streams_on_every_replica() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.database_url(), |_| {}).await;
    crate::admin::wait_for_listeners(&a, 2).await;
    let key = a.service_key("replicated-watcher", &[WATCH]).await;
    let mut at_a = open_watch(&a, &key).await;
    let mut at_b = open_watch(&b, &key).await;
    assert!(
        authd::db::service_accounts::delete_account(&a.db, "replicated-watcher")
            .await
            .unwrap()
    );
    let status = ended_within(&mut at_b, STREAM_END_BOUND, "the other replica").await;
    assert_revoked_key_status(&status, "the other replica");
    let status = ended_within(&mut at_a, STREAM_END_BOUND, "this replica").await;
    assert_revoked_key_status(&status, "this replica");
}

/// With the caches off and the revocation's notification lost (the
/// trigger switched off, as a dropped notification would look), the stream
/// still ends: it re-reads its key while it cannot trust notifications.
#[tokio::test]
async fn a_revoked_key_s_stream_ends_without_the_notification_while_caches_are_off() {
    let app = spawn_app_with(|c| c.session_cache = false).await;
    let key = app.service_key("unnotified-watcher", &[WATCH]).await;
    let mut stream = open_watch(&app, &key).await;
    sqlx::query("ALTER TABLE service_account_keys DISABLE TRIGGER USER")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE service_accounts DISABLE TRIGGER USER")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(
        authd::db::service_accounts::delete_account(&app.db, "unnotified-watcher")
            .await
            .unwrap()
    );
    let status = ended_within(&mut stream, STREAM_END_BOUND, "no notification").await;
    assert_revoked_key_status(&status, "no notification");
}

// ------------------------------------------------- made-up keys and the pool

/// A key in the right format that was never stored.
fn made_up_key() -> String {
    authd::crypto::opaque::NewToken::generate(authd::crypto::opaque::TokenKind::ServiceKey)
        .unwrap()
        .expose()
        .to_owned()
}

/// Service-key checks that read the database so far, by result.
async fn key_lookups(app: &TestApp, result: &str) -> f64 {
    let page = crate::metrics::scrape(app, None).await;
    crate::metrics::value(
        &page.body,
        &format!("authd_service_key_lookups_total{{result=\"{result}\"}}"),
    )
    .unwrap_or_else(|| panic!("no lookup counter in\n{}", page.body))
}

/// GetUser with `key`, as the client at `address` (through the trusted
/// proxy header).
pub(super) async fn get_user_from(
    app: &TestApp,
    address: &str,
    key: &str,
    user_id: &str,
) -> Result<pb::User, Status> {
    let mut request = authorized(
        pb::GetUserRequest {
            user_id: user_id.into(),
        },
        &[&bearer(key)],
    );
    request
        .metadata_mut()
        .insert("x-forwarded-for", address.parse().unwrap());
    app.admin()
        .get_user(request)
        .await
        .map(|r| r.into_inner().user.expect("user"))
}

#[tokio::test]
async fn a_made_up_key_presented_again_and_again_reads_the_database_once() {
    let app = spawn_app_with(crate::metrics::with_metrics).await;
    caches_on(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let made_up = made_up_key();
    let before = key_lookups(&app, "unknown").await;
    for _ in 0..20 {
        assert_error(
            get_user(&app, &made_up, &user.id).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }
    let lookups = key_lookups(&app, "unknown").await - before;
    assert!(
        lookups <= 1.0,
        "20 calls with one made-up key read the database {lookups} times"
    );
}

#[tokio::test]
async fn a_key_refused_as_unknown_works_at_once_when_created_on_every_replica() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.database_url(), |_| {}).await;
    crate::admin::wait_for_listeners(&a, 2).await;
    let user = a.register(&fresh_email(), PASSWORD).await;
    let token =
        authd::crypto::opaque::NewToken::generate(authd::crypto::opaque::TokenKind::ServiceKey).unwrap();
    let key = token.expose().to_owned();
    for app in [&a, &b] {
        for _ in 0..2 {
            assert_error(
                get_user(app, &key, &user.id).await,
                Code::Unauthenticated,
                "TOKEN_INVALID",
            );
        }
    }
    // `authd service-account create late-comer --scope users.read`
    let added = authd::db::service_accounts::add_key(
        &a.db,
        "late-comer",
        &[READ.to_owned()],
        &token.hash,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(matches!(
        added,
        authd::db::service_accounts::KeyAdded::NewAccount { .. }
    ));
    for (replica, app) in [("A", &a), ("B", &b)] {
        let started = Instant::now();
        while let Err(status) = get_user(app, &key, &user.id).await {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "replica {replica} still refuses the new key after 1 s: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_client_that_fails_too_often_is_throttled_without_the_database_while_another_is_not() {
    let app = spawn_app_with(|c| {
        crate::metrics::with_metrics(c);
        c.trusted_proxy_header = Some(http::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    caches_on(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let key = app.service_key("innocent", &[READ]).await;
    let (prober, neighbour) = ("198.51.100.7", "203.0.113.9");
    // The real key is used once by anyone, so this replica holds it.
    get_user_from(&app, neighbour, &key, &user.id).await.unwrap();

    let mut failures = 0;
    let throttled = loop {
        match get_user_from(&app, prober, &made_up_key(), &user.id).await {
            Err(status) if status.code() == Code::Unauthenticated => failures += 1,
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            other => panic!("a made-up key answered {other:?}"),
        }
        assert!(
            failures <= 100,
            "100 made-up keys from one client and no throttling"
        );
    };
    assert_eq!(reason(&throttled), "THROTTLED");
    let retry = throttled.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()), "{retry:?}");

    // Further made-up keys from the prober cost no database read, but for
    // the one attempt per two seconds the limit (30 a minute) lets through.
    let before = key_lookups(&app, "unknown").await;
    let started = Instant::now();
    let mut let_through = 0.0;
    for _ in 0..20 {
        let status = get_user_from(&app, prober, &made_up_key(), &user.id)
            .await
            .expect_err("a made-up key");
        match status.code() {
            Code::ResourceExhausted => assert_eq!(reason(&status), "THROTTLED"),
            Code::Unauthenticated => let_through += 1.0,
            _ => panic!("{status:?}"),
        }
    }
    let allowed = 1.0 + (started.elapsed().as_secs_f64() / 2.0).floor();
    assert!(
        let_through <= allowed,
        "{let_through} of 20 let through, {allowed} allowed"
    );
    let lookups = key_lookups(&app, "unknown").await - before;
    assert_eq!(lookups, let_through, "a throttled client read the database");

    // Another client is not throttled: its made-up key is merely invalid,
    // and its real key works.
    assert_error(
        get_user_from(&app, neighbour, &made_up_key(), &user.id).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    get_user_from(&app, neighbour, &key, &user.id).await.unwrap();
    // A real key this replica holds in memory still works from the prober's
    // address (a shared proxy address must not lock every service out).
    get_user_from(&app, prober, &key, &user.id).await.unwrap();
}
