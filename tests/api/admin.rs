//! Service accounts and AdminService end to end: every RPC against a real
//! server and PostgreSQL, the credential check in front of them, two
//! replicas on one database, and the audit log.

use std::time::{Duration, Instant};

use authd::pb::auth::v1 as pb;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::*;

pub const READ: &str = "users.read";
pub const WRITE: &str = "users.write";
pub const INTROSPECT: &str = "tokens.introspect";

/// Every AdminService RPC that reads.
pub const READ_RPCS: [&str; 4] = ["GetUser", "BatchGetUsers", "LookupUser", "ListUsers"];
/// Every AdminService RPC that writes.
pub const WRITE_RPCS: [&str; 4] = ["DisableUser", "EnableUser", "SetUserRoles", "RevokeUserSessions"];
/// The RPCs whose request names one account by id.
pub const BY_USER_ID: [&str; 5] = [
    "GetUser",
    "DisableUser",
    "EnableUser",
    "SetUserRoles",
    "RevokeUserSessions",
];

/// A key that may read and write accounts. (`TestApp::service_key` with an
/// existing name adds a key only when the scopes are the same, so every
/// scope set here has its own name.)
pub async fn admin_key(app: &TestApp) -> String {
    app.service_key("test-admin", &[READ, WRITE]).await
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A request with these `authorization` values (none, one, or several).
pub fn authorized<T>(message: T, authorization: &[&str]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for value in authorization {
        request
            .metadata_mut()
            .append("authorization", value.parse().unwrap());
    }
    request
}

/// Calls one AdminService RPC by name with harmless arguments about
/// `user_id`, with these `authorization` values.
pub async fn call_admin(
    app: &TestApp,
    method: &str,
    authorization: &[&str],
    user_id: &str,
) -> Result<(), Status> {
    let mut admin = app.admin();
    let user_id = user_id.to_owned();
    match method {
        "GetUser" => admin
            .get_user(authorized(pb::GetUserRequest { user_id }, authorization))
            .await
            .map(drop),
        "BatchGetUsers" => admin
            .batch_get_users(authorized(
                pb::BatchGetUsersRequest {
                    user_ids: vec![user_id],
                },
                authorization,
            ))
            .await
            .map(drop),
        "LookupUser" => admin
            .lookup_user(authorized(
                pb::LookupUserRequest {
                    email: "somebody@example.com".into(),
                    username: String::new(),
                },
                authorization,
            ))
            .await
            .map(drop),
        "ListUsers" => admin
            .list_users(authorized(pb::ListUsersRequest::default(), authorization))
            .await
            .map(drop),
        "DisableUser" => admin
            .disable_user(authorized(pb::DisableUserRequest { user_id }, authorization))
            .await
            .map(drop),
        "EnableUser" => admin
            .enable_user(authorized(pb::EnableUserRequest { user_id }, authorization))
            .await
            .map(drop),
        "SetUserRoles" => admin
            .set_user_roles(authorized(
                pb::SetUserRolesRequest {
                    user_id,
                    roles: vec!["intruder".into()],
                },
                authorization,
            ))
            .await
            .map(drop),
        "RevokeUserSessions" => admin
            .revoke_user_sessions(authorized(
                pb::RevokeUserSessionsRequest { user_id },
                authorization,
            ))
            .await
            .map(drop),
        other => panic!("AdminService has no RPC {other}"),
    }
}

pub async fn get_user(app: &TestApp, key: &str, user_id: &str) -> Result<pb::User, Status> {
    app.admin()
        .get_user(with_bearer(
            pb::GetUserRequest {
                user_id: user_id.into(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().user.expect("user"))
}

pub async fn batch_get(app: &TestApp, key: &str, user_ids: &[String]) -> Result<Vec<pb::User>, Status> {
    app.admin()
        .batch_get_users(with_bearer(
            pb::BatchGetUsersRequest {
                user_ids: user_ids.to_vec(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().users)
}

pub async fn lookup(app: &TestApp, key: &str, email: &str, username: &str) -> Result<pb::User, Status> {
    app.admin()
        .lookup_user(with_bearer(
            pb::LookupUserRequest {
                email: email.into(),
                username: username.into(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().user.expect("user"))
}

pub async fn list(
    app: &TestApp,
    key: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<pb::User>, String), Status> {
    app.admin()
        .list_users(with_bearer(
            pb::ListUsersRequest {
                page_size,
                page_token: page_token.into(),
            },
            key,
        ))
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.users, r.next_page_token)
        })
}

pub async fn disable(app: &TestApp, key: &str, user_id: &str) -> Result<pb::User, Status> {
    app.admin()
        .disable_user(with_bearer(
            pb::DisableUserRequest {
                user_id: user_id.into(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().user.expect("user"))
}

pub async fn enable(app: &TestApp, key: &str, user_id: &str) -> Result<pb::User, Status> {
    app.admin()
        .enable_user(with_bearer(
            pb::EnableUserRequest {
                user_id: user_id.into(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().user.expect("user"))
}

pub async fn set_roles(app: &TestApp, key: &str, user_id: &str, roles: &[&str]) -> Result<pb::User, Status> {
    app.admin()
        .set_user_roles(with_bearer(
            pb::SetUserRolesRequest {
                user_id: user_id.into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().user.expect("user"))
}

pub async fn revoke_sessions(app: &TestApp, key: &str, user_id: &str) -> Result<i32, Status> {
    app.admin()
        .revoke_user_sessions(with_bearer(
            pb::RevokeUserSessionsRequest {
                user_id: user_id.into(),
            },
            key,
        ))
        .await
        .map(|r| r.into_inner().revoked_count)
}

pub fn ids(users: &[pb::User]) -> Vec<String> {
    users.iter().map(|u| u.id.clone()).collect()
}

/// The `scope` metadata of a MISSING_SCOPE refusal.
pub fn missing_scope(status: &Status) -> String {
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "MISSING_SCOPE", "{status:?}");
    info.metadata.get("scope").cloned().unwrap_or_default()
}

/// Deletes one key the way `authd service-account revoke` does: a row of
/// `service_account_keys` goes, nothing tells authd but PostgreSQL.
pub async fn delete_key(app: &TestApp, key: &str) {
    let hash = Sha256::digest(key.as_bytes()).to_vec();
    let deleted = sqlx::query("DELETE FROM service_account_keys WHERE key_hash = $1")
        .bind(hash)
        .execute(&app.db)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 1, "the key was in the database");
}

/// Waits until `n` replicas on the app's database listen for change
/// notifications, so their caches are on (and a test proves the cache is
/// flushed, not merely unused).
pub async fn wait_for_listeners(app: &TestApp, n: i64) {
    for _ in 0..250 {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if listening >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} change listener(s) never connected");
}

/// Polls GetUser (of an existing account) with `key` until it is refused;
/// fails if it is still accepted after a second. (A key a replica cached
/// goes when PostgreSQL's notification arrives: milliseconds.)
pub async fn key_refused_within_a_second(app: &TestApp, key: &str, user_id: &str) -> Status {
    let started = Instant::now();
    loop {
        match get_user(app, key, user_id).await {
            Err(status) => return status,
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(1),
                "the deleted key is still accepted after 1 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn register_with_username(app: &TestApp, email: &str, username: &str) -> pb::User {
    app.register_as(pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        username: username.into(),
        ..Default::default()
    })
    .await
}

async fn outbox_rows_for(app: &TestApp, email: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM email_outbox WHERE lower(recipient) = lower($1) AND kind = 'password_reset'",
    )
    .bind(email)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

// ---------------------------------------------------------------- reading

#[tokio::test]
async fn get_user_returns_the_account_as_registered() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let got = get_user(&app, &key, &user.id).await.unwrap();
    assert_eq!(got, user);
    assert!(got.roles.is_empty());
    assert!(!got.disabled);
}

#[tokio::test]
async fn batch_get_users_keeps_the_request_order_and_leaves_unknown_ids_out() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let a = app.register(&fresh_email(), PASSWORD).await;
    let b = app.register(&fresh_email(), PASSWORD).await;
    let c = app.register(&fresh_email(), PASSWORD).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let asked = vec![c.id.clone(), unknown, a.id.clone(), c.id.clone()];
    let users = batch_get(&app, &key, &asked).await.unwrap();
    assert_eq!(
        ids(&users),
        [c.id.clone(), a.id.clone(), c.id.clone()],
        "request order, the unknown id left out, the duplicate answered twice"
    );
    assert_eq!(users[1], a);
    assert!(!ids(&users).contains(&b.id));
}

#[tokio::test]
async fn batch_get_users_takes_100_ids_and_refuses_101() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let mut hundred: Vec<String> = (0..99).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    hundred.push(user.id.clone());
    assert_eq!(
        ids(&batch_get(&app, &key, &hundred).await.unwrap()),
        std::slice::from_ref(&user.id)
    );

    hundred.push(user.id.clone());
    let status = assert_error(
        batch_get(&app, &key, &hundred).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["user_ids"]);
}

#[tokio::test]
async fn lookup_user_finds_an_account_by_email_in_any_case_or_by_username() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let email = format!("Ada.{}@Example.com", uuid::Uuid::new_v4().simple());
    let user = register_with_username(&app, &email, "ada_lovelace").await;
    let _other = app.register(&fresh_email(), PASSWORD).await;

    assert_eq!(lookup(&app, &key, &email.to_uppercase(), "").await.unwrap(), user);
    assert_eq!(lookup(&app, &key, &email.to_lowercase(), "").await.unwrap(), user);
    assert_eq!(lookup(&app, &key, "", "ada_lovelace").await.unwrap(), user);
    assert_eq!(lookup(&app, &key, "", "ADA_Lovelace").await.unwrap(), user);
}

#[tokio::test]
async fn lookup_user_needs_exactly_one_of_email_and_username() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let email = fresh_email();
    register_with_username(&app, &email, "grace").await;
    for (email, username) in [(email.as_str(), "grace"), ("", "")] {
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
async fn lookup_user_of_an_unknown_account_is_user_not_found() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    register_with_username(&app, &fresh_email(), "known").await;
    assert_error(
        lookup(&app, &key, "nobody@example.com", "").await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    assert_error(
        lookup(&app, &key, "", "unknown").await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
}

#[tokio::test]
async fn list_users_pages_through_every_account_in_creation_order() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(app.register(&fresh_email(), PASSWORD).await.id);
    }
    let (first, token1) = list(&app, &key, 3, "").await.unwrap();
    assert_eq!(ids(&first), created[0..3]);
    assert!(!token1.is_empty(), "a token after a full page with more to come");
    let (second, token2) = list(&app, &key, 3, &token1).await.unwrap();
    assert_eq!(ids(&second), created[3..6]);
    assert!(!token2.is_empty());
    let (third, token3) = list(&app, &key, 3, &token2).await.unwrap();
    assert_eq!(ids(&third), created[6..7]);
    assert_eq!(token3, "", "no token after the last page");
}

#[tokio::test]
async fn list_users_sees_every_account_once_when_one_registers_between_pages() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(app.register(&fresh_email(), PASSWORD).await.id);
    }
    let (mut seen, mut token) = list(&app, &key, 3, "").await.map(|(u, t)| (ids(&u), t)).unwrap();
    created.push(app.register(&fresh_email(), PASSWORD).await.id);
    let mut pages = 1;
    while !token.is_empty() {
        let (users, next) = list(&app, &key, 3, &token).await.unwrap();
        seen.extend(ids(&users));
        token = next;
        pages += 1;
        assert!(pages <= 4, "more pages than accounts allow");
    }
    assert_eq!(seen, created, "every account exactly once, oldest first");
}

#[tokio::test]
async fn list_users_page_size_0_means_50() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at, updated_at)
         SELECT md5(random()::text || g)::uuid, 'bulk-' || g || '@example.com', 'not a hash',
                now() + g * interval '1 millisecond', now()
           FROM generate_series(1, 55) g",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let (page, token) = list(&app, &key, 0, "").await.unwrap();
    assert_eq!(page.len(), 50);
    assert!(!token.is_empty());
    let (rest, last) = list(&app, &key, 0, &token).await.unwrap();
    assert_eq!(rest.len(), 5);
    assert_eq!(last, "");
    let (all, none) = list(&app, &key, 500, "").await.unwrap();
    assert_eq!(all.len(), 55, "500 is allowed");
    assert_eq!(none, "");
}

#[tokio::test]
async fn list_users_refuses_a_page_size_over_500_or_negative() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    for size in [501, -1, i32::MAX] {
        let status = assert_error(
            list(&app, &key, size, "").await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["page_size"], "{size}");
    }
}

#[tokio::test]
async fn list_users_refuses_a_page_token_with_one_character_changed() {
    let app = spawn_app().await;
    let key = app.service_key("reader", &[READ]).await;
    for _ in 0..3 {
        app.register(&fresh_email(), PASSWORD).await;
    }
    let (_, token) = list(&app, &key, 1, "").await.unwrap();
    let middle = token.len() / 2;
    let flipped = if &token[middle..=middle] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &token[..middle], &token[middle + 1..]);
    let status = assert_error(
        list(&app, &key, 1, &tampered).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["page_token"]);
    // The genuine token still works.
    assert_eq!(list(&app, &key, 1, &token).await.unwrap().0.len(), 1);
}

// ---------------------------------------------------------------- writing

#[tokio::test]
async fn disable_user_ends_every_session_at_once() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, first) = app.signed_in_user().await;
    let second = app.tokens_of(&user.email).await;
    for tokens in [&first, &second] {
        // Twice, so the session cache holds them.
        app.get_me(&tokens.access_token).await.unwrap();
        app.get_me(&tokens.access_token).await.unwrap();
    }
    let disabled = disable(&app, &key, &user.id).await.unwrap();
    assert!(disabled.disabled);
    assert_eq!(disabled.id, user.id);
    for tokens in [&first, &second] {
        assert_error(
            app.get_me(&tokens.access_token).await,
            Code::Unauthenticated,
            "SESSION_REVOKED",
        );
        assert_error(
            app.refresh(&tokens.refresh_token).await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_INVALID",
        );
        let answer = app.introspect(&tokens.access_token).await.unwrap();
        assert!(!answer.active, "{answer:?}");
    }
    assert!(get_user(&app, &key, &user.id).await.unwrap().disabled);
}

#[tokio::test]
async fn a_disabled_account_says_so_only_to_the_right_password() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    disable(&app, &key, &user.id).await.unwrap();
    assert_error(
        app.login(&user.email, PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
    assert_error(
        app.login(&user.email, "not the password at all").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

#[tokio::test]
async fn a_disabled_account_is_sent_no_reset_mail() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    disable(&app, &key, &user.id).await.unwrap();
    app.forgot_password(&user.email).await.unwrap();
    app.reset_requests_resolved().await;
    assert_eq!(outbox_rows_for(&app, &user.email).await, 0, "no mail queued");
    // The control: enabled again, the same request queues one.
    enable(&app, &key, &user.id).await.unwrap();
    app.forgot_password(&user.email).await.unwrap();
    app.reset_requests_resolved().await;
    assert_eq!(outbox_rows_for(&app, &user.email).await, 1);
}

#[tokio::test]
async fn enable_user_lets_the_account_log_in_but_its_ended_sessions_stay_ended() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, old) = app.signed_in_user().await;
    disable(&app, &key, &user.id).await.unwrap();
    let enabled = enable(&app, &key, &user.id).await.unwrap();
    assert!(!enabled.disabled);
    let fresh = app.tokens_of(&user.email).await;
    app.get_me(&fresh.access_token).await.unwrap();
    assert_error(
        app.get_me(&old.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    assert_error(
        app.refresh(&old.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    assert!(!get_user(&app, &key, &user.id).await.unwrap().disabled);
}

#[tokio::test]
async fn disabling_or_enabling_twice_is_ok() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    assert!(disable(&app, &key, &user.id).await.unwrap().disabled);
    assert!(disable(&app, &key, &user.id).await.unwrap().disabled);
    assert!(!enable(&app, &key, &user.id).await.unwrap().disabled);
    assert!(!enable(&app, &key, &user.id).await.unwrap().disabled);
}

#[tokio::test]
async fn set_user_roles_stores_a_sorted_set_without_duplicates() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let updated = set_roles(
        &app,
        &key,
        &user.id,
        &["billing:read", "admin", "billing:read", "a-1"],
    )
    .await
    .unwrap();
    assert_eq!(updated.roles, ["a-1", "admin", "billing:read"]);
    assert_eq!(get_user(&app, &key, &user.id).await.unwrap().roles, updated.roles);
    // An empty set removes every role.
    assert!(
        set_roles(&app, &key, &user.id, &[])
            .await
            .unwrap()
            .roles
            .is_empty()
    );
    assert!(get_user(&app, &key, &user.id).await.unwrap().roles.is_empty());
}

#[tokio::test]
async fn set_user_roles_takes_32_roles_of_64_characters_and_refuses_more() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    let long = "r".repeat(64);
    let mut most: Vec<String> = (0..31).map(|i| format!("role.{i:02}")).collect();
    most.push(long.clone());
    let most: Vec<&str> = most.iter().map(String::as_str).collect();
    assert_eq!(
        set_roles(&app, &key, &user.id, &most).await.unwrap().roles.len(),
        32
    );

    let too_many: Vec<String> = (0..33).map(|i| format!("role.{i:02}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let too_long = "r".repeat(65);
    let refused: [&[&str]; 6] = [
        &too_many,
        &["Admin"],
        &[too_long.as_str()],
        &["reader", ""],
        &["two words"],
        &["rôle"],
    ];
    for roles in refused {
        let status = assert_error(
            set_roles(&app, &key, &user.id, roles).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["roles"], "{roles:?}");
    }
    assert_eq!(
        get_user(&app, &key, &user.id).await.unwrap().roles.len(),
        32,
        "refused changes change nothing"
    );
}

#[tokio::test]
async fn new_roles_reach_the_next_login_and_refresh_but_not_tokens_already_issued() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, before) = app.signed_in_user().await;
    set_roles(&app, &key, &user.id, &["reader"]).await.unwrap();
    let reader = app.tokens_of(&user.email).await;
    assert_eq!(jwt_claims(&reader.access_token)["roles"], json!(["reader"]));

    set_roles(&app, &key, &user.id, &["reader", "editor"])
        .await
        .unwrap();
    let login = app.tokens_of(&user.email).await;
    assert_eq!(
        jwt_claims(&login.access_token)["roles"],
        json!(["editor", "reader"])
    );
    let refreshed = app.refresh(&before.refresh_token).await.unwrap();
    assert_eq!(
        jwt_claims(&refreshed.access_token)["roles"],
        json!(["editor", "reader"])
    );

    // Tokens already issued keep theirs.
    assert_eq!(jwt_claims(&reader.access_token)["roles"], json!(["reader"]));
    let old = app.introspect(&reader.access_token).await.unwrap();
    assert!(old.active);
    assert_eq!(old.roles, ["reader"]);
    let new = app.introspect(&login.access_token).await.unwrap();
    assert!(new.active);
    assert_eq!(new.roles, ["editor", "reader"]);
    // GetMe shows the account as it is now, whichever token asks.
    assert_eq!(
        app.get_me(&login.access_token).await.unwrap().roles,
        ["editor", "reader"]
    );
    assert_eq!(
        app.get_me(&reader.access_token).await.unwrap().roles,
        ["editor", "reader"]
    );
}

#[tokio::test]
async fn revoke_user_sessions_ends_every_live_session_and_counts_them() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, first) = app.signed_in_user().await;
    let sessions = [
        first,
        app.tokens_of(&user.email).await,
        app.tokens_of(&user.email).await,
    ];
    let (_, bystander) = app.signed_in_user().await;
    for tokens in &sessions {
        app.get_me(&tokens.access_token).await.unwrap();
    }
    assert_eq!(revoke_sessions(&app, &key, &user.id).await.unwrap(), 3);
    for tokens in &sessions {
        assert_error(
            app.get_me(&tokens.access_token).await,
            Code::Unauthenticated,
            "SESSION_REVOKED",
        );
        assert_error(
            app.refresh(&tokens.refresh_token).await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_INVALID",
        );
    }
    app.get_me(&bystander.access_token).await.unwrap();
    assert_eq!(
        revoke_sessions(&app, &key, &user.id).await.unwrap(),
        0,
        "none left"
    );
    // Not a ban: the account logs in again.
    app.tokens_of(&user.email).await;
}

#[tokio::test]
async fn revoke_user_sessions_counts_only_sessions_that_were_live() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    let (user, live) = app.signed_in_user().await;
    let _also_live = app.tokens_of(&user.email).await;
    let logged_out = app.tokens_of(&user.email).await;
    app.logout(&logged_out.refresh_token).await.unwrap();
    let expired = app.tokens_of(&user.email).await;
    let expired_sid = session_of(&expired.access_token);
    sqlx::query("UPDATE sessions SET idle_expires_at = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&expired_sid)
        .execute(&app.db)
        .await
        .unwrap();
    assert_error(
        app.get_me(&expired.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    app.get_me(&live.access_token).await.unwrap();
    assert_eq!(
        revoke_sessions(&app, &key, &user.id).await.unwrap(),
        2,
        "the logged-out and the idle-expired session were not live"
    );
}

#[tokio::test]
async fn every_rpc_taking_a_user_id_answers_user_not_found_for_an_unknown_one() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    app.register(&fresh_email(), PASSWORD).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for method in BY_USER_ID {
        let result = call_admin(&app, method, &[&bearer(&key)], &unknown).await;
        let status = result.expect_err(method);
        assert_eq!(status.code(), Code::NotFound, "{method}: {status:?}");
        assert_eq!(reason(&status), "USER_NOT_FOUND", "{method}");
    }
}

#[tokio::test]
async fn every_rpc_taking_a_user_id_refuses_one_that_is_not_a_uuid() {
    let app = spawn_app().await;
    let key = admin_key(&app).await;
    for bad in ["not-a-uuid", "", "00000000-0000-0000-0000-00000000000g"] {
        for method in BY_USER_ID {
            let status = call_admin(&app, method, &[&bearer(&key)], bad)
                .await
                .expect_err(method);
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} {bad:?}: {status:?}"
            );
            assert_eq!(reason(&status), "INVALID_ARGUMENT", "{method}");
            assert_eq!(violated_fields(&status), ["user_id"], "{method} {bad:?}");
        }
        let status = assert_error(
            batch_get(&app, &key, &[bad.to_owned()]).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["user_ids"], "{bad:?}");
    }
}

