//! Secrets in logs and error text: every log line of a full flow (DEBUG, all
//! targets: authd, tonic, h2, sqlx, lettre) is captured and searched for the
//! passwords, tokens, hashes and reset link that flow handled.

use std::time::Duration;

use authd::pb::auth::v1 as pb;
use secrecy::SecretString;
use tonic::Code;

use super::fresh_password;
use crate::helpers::*;
use crate::smtp::SmtpServer;

const RESET_URL: &str = "https://app.example/reset-password?token={token}";

async fn password_hash(app: &TestApp, user_id: &str) -> String {
    sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1::uuid")
        .bind(user_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_flow_logs_no_password_token_hash_or_reset_link() {
    if captured_logs().is_none() {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    }
    let smtp = SmtpServer::start().await;
    let smtp_url = smtp.url();
    let app = spawn_app_with(|c| {
        c.smtp_url = Some(SecretString::from(smtp_url));
        c.reset_url = RESET_URL.into();
        c.mail_poll_interval = Duration::from_millis(100);
    })
    .await;
    let mut client = app.client.clone();
    let email = fresh_email();
    let (first, second, third) = (fresh_password(), fresh_password(), fresh_password());
    let wrong = fresh_password();
    let forged = format!("eyJhbGciOiJub25lIn0.{}.forged", uuid::Uuid::new_v4().simple());
    let mut secrets: Vec<(&str, String)> = vec![
        ("password", first.clone()),
        ("changed password", second.clone()),
        ("reset password", third.clone()),
        ("wrong password", wrong.clone()),
        ("forged bearer", forged.clone()),
    ];

    let user = app.register(&email, &first).await;
    secrets.push(("hash", password_hash(&app, &user.id).await));

    // A session whose refresh token is replayed: authd logs the reuse with
    // the session id, which shows this flow's lines were captured.
    let a = app.login(&email, &first).await.unwrap().tokens.unwrap();
    let a2 = app.refresh(&a.refresh_token).await.unwrap();
    assert_error(
        app.refresh(&a.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    let replayed_session = session_of(&a.access_token);

    let b = app.login(&email, &first).await.unwrap().tokens.unwrap();
    app.get_me(&b.access_token).await.unwrap();
    let b2 = client
        .change_password(with_bearer(
            pb::ChangePasswordRequest {
                current_password: first.clone(),
                new_password: second.clone(),
            },
            &b.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.push(("changed hash", password_hash(&app, &user.id).await));
    client
        .logout(pb::LogoutRequest {
            refresh_token: b2.refresh_token.clone(),
        })
        .await
        .unwrap();
    assert_error(
        app.login(&email, &wrong).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_error(app.get_me(&forged).await, Code::Unauthenticated, "TOKEN_INVALID");

    client
        .forgot_password(pb::ForgotPasswordRequest { email: email.clone() })
        .await
        .unwrap();
    smtp.wait_until(Duration::from_secs(15), |s| {
        s.received().iter().any(|m| m.text().contains("token=pr_"))
    })
    .await;
    let mail = smtp
        .received()
        .into_iter()
        .find(|m| m.text().contains("token=pr_"))
        .unwrap();
    let reset_token = mail.reset_token();
    client
        .reset_password(pb::ResetPasswordRequest {
            token: reset_token.clone(),
            new_password: third.clone(),
        })
        .await
        .unwrap();
    secrets.push(("reset hash", password_hash(&app, &user.id).await));
    let c = app.login(&email, &third).await.unwrap().tokens.unwrap();

    for (what, pair) in [
        ("first", &a),
        ("rotated", &a2),
        ("second", &b),
        ("changed", &b2),
        ("last", &c),
    ] {
        secrets.push((what, pair.access_token.clone()));
        secrets.push((what, pair.refresh_token.clone()));
        // A signature alone would identify a stolen token too.
        secrets.push((what, pair.access_token.rsplit('.').next().unwrap().to_owned()));
    }
    secrets.push(("reset token", reset_token.clone()));
    secrets.push(("reset link", RESET_URL.replace("{token}", &reset_token)));
    for (what, hash) in secrets.clone() {
        if hash.starts_with("$argon2") {
            // The salt and digest without the PHC framing.
            let tail = hash.rsplitn(3, '$').take(2).collect::<Vec<_>>();
            secrets.push((what, tail[0].to_owned()));
            secrets.push((what, tail[1].to_owned()));
        }
    }

    // The worker's and the reuse lines are written asynchronously.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = captured_logs().unwrap();
        if (logs.contains(&replayed_session) && logs.contains(&user.id))
            || std::time::Instant::now() > deadline
        {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        logs.contains(&replayed_session),
        "the capture holds this flow's reuse warning"
    );
    assert!(
        logs.contains(&user.id),
        "the capture holds this flow's reset line"
    );
    assert!(logs.contains("h2::"), "DEBUG lines of every target are captured");
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is long enough to be unique");
        assert!(
            !logs.contains(secret.as_str()),
            "the logs hold the {what}: {secret}"
        );
    }
}

#[tokio::test]
async fn secrets_in_the_configuration_reach_no_debug_output_or_error() {
    let mut config = authd::config::Config {
        database_url: Some(SecretString::from(
            "postgres://authd:db-s3cr3t-pw@127.0.0.1:notaport/authd".to_owned(),
        )),
        smtp_url: Some(SecretString::from("smtp://mailer:smtp-s3cr3t-pw@[::1".to_owned())),
        ..authd::config::Config::default()
    };
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");

    let err = match authd::startup::open_database(&config).await {
        Ok(_) => panic!("the URL is invalid"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!err.contains("s3cr3t"), "{err}");
    let err = match authd::mail::transport::Transport::from_url(config.smtp_url.as_ref()) {
        Ok(_) => panic!("the URL is invalid"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!err.contains("s3cr3t"), "{err}");
    config.smtp_url = None;
    assert!(!format!("{config:?}").contains("s3cr3t"));
}
