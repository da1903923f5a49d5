//! Service accounts and AdminService end to end: every RPC against a real
//! server and PostgreSQL, the credential check in front of them, two
//! replicas on one database, and the audit log.
//!
//! The helpers here are shared by the topic files below and by other
//! suites that need an admin call.

mod audit;
mod credentials;
mod reading;
mod replicas;
mod writing;

use std::time::{Duration, Instant};

use authd::pb::auth::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::Status;
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
