//! The signature counter must move forward: an answer with a count already
//! passed (a copy of the authenticator, or an answer held back) is refused,
//! on any replica, and the owner is mailed.

use std::time::Duration;

use secrecy::SecretString;

use super::*;
use crate::smtp::SmtpServer;

/// Two replicas on one database, both sending mail to `smtp` (a replica
/// without SMTP would drop the notice as a development setup does).
async fn replicas_with_mail(smtp: &SmtpServer) -> (TestApp, TestApp) {
    let url = smtp.url();
    let a = spawn_app_with(|c| {
        c.smtp_url = Some(SecretString::from(url.clone()));
        c.mail_poll_interval = Duration::from_millis(100);
    })
    .await;
    let (keys, data_keys) = (a.config.signing_keys.clone(), a.config.data_keys.clone());
    let b = spawn_app_on(&a.database_url(), |c| {
        c.signing_keys = keys;
        c.data_keys = data_keys;
        c.smtp_url = Some(SecretString::from(url));
        c.mail_poll_interval = Duration::from_millis(100);
    })
    .await;
    (a, b)
}

async fn wait_for_clone_notice(smtp: &SmtpServer, to: &str) {
    smtp.wait_until(Duration::from_secs(10), |s| {
        s.received()
            .iter()
            .any(|m| m.header("subject").as_deref() == Some(PASSKEY_CLONED) && m.to.iter().any(|t| t == to))
    })
    .await;
}

#[tokio::test]
async fn an_answer_with_an_older_count_is_refused_and_the_owner_mailed() {
    let smtp = SmtpServer::start().await;
    let (a, b) = replicas_with_mail(&smtp).await;
    let mut holder = passkey_user(&a, SoftKey::new()).await;

    // Two ceremonies; the key signs the first, then the second (a higher
    // count); the second answer arrives first.
    let (earlier, earlier_answer) = answered(&a, "", &mut holder.key).await;
    let (later, later_answer) = answered(&a, &holder.email, &mut holder.key).await;
    finish_login(&a, &later, later_answer)
        .await
        .expect("the later count");
    let before = written(&a).await;
    assert_login_refused(finish_login(&b, &earlier, earlier_answer).await);
    wait_for_clone_notice(&smtp, &holder.email).await;
    assert_eq!(queued(&a, "passkey_cloned").await, 1);
    assert_eq!(
        written(&a).await,
        Written {
            mail: before.mail + 1,
            ..before
        }
    );

    // The key itself carries on.
    passkey_login(&b, &mut holder.key)
        .await
        .expect("the key's next count");
}

#[tokio::test]
async fn a_copy_of_a_key_is_refused_whichever_replica_it_reaches() {
    let smtp = SmtpServer::start().await;
    let (a, b) = replicas_with_mail(&smtp).await;
    let mut holder = passkey_user(&a, RawKey::new()).await;
    let mut copy = holder.key.clone();

    passkey_login(&a, &mut holder.key).await.expect("the original");
    let before = written(&a).await;
    assert_login_refused(passkey_login(&b, &mut copy).await);
    wait_for_clone_notice(&smtp, &holder.email).await;
    // Behind the original by more than one count: still refused.
    passkey_login(&a, &mut holder.key).await.unwrap();
    passkey_login(&a, &mut holder.key).await.unwrap();
    let before = Written {
        sessions: before.sessions + 2,
        refresh_tokens: before.refresh_tokens + 2,
        sign_counts: before.sign_counts + 2,
        mail: before.mail + 1,
        ..before
    };
    assert_login_refused(passkey_login(&a, &mut copy).await);
    assert_eq!(
        written(&a).await,
        Written {
            mail: before.mail + 1,
            ..before
        }
    );
    // As a second factor too.
    let challenge = crate::factors::challenge(&b, &holder.email).await;
    let stale = copy.sign(&json(&challenge.passkey_options), 1);
    assert_second_factor_refused(
        crate::factors::complete(
            &b,
            &challenge.mfa_token,
            pb::complete_login_request::Proof::PasskeyAssertion(to_struct(stale)),
        )
        .await,
    );
    assert_eq!(queued(&a, "passkey_cloned").await, 3);
}

/// Two copies at the same count, each answering its own ceremony on its
/// own replica at once: exactly one gets in, whichever order the replicas
/// check them in (the counter moves by one conditional UPDATE).
#[tokio::test]
async fn two_copies_racing_on_two_replicas_have_one_winner() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let holder = passkey_user(&a, RawKey::new()).await;
    for round in 1..=5u32 {
        let mut one = holder.key.clone();
        let mut other = holder.key.clone();
        one.counter = round - 1;
        other.counter = round - 1;
        let (first, first_answer) = answered(&a, "", &mut one).await;
        let (second, second_answer) = answered(&b, "", &mut other).await;
        let (x, y) = tokio::join!(
            finish_login(&a, &first, first_answer),
            finish_login(&b, &second, second_answer)
        );
        let refused: Vec<Status> = [x, y].into_iter().filter_map(Result::err).collect();
        assert_eq!(refused.len(), 1, "round {round}: {refused:?}");
        assert_login_refused(Err::<(), _>(refused[0].clone()));
        assert_eq!(queued(&a, "passkey_cloned").await, i64::from(round));
        let count: i64 = sqlx::query_scalar("SELECT sign_count FROM passkeys")
            .fetch_one(&a.db)
            .await
            .unwrap();
        assert_eq!(count, i64::from(round));
    }
}

/// Authenticators without a counter (always 0, as many synced passkeys)
/// log in again and again; one that had a counter cannot fall back to 0.
#[tokio::test]
async fn a_key_without_a_counter_logs_in_again_and_a_counter_cannot_drop_to_zero() {
    let app = spawn_app().await;
    let holder = passkey_user(&app, RawKey::new()).await;
    for _ in 0..3 {
        let started = start_login(&app, "").await;
        let answer = holder.key.sign(&json(&started.options), 0);
        finish_login(&app, &started.ceremony_id, answer)
            .await
            .expect("count 0 again");
    }
    let started = start_login(&app, "").await;
    finish_login(
        &app,
        &started.ceremony_id,
        holder.key.sign(&json(&started.options), 5),
    )
    .await
    .unwrap();
    let before = written(&app).await;
    let started = start_login(&app, "").await;
    assert_login_refused(
        finish_login(
            &app,
            &started.ceremony_id,
            holder.key.sign(&json(&started.options), 0),
        )
        .await,
    );
    assert_eq!(
        written(&app).await,
        Written {
            mail: before.mail + 1,
            ..before
        }
    );
}