// ------------------------------------------------------ the credential check

#[tokio::test]
async fn every_admin_rpc_without_authorization_is_token_missing() {
    let app = spawn_app().await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    for method in READ_RPCS.into_iter().chain(WRITE_RPCS) {
        let status = call_admin(&app, method, &[], &user.id).await.expect_err(method);
        assert_eq!(status.code(), Code::Unauthenticated, "{method}: {status:?}");
        assert_eq!(reason(&status), "TOKEN_MISSING", "{method}");
    }
}

#[tokio::test]
async fn a_key_without_the_scope_is_told_which_scope_it_lacks() {
    let app = spawn_app().await;
    let reader = app.service_key("reader", &[READ]).await;
    let writer = app.service_key("writer", &[WRITE]).await;
    let introspector = app.service_key("introspector", &[INTROSPECT]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;

    let status = assert_error(
        disable(&app, &reader, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "users.write");
    assert!(!get_user(&app, &reader, &user.id).await.unwrap().disabled);

    let status = assert_error(
        get_user(&app, &writer, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(
        missing_scope(&status),
        "users.read",
        "writing does not imply reading"
    );

    let status = assert_error(
        get_user(&app, &introspector, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "users.read");
}

#[tokio::test]
async fn a_users_access_token_is_refused_by_every_admin_rpc_with_missing_scope() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let authorization = bearer(&tokens.access_token);
    for (method, scope) in READ_RPCS
        .into_iter()
        .map(|m| (m, "users.read"))
        .chain(WRITE_RPCS.into_iter().map(|m| (m, "users.write")))
    {
        let status = call_admin(&app, method, &[&authorization], &user.id)
            .await
            .expect_err(method);
        assert_eq!(status.code(), Code::PermissionDenied, "{method}: {status:?}");
        assert_eq!(missing_scope(&status), scope, "{method}");
    }
    // Nothing happened to the account, and its session is live.
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap(), user);
}

#[tokio::test]
async fn introspect_token_answers_only_a_key_with_the_introspect_scope() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let request = || pb::IntrospectTokenRequest {
        access_token: tokens.access_token.clone(),
    };
    let mut client = app.client.clone();

    assert_error(
        client.introspect_token(request()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    let status = assert_error(
        client
            .introspect_token(with_bearer(request(), &tokens.access_token))
            .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "tokens.introspect");
    let reader = app.service_key("reader", &[READ, WRITE]).await;
    let status = assert_error(
        client.introspect_token(with_bearer(request(), &reader)).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(missing_scope(&status), "tokens.introspect");

    let introspector = app.service_key("introspector", &[INTROSPECT]).await;
    let answer = client
        .introspect_token(with_bearer(request(), &introspector))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
    assert_eq!(answer.user_id, user.id);
    assert!(!answer.disabled);
}

#[tokio::test]
async fn a_key_deleted_from_the_database_is_refused_at_once() {
    let app = spawn_app().await;
    wait_for_listeners(&app, 1).await;
    let key = app.service_key("doomed", &[READ]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    // Used twice, so it is cached.
    get_user(&app, &key, &user.id).await.unwrap();
    get_user(&app, &key, &user.id).await.unwrap();
    delete_key(&app, &key).await;
    let status = key_refused_within_a_second(&app, &key, &user.id).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
}

// ---------------------------------------------------------------- replicas

#[tokio::test]
async fn a_key_deleted_at_one_replica_is_refused_by_another_that_cached_it() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.database_url(), |_| {}).await;
    wait_for_listeners(&a, 2).await;
    let key = a.service_key("replicated", &[READ]).await;
    let user = a.register(&fresh_email(), PASSWORD).await;
    get_user(&b, &key, &user.id).await.unwrap();
    get_user(&b, &key, &user.id).await.unwrap();
    delete_key(&a, &key).await;
    let status = key_refused_within_a_second(&b, &key, &user.id).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    assert_error(
        get_user(&a, &key, &user.id).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

#[tokio::test]
async fn a_user_disabled_at_one_replica_is_refused_at_the_other() {
    let a = spawn_app().await;
    let b = a.replica().await;
    wait_for_listeners(&a, 2).await;
    let key = admin_key(&a).await;
    let (user, tokens) = b.signed_in_user().await;
    b.get_me(&tokens.access_token).await.unwrap();
    b.get_me(&tokens.access_token).await.unwrap(); // cached at B

    disable(&a, &key, &user.id).await.unwrap();
    let started = Instant::now();
    loop {
        match b.get_me(&tokens.access_token).await {
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert_eq!(reason(&status), "SESSION_REVOKED");
                break;
            }
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(1),
                "B still serves the disabled user's session after 1 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_error(
        b.login(&user.email, PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
    assert!(get_user(&b, &key, &user.id).await.unwrap().disabled);
}

#[tokio::test]
async fn page_tokens_from_one_replica_work_at_another() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.database_url(), |_| {}).await;
    let key = a.service_key("reader", &[READ]).await;
    let mut created = Vec::new();
    for _ in 0..4 {
        created.push(a.register(&fresh_email(), PASSWORD).await.id);
    }
    let (first, token) = list(&a, &key, 2, "").await.unwrap();
    let (second, last) = list(&b, &key, 2, &token).await.unwrap();
    assert_eq!([ids(&first), ids(&second)].concat(), created);
    assert_eq!(last, "");
}

// --------------------------------------------------------------- the audit

/// Every substring that looks like a service key: `sk_` and 43 base64url
/// characters, not inside a longer word.
pub fn key_like_strings(text: &str) -> Vec<String> {
    text.match_indices("sk_")
        .filter(|(i, _)| {
            text[..*i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        })
        .filter_map(|(i, _)| text.get(i..i + 3 + 43))
        .filter(|candidate| {
            candidate[3..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn admin_calls_are_audited_with_caller_method_and_target_but_no_key() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn_app().await;
    let name = format!("audited-{}", uuid::Uuid::new_v4().simple());
    let key = app.service_key(&name, &[READ, WRITE]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    disable(&app, &key, &user.id).await.unwrap();
    get_user(&app, &key, &user.id).await.unwrap();

    let logs = captured_logs().unwrap();
    for method in ["DisableUser", "GetUser"] {
        assert!(
            logs.lines().any(|line| line.contains("authd::audit")
                && line.contains(&name)
                && line.contains(method)
                && line.contains(&user.id)),
            "no audit line names {name}, {method} and {}",
            user.id
        );
    }
    let body = key.strip_prefix("sk_").unwrap();
    assert!(!logs.contains(body), "the key's secret part is in the log");
    // The scan finds a key where there is one...
    assert_eq!(
        key_like_strings(&format!("x=\"{key}\"")),
        std::slice::from_ref(&key)
    );
    // ...and there is none in any line of the log.
    let leaked = key_like_strings(&logs);
    assert!(leaked.is_empty(), "key material in the log: {leaked:?}");
}

/// Whether an audit line has `field` = `value` (logged quoted or not).
fn has_field(line: &str, field: &str, value: &str) -> bool {
    line.contains(&format!("{field}={value} ")) || line.contains(&format!("{field}=\"{value}\""))
}

/// The audit lines of `method` by the service account `name`.
fn audit_lines(logs: &str, name: &str, method: &str) -> Vec<String> {
    logs.lines()
        .filter(|line| line.contains("authd::audit") && line.contains(name) && line.contains(method))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn introspect_token_calls_are_audited_with_outcome_and_ids_but_no_token() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn_app().await;
    let name = format!("introspector-{}", uuid::Uuid::new_v4().simple());
    let key = app.service_key(&name, &[INTROSPECT]).await;
    let (user, tokens) = app.signed_in_user().await;
    let session_id = session_of(&tokens.access_token);
    let introspect = |token: String| {
        let mut client = app.client.clone();
        let key = key.clone();
        async move {
            client
                .introspect_token(with_bearer(
                    pb::IntrospectTokenRequest { access_token: token },
                    &key,
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(introspect(tokens.access_token.clone()).await.active);
    let garbage = format!("{}x", tokens.access_token);
    assert!(!introspect(garbage.clone()).await.active);

    let logs = captured_logs().unwrap();
    let lines = audit_lines(&logs, &name, "IntrospectToken");
    assert!(
        lines
            .iter()
            .any(|l| has_field(l, "outcome", "active") && l.contains(&user.id) && l.contains(&session_id)),
        "no audit line of the active answer naming its user and session: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| has_field(l, "outcome", "inactive")),
        "no audit line of the inactive answer: {lines:#?}"
    );
    let signature = tokens.access_token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "the access token is in the log");
}

#[tokio::test]
async fn batch_get_users_and_list_users_audit_the_ids_they_read() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn_app().await;
    let name = format!("reader-{}", uuid::Uuid::new_v4().simple());
    let key = app.service_key(&name, &[READ]).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(app.register(&fresh_email(), PASSWORD).await.id);
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let asked = vec![created[2].clone(), unknown.clone(), created[0].clone()];
    assert_eq!(batch_get(&app, &key, &asked).await.unwrap().len(), 2);
    let (page, _) = list(&app, &key, 2, "").await.unwrap();
    assert_eq!(ids(&page), created[..2]);

    let logs = captured_logs().unwrap();
    let batch = audit_lines(&logs, &name, "BatchGetUsers");
    assert!(
        batch
            .iter()
            .any(|l| l.contains(&created[2]) && l.contains(&created[0]) && !l.contains(&created[1])),
        "no BatchGetUsers audit line naming exactly the accounts read: {batch:#?}"
    );
    let listed = audit_lines(&logs, &name, "ListUsers");
    assert!(
        listed
            .iter()
            .any(|l| l.contains(&created[0]) && l.contains(&created[1]) && !l.contains(&created[2])),
        "no ListUsers audit line naming the page's accounts: {listed:#?}"
    );
}
