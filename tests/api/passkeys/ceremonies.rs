//! A ceremony is finished once, within its five minutes, by whichever
//! replica gets the answer, and only by the account that started it.

use super::*;

#[tokio::test]
async fn a_ceremony_started_on_one_replica_is_finished_on_another() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let (user, tokens) = a.signed_in_user().await;
    let mut key = SoftKey::new();

    let started = start_registration(&a, &tokens.access_token).await.unwrap();
    let credential = key.create(started.options.as_ref().unwrap());
    let done = finish_registration(&b, &tokens.access_token, &started.ceremony_id, credential)
        .await
        .expect("B finishes A's registration");
    assert_eq!(done.factor.unwrap().kind, pb::FactorKind::Passkey as i32);
    assert_eq!(ceremonies(&a).await, 0);

    let (ceremony, answer) = answered(&b, "", &mut key).await;
    let login = finish_login(&a, &ceremony, answer)
        .await
        .expect("A finishes B's login");
    assert_eq!(login.user.unwrap().id, user.id);

    // Login's second-factor challenge too.
    let challenge = crate::factors::challenge(&a, &user.email).await;
    let assertion = key.get(challenge.passkey_options.as_ref().unwrap());
    crate::factors::complete(
        &b,
        &challenge.mfa_token,
        pb::complete_login_request::Proof::PasskeyAssertion(to_struct(assertion)),
    )
    .await
    .expect("B completes A's Login");
    assert_eq!(ceremonies(&a).await, 0);
}

#[tokio::test]
async fn a_login_ceremony_is_finished_once() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let mut holder = passkey_user(&a, SoftKey::new()).await;

    let (ceremony, answer) = answered(&a, "", &mut holder.key).await;
    finish_login(&a, &ceremony, answer.clone()).await.unwrap();
    let before = written(&a).await;
    assert_ceremony_expired(finish_login(&a, &ceremony, answer.clone()).await);
    assert_ceremony_expired(finish_login(&b, &ceremony, answer).await);
    assert_nothing_written(&a, &before).await;

    // A refused answer uses the ceremony up as well: the right one after
    // it finds nothing to finish.
    let (ceremony, answer) = answered(&a, "", &mut holder.key).await;
    let mut wrong = answer.clone();
    wrong["response"]["signature"] = "AAAA".into();
    assert_login_refused(finish_login(&a, &ceremony, wrong).await);
    assert_ceremony_expired(finish_login(&b, &ceremony, answer).await);
    assert_nothing_written(&a, &before).await;
}

#[tokio::test]
async fn a_registration_ceremony_is_finished_once() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let mut key = SoftKey::new();
    let started = start_registration(&app, &tokens.access_token).await.unwrap();
    let credential = key.create(started.options.as_ref().unwrap());
    finish_registration(
        &app,
        &tokens.access_token,
        &started.ceremony_id,
        credential.clone(),
    )
    .await
    .unwrap();
    // The session's next token is fresh (the passkey proved it).
    let fresh = app.refresh(&tokens.refresh_token).await.unwrap();
    let before = written(&app).await;
    assert_ceremony_expired(
        finish_registration(&app, &fresh.access_token, &started.ceremony_id, credential).await,
    );
    assert_nothing_written(&app, &before).await;
}

#[tokio::test]
async fn unknown_expired_and_other_kinds_of_ceremony_are_ceremony_expired() {
    let app = spawn_app().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let access = holder.tokens.access_token.clone();
    let before = written(&app).await;

    // An id no Start call gave.
    let (_, answer) = answered(&app, "", &mut holder.key).await;
    let unknown = crate::passkey_kit::b64url(&[7u8; 32]);
    assert_ceremony_expired(finish_login(&app, &unknown, answer.clone()).await);
    assert_ceremony_expired(
        finish_registration(
            &app,
            &access,
            &unknown,
            SoftKey::new().create(&{ start_registration(&app, &access).await.unwrap().options.unwrap() }),
        )
        .await,
    );

    // A login's ceremony finished as a registration, and the reverse.
    let (login_ceremony, _) = answered(&app, "", &mut holder.key).await;
    let registration = start_registration(&app, &access).await.unwrap();
    let credential = SoftKey::new().create(registration.options.as_ref().unwrap());
    assert_ceremony_expired(finish_registration(&app, &access, &login_ceremony, credential).await);
    assert_ceremony_expired(finish_login(&app, &registration.ceremony_id, answer).await);

    // Expired: five minutes are over.
    let (ceremony, answer) = answered(&app, "", &mut holder.key).await;
    sqlx::query("UPDATE webauthn_ceremonies SET expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_ceremony_expired(finish_login(&app, &ceremony, answer).await);
    assert_nothing_written(&app, &before).await;
}

#[tokio::test]
async fn another_account_cannot_finish_a_registration_it_did_not_start() {
    let app = spawn_app().await;
    let (_, owner) = app.signed_in_user().await;
    let (_, other) = app.signed_in_user().await;
    let mut key = SoftKey::new();
    let started = start_registration(&app, &owner.access_token).await.unwrap();
    let credential = key.create(started.options.as_ref().unwrap());
    let before = written(&app).await;
    assert_ceremony_expired(
        finish_registration(&app, &other.access_token, &started.ceremony_id, credential).await,
    );
    assert_nothing_written(&app, &before).await;
    assert!(
        crate::factors::list_factors(&app, &other.access_token)
            .await
            .factors
            .is_empty()
    );
    assert!(
        crate::factors::list_factors(&app, &owner.access_token)
            .await
            .factors
            .is_empty()
    );
}

/// One answer sent to two replicas at once: one session, the other call
/// CEREMONY_EXPIRED.
#[tokio::test]
async fn one_answer_finished_on_two_replicas_at_once_starts_one_session() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let mut holder = passkey_user(&a, SoftKey::new()).await;
    for _ in 0..5 {
        let (ceremony, answer) = answered(&a, "", &mut holder.key).await;
        let before = written(&a).await;
        let (x, y) = tokio::join!(
            finish_login(&a, &ceremony, answer.clone()),
            finish_login(&b, &ceremony, answer)
        );
        let refused: Vec<Status> = [x.map(|_| ()), y.map(|_| ())]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_ceremony_expired(Err::<(), _>(refused[0].clone()));
        assert_eq!(written(&a).await.sessions, before.sessions + 1);
    }
}
