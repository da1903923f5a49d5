//! Two replicas on one database: a key or an account changed at one is
//! seen at the other, and page tokens travel between them.

use std::time::{Duration, Instant};

use tonic::Code;

use super::*;
use crate::helpers::*;

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
