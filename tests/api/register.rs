use authd::pb::auth::v1 as pb;
use tonic::Code;

use crate::helpers::*;

fn request(email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: password.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn register_returns_the_new_account_without_secrets() {
    let app = spawn_app().await;
    let user = app
        .register_as(pb::RegisterRequest {
            email: "  Ada@Example.com ".into(),
            password: PASSWORD.into(),
            username: "ada_l".into(),
            full_name: "Ada Lovelace".into(),
            phone: "+44 20 7946 0958".into(),
            image_url: "https://example.com/ada.png".into(),
        })
        .await;
    assert_eq!(user.email, "Ada@Example.com");
    assert_eq!(user.username, "ada_l");
    assert_eq!(user.full_name, "Ada Lovelace");
    assert_eq!(user.phone, "+442079460958");
    assert_eq!(user.image_url, "https://example.com/ada.png");
    assert!(!user.email_verified);
    assert!(uuid::Uuid::parse_str(&user.id).is_ok());
    assert!(user.created_at.is_some() && user.updated_at.is_some());

    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1::uuid")
        .bind(&user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$"),
        "stored as an argon2id PHC string"
    );
    assert!(!stored.contains(PASSWORD));
}

#[tokio::test]
async fn register_reports_every_invalid_field_at_once() {
    let app = spawn_app().await;
    let status = app
        .client
        .clone()
        .register(pb::RegisterRequest {
            email: "not-an-email".into(),
            password: "short".into(),
            username: "x y".into(),
            full_name: "ok".into(),
            phone: "12345".into(),
            image_url: "javascript:alert(1)".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["email", "image_url", "password", "phone", "username"]
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing is written for an invalid request");
}

#[tokio::test]
async fn passwords_outside_8_to_128_characters_are_refused() {
    let app = spawn_app().await;
    for (i, bad) in ["", "1234567", &"x".repeat(129)].into_iter().enumerate() {
        let status = app
            .client
            .clone()
            .register(request(&format!("p{i}@example.com"), bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["password"]);
    }
    // 128 code points of up to four bytes each are fine.
    let long: String = (0..128u32)
        .filter_map(|i| {
            char::from_u32(if i % 2 == 0 {
                0x1F600 + i / 2
            } else {
                0x4E00 + i * 31
            })
        })
        .collect();
    assert_eq!(long.chars().count(), 128);
    app.register("long@example.com", &long).await;
}

#[tokio::test]
async fn an_email_is_one_account_whatever_its_case() {
    let app = spawn_app().await;
    app.register("bob@example.com", PASSWORD).await;
    for variant in ["bob@example.com", "BOB@example.COM", "  Bob@Example.com"] {
        let result = app.client.clone().register(request(variant, PASSWORD)).await;
        assert_error(result, Code::AlreadyExists, "EMAIL_TAKEN");
    }
}

#[tokio::test]
async fn a_username_is_unique_whatever_its_case() {
    let app = spawn_app().await;
    let mut first = request("a@example.com", PASSWORD);
    first.username = "Carol".into();
    app.client.clone().register(first).await.unwrap();
    let mut second = request("b@example.com", PASSWORD);
    second.username = "cAROL".into();
    let result = app.client.clone().register(second).await;
    assert_error(result, Code::AlreadyExists, "USERNAME_TAKEN");
}

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_email_make_one_account() {
    let app = spawn_app().await;
    let attempts = (0..20).map(|i| {
        let mut client = app.client.clone();
        // Different letter cases race too.
        let email = if i % 2 == 0 {
            "race@example.com"
        } else {
            "RACE@example.com"
        };
        async move { client.register(request(email, PASSWORD)).await }
    });
    let results = futures_join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one registration wins");
    for r in results.into_iter().filter(Result::is_err) {
        assert_error(r, Code::AlreadyExists, "EMAIL_TAKEN");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// Awaits all futures concurrently on the current task set.
pub async fn futures_join_all<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
