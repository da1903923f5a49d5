//! Input built to break parsers and queries: SQL metacharacters, LIKE
//! wildcards, NUL bytes, Unicode normalisation and case tricks, invisible
//! characters, racing duplicates, and sizes far past every limit.

use std::time::{Duration, Instant};

use authd::pb::auth::v1 as pb;
use tonic::Code;
use unicode_normalization::UnicodeNormalization as _;

use super::{HEAVY_ARGON2, fresh_password, one_hash};
use crate::helpers::*;
use crate::register::futures_join_all;

fn request(email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: password.into(),
        ..Default::default()
    }
}

fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

async fn user_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn sql_injection_in_the_login_is_an_ordinary_failed_login() {
    let app = spawn_app().await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    for login in [
        "' OR '1'='1".to_owned(),
        "' OR 1=1 --".to_owned(),
        "admin'--".to_owned(),
        format!("{email}' --"),
        format!("x' OR email='{email}"),
        "x'--@example.com".to_owned(),
        "\"; SELECT pg_sleep(10); --".to_owned(),
    ] {
        let started = Instant::now();
        assert_error(
            app.login(&login, PASSWORD).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{login}: no pg_sleep ran"
        );
    }
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn like_wildcards_in_the_login_match_no_account() {
    let app = spawn_app().await;
    let t = tag();
    app.register(&format!("bob.{t}@example.com"), PASSWORD).await;
    let mut named = request(&fresh_email(), PASSWORD);
    named.username = format!("bob_{t}");
    app.client.clone().register(named).await.unwrap();
    for login in [
        "%@example.com".to_owned(),
        format!("bob.{t}@%"),
        format!("_ob.{t}@example.com"),
        format!("bob.{t}@example.co_"),
        "%".to_owned(),
        format!("bob%{t}"),
        format!("bob__{}", &t[1..]),
        "_%_".to_owned(),
    ] {
        assert_error(
            app.login(&login, PASSWORD).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
}

#[tokio::test]
async fn sql_looking_password_round_trips_verbatim() {
    let app = spawn_app().await;
    let email = fresh_email();
    let password = format!("'); DROP TABLE users; -- {}", tag());
    app.register(&email, &password).await;
    app.login(&email, &password).await.unwrap();
    assert_error(
        app.login(&email, "'); DROP TABLE users; --").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn sql_looking_profile_fields_are_stored_verbatim() {
    let app = spawn_app().await;
    let full_name = "Robert'); DROP TABLE users;-- \\x00 $$ E'\\\\'";
    let image_url = "https://example.com/a.png?q=';DELETE%20FROM%20sessions;--";
    let user = app
        .register_as(pb::RegisterRequest {
            email: "o'brien+'--@example.com".into(),
            password: PASSWORD.into(),
            full_name: full_name.into(),
            image_url: image_url.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        (
            user.email.as_str(),
            user.full_name.as_str(),
            user.image_url.as_str()
        ),
        ("o'brien+'--@example.com", full_name, image_url)
    );
    let tokens = app.tokens_of("o'brien+'--@example.com").await;
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap(), user);
}

#[tokio::test]
async fn sql_metacharacters_in_a_username_are_refused() {
    let app = spawn_app().await;
    for username in ["bob';--", "bob\"", "bob;drop", "bob%", "bo b", "bob\\", "bob/*"] {
        let mut r = request(&fresh_email(), PASSWORD);
        r.username = username.into();
        let status = app.client.clone().register(r).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{username}");
        assert_eq!(violated_fields(&status), ["username"], "{username}");
    }
    assert_eq!(user_count(&app).await, 0);
}

#[tokio::test]
async fn sql_looking_address_in_forgot_password_queues_no_mail() {
    let app = spawn_app().await;
    app.register(&fresh_email(), PASSWORD).await;
    for email in ["x'--@example.com", "' OR 1=1 --@example.com", "%@example.com"] {
        let result = app.forgot_password(email).await;
        if let Err(status) = result {
            assert_eq!(status.code(), Code::InvalidArgument, "{email}: {status:?}");
        }
    }
    app.reset_requests_resolved().await;
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE kind = 'password_reset'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn nul_bytes_in_a_login_are_an_ordinary_failed_login() {
    let app = spawn_app().await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    for login in [
        format!("{email}\0"),
        "bob\0".to_owned(),
        "\0".to_owned(),
        "bo\0b@example.com".to_owned(),
    ] {
        let status = app.login(&login, PASSWORD).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::Unauthenticated | Code::InvalidArgument),
            "{login:?}: {status:?}"
        );
    }
}

#[tokio::test]
async fn nul_and_control_bytes_in_register_fields_are_refused_field_by_field() {
    let app = spawn_app().await;
    let status = app
        .client
        .clone()
        .register(pb::RegisterRequest {
            email: "a\0b@example.com".into(),
            password: PASSWORD.into(),
            username: "bo\0b".into(),
            full_name: "Bob\u{0}\u{1b}[31m".into(),
            phone: "+1555\u{0}123456".into(),
            image_url: "https://example.com/\0.png".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["email", "full_name", "image_url", "phone", "username"]
    );
}

#[tokio::test]
async fn password_in_another_normalisation_form_logs_in() {
    let app = spawn_app().await;
    let email = fresh_email();
    let nfc: String = format!("Crème brûlée {} à l'œuvre", tag()).nfc().collect();
    let nfd: String = nfc.nfd().collect();
    assert_ne!(nfc, nfd);
    app.register(&email, &nfc).await;
    app.login(&email, &nfd).await.unwrap();
    app.login(&email, &nfc).await.unwrap();
}

#[tokio::test]
async fn password_in_compatibility_forms_logs_in() {
    let app = spawn_app().await;
    let email = fresh_email();
    let t = tag();
    let plain = format!("finest fish {t} 2024");
    // Ligature and full-width forms, as some keyboards and IMEs type them.
    let fancy: String = format!("ﬁnest ﬁsh {t} 2024")
        .chars()
        .map(|c| match c {
            '0'..='9' | 'a'..='z' => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap(),
            other => other,
        })
        .collect();
    assert_ne!(plain, fancy);
    app.register(&email, &fancy).await;
    app.login(&email, &plain).await.unwrap();
}

#[tokio::test]
async fn email_in_any_letter_case_is_one_account() {
    let app = spawn_app().await;
    let t = tag();
    let email = format!("Jörg.Åsa-{t}@Bücher.Example");
    let user = app.register(&email, PASSWORD).await;
    for variant in [
        email.to_lowercase(),
        email.to_uppercase(),
        format!("jÖRG.åSA-{t}@bÜCHER.eXAMPLE"),
    ] {
        let login = app.login(&variant, PASSWORD).await.unwrap();
        assert_eq!(login.user.unwrap().id, user.id, "{variant}");
        let again = app.client.clone().register(request(&variant, PASSWORD)).await;
        assert_error(again, Code::AlreadyExists, "EMAIL_TAKEN");
    }
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn email_with_invisible_characters_is_refused() {
    let app = spawn_app().await;
    let t = tag();
    app.register(&format!("bob{t}@example.com"), PASSWORD).await;
    for lookalike in [
        format!("bob{t}\u{200B}@example.com"),
        format!("b\u{200D}ob{t}@example.com"),
        format!("\u{FEFF}bob{t}@example.com"),
        format!("bob{t}\u{2060}@example.com"),
        format!("\u{202E}bob{t}@example.com"),
        format!("bob{t}\u{AD}@example.com"),
    ] {
        let status = app
            .client
            .clone()
            .register(request(&lookalike, PASSWORD))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["email"], "{lookalike:?}");
    }
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn duplicate_registrations_of_one_email_in_racing_letter_cases_make_one_account() {
    let app = spawn_app().await;
    let t = tag();
    let variants = [
        format!("åsa-{t}@example.com"),
        format!("ÅSA-{t}@EXAMPLE.COM"),
        format!("Åsa-{t}@Example.com"),
        format!("åSA-{t}@example.COM"),
    ];
    let attempts = (0..20).map(|i| {
        let mut client = app.client.clone();
        let email = variants[i % variants.len()].clone();
        async move { client.register(request(&email, PASSWORD)).await }
    });
    let results = futures_join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.into_iter().filter(Result::is_err) {
        assert_error(r, Code::AlreadyExists, "EMAIL_TAKEN");
    }
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn duplicate_registrations_of_one_username_under_a_race_make_one_account() {
    let app = spawn_app().await;
    let t = tag();
    let attempts = (0..20).map(|i| {
        let mut client = app.client.clone();
        let mut r = request(&fresh_email(), PASSWORD);
        r.username = if i % 2 == 0 {
            format!("Racer_{t}")
        } else {
            format!("rACER_{t}")
        };
        async move { client.register(r).await }
    });
    let results = futures_join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.into_iter().filter(Result::is_err) {
        assert_error(r, Code::AlreadyExists, "USERNAME_TAKEN");
    }
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn ten_thousand_character_password_is_refused_before_any_hashing() {
    let app = spawn_app_with(|c| c.argon2 = HEAVY_ARGON2).await;
    let hash = one_hash(&app).await;
    for password in ["x".repeat(10_000), "ﷺ".repeat(10_000)] {
        let started = Instant::now();
        let status = app
            .client
            .clone()
            .register(request(&fresh_email(), &password))
            .await
            .unwrap_err();
        let register = started.elapsed();
        assert_eq!(violated_fields(&status), ["password"]);

        let started = Instant::now();
        let status = app.login(&fresh_email(), &password).await.unwrap_err();
        let login = started.elapsed();
        assert_eq!(violated_fields(&status), ["password"]);

        println!("one hash {hash:?}; refused: register {register:?}, login {login:?}");
        assert!(register < hash / 4, "register {register:?} vs one hash {hash:?}");
        assert!(login < hash / 4, "login {login:?} vs one hash {hash:?}");
    }
    assert_eq!(user_count(&app).await, 0);
}

#[tokio::test]
async fn password_that_expands_past_the_limit_under_nfkc_is_refused() {
    let app = spawn_app().await;
    // 20 code points, 60 bytes; NFKC turns each into an 18-letter phrase.
    let password = "ﷺ".repeat(20);
    let status = app
        .client
        .clone()
        .register(request(&fresh_email(), &password))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["password"]);
}

#[tokio::test]
async fn one_megabyte_password_is_refused_by_the_transport() {
    let app = spawn_app().await;
    let status = app
        .login(&fresh_email(), &"p".repeat(1024 * 1024))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn overlong_fields_are_refused_field_by_field() {
    let app = spawn_app().await;
    let long = "a".repeat(10_000);
    let status = app
        .client
        .clone()
        .register(pb::RegisterRequest {
            email: format!("{long}@example.com"),
            password: fresh_password(),
            username: long.clone(),
            full_name: long.clone(),
            phone: format!("+{}", "1".repeat(10_000)),
            image_url: format!("https://example.com/{long}"),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["email", "full_name", "image_url", "phone", "username"]
    );
    let status = app.login(&long, PASSWORD).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["login"]);
    assert_eq!(user_count(&app).await, 0);
}

#[tokio::test]
async fn garbage_refresh_tokens_are_refused_without_a_lookup_error() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let well_shaped_unknown = format!("rt_{}", "A".repeat(43));
    for token in [
        "rt_".to_owned(),
        "rt_' OR 1=1 --".to_owned(),
        well_shaped_unknown,
        format!("{}\0", tokens.refresh_token),
        format!("pr_{}", &tokens.refresh_token[3..]),
        "r".repeat(10_000),
        "rt_é".repeat(20),
    ] {
        assert_error(
            app.refresh(&token).await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_INVALID",
        );
    }
    // The genuine token still works: none of that counted as a replay.
    app.refresh(&tokens.refresh_token).await.unwrap();
}
