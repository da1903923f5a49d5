//! The RPCs that read accounts: GetUser, BatchGetUsers, LookupUser,
//! ListUsers.

use authd::pb::auth::v1 as pb;
use tonic::Code;

use super::*;
use crate::helpers::*;

async fn register_with_username(app: &TestApp, email: &str, username: &str) -> pb::User {
    app.register_as(pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        username: username.into(),
        ..Default::default()
    })
    .await
}

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
