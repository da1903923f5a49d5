//! A credential proves its own account only: not through a user handle
//! naming another, not for a login that named another, not as another's
//! second factor; and it is registered once, to one account.

use super::*;

#[tokio::test]
async fn a_discoverable_answer_whose_user_handle_names_another_account_is_refused() {
    let app = spawn_app().await;
    let victim = passkey_user(&app, RawKey::new()).await;
    let mut attacker = passkey_user(&app, RawKey::new()).await;
    attacker.key.user_handle = victim.key.user_handle.clone();
    let before = written(&app).await;
    assert_login_refused(passkey_login(&app, &mut attacker.key).await);
    // No user handle at all: a discoverable login cannot tell whose it is.
    attacker.key.user_handle = None;
    assert_login_refused(passkey_login(&app, &mut attacker.key).await);
    assert_nothing_written(&app, &before).await;
}

#[tokio::test]
async fn a_named_login_answered_with_another_accounts_key_is_refused() {
    let app = spawn_app().await;
    let b = app.replica().await;
    let victim = passkey_user(&app, SoftKey::new()).await;
    let mut attacker = passkey_user(&app, RawKey::new()).await;
    let before = written(&app).await;
    let (ceremony, answer) = answered(&app, &victim.email, &mut attacker.key).await;
    assert_login_refused(finish_login(&b, &ceremony, answer).await);
    // Even with the victim's user handle.
    attacker.key.user_handle = Some(crate::passkey_kit::b64url(
        uuid::Uuid::parse_str(&victim.user.id).unwrap().as_bytes(),
    ));
    let (ceremony, answer) = answered(&app, &victim.email, &mut attacker.key).await;
    assert_login_refused(finish_login(&app, &ceremony, answer).await);
    assert_nothing_written(&app, &before).await;
}

#[tokio::test]
async fn another_accounts_passkey_is_no_second_factor() {
    let app = spawn_app().await;
    let victim = passkey_user(&app, SoftKey::new()).await;
    let mut attacker = passkey_user(&app, RawKey::new()).await;
    let before = written(&app).await;

    // CompleteLogin of the victim's password login.
    let challenge = crate::factors::challenge(&app, &victim.email).await;
    let answer = attacker.key.get(challenge.passkey_options.as_ref().unwrap());
    assert_second_factor_refused(
        crate::factors::complete(
            &app,
            &challenge.mfa_token,
            pb::complete_login_request::Proof::PasskeyAssertion(to_struct(answer)),
        )
        .await,
    );
    // A discoverable ceremony answered by the attacker's key, presented
    // for the victim's Login.
    let challenge = crate::factors::challenge(&app, &victim.email).await;
    let (_, answer) = answered(&app, "", &mut attacker.key).await;
    assert_second_factor_refused(
        crate::factors::complete(
            &app,
            &challenge.mfa_token,
            pb::complete_login_request::Proof::PasskeyAssertion(to_struct(answer)),
        )
        .await,
    );
    // StepUp of the victim's session with the attacker's key.
    let (_, answer) = answered(&app, "", &mut attacker.key).await;
    assert_step_up_refused(
        crate::factors::step_up(
            &app,
            &victim.tokens.access_token,
            pb::step_up_request::Proof::PasskeyAssertion(to_struct(answer)),
        )
        .await,
    );
    assert_nothing_written(&app, &before).await;
}

#[tokio::test]
async fn one_credential_is_registered_once_to_one_account() {
    let app = spawn_app().await;
    let mut holder = passkey_user(&app, RawKey::new()).await;
    let access = holder.tokens.access_token.clone();
    let (_, other) = app.signed_in_user().await;
    let before = written(&app).await;

    // The same account registering the same credential again.
    let again = start_registration(&app, &access).await.unwrap();
    let credential = holder.key.create(again.options.as_ref().unwrap());
    assert_registration_refused(
        finish_registration(&app, &access, &again.ceremony_id, credential.clone()).await,
    );
    // Another account registering it (a fresh answer to its own ceremony).
    let theirs = start_registration(&app, &other.access_token).await.unwrap();
    let planted = holder.key.clone().create(theirs.options.as_ref().unwrap());
    assert_registration_refused(
        finish_registration(&app, &other.access_token, &theirs.ceremony_id, planted).await,
    );
    // Another account replaying the holder's registration answer.
    let theirs = start_registration(&app, &other.access_token).await.unwrap();
    assert_registration_refused(
        finish_registration(&app, &other.access_token, &theirs.ceremony_id, credential).await,
    );
    assert_nothing_written(&app, &before).await;
    assert!(
        crate::factors::list_factors(&app, &other.access_token)
            .await
            .factors
            .is_empty()
    );
    assert_eq!(crate::factors::list_factors(&app, &access).await.factors.len(), 1);

    // It still logs in, as its owner.
    let done = passkey_login(&app, &mut holder.key).await.unwrap();
    assert_eq!(done.user.unwrap().id, holder.user.id);
}

/// Two accounts registering one credential at the same moment, on two
/// replicas: one gets it, the other PASSKEY_INVALID with nothing stored
/// (the unique index decides; the loser's transaction is rolled back).
#[tokio::test]
async fn two_accounts_registering_one_credential_at_once_store_it_once() {
    let a = spawn_app().await;
    let b = a.replica().await;
    for _ in 0..3 {
        let (_, first) = a.signed_in_user().await;
        let (_, second) = a.signed_in_user().await;
        let key = RawKey::new();
        let one = start_registration(&a, &first.access_token).await.unwrap();
        let other = start_registration(&b, &second.access_token).await.unwrap();
        let one_answer = key.clone().create(one.options.as_ref().unwrap());
        let other_answer = key.clone().create(other.options.as_ref().unwrap());
        let before = written(&a).await;
        let (x, y) = tokio::join!(
            finish_registration(&a, &first.access_token, &one.ceremony_id, one_answer),
            finish_registration(&b, &second.access_token, &other.ceremony_id, other_answer)
        );
        let refused: Vec<Status> = [x.map(|_| ()), y.map(|_| ())]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_registration_refused(Err::<(), _>(refused[0].clone()));
        let after = written(&a).await;
        // One passkey, one factor, its recovery codes and its notice.
        assert_eq!(
            (after.passkeys, after.factors),
            (before.passkeys + 1, before.factors + 1)
        );
        assert_eq!(after.recovery_codes, before.recovery_codes + 10);
        assert_eq!(after.mail, before.mail + 1);
    }
}

/// A stolen password-only session starts a registration while the account
/// has no factor; the owner adds one meanwhile: the finish is a sensitive
/// change now, refused as ConfirmTotp refuses it, and nothing is planted.
#[tokio::test]
async fn a_registration_started_before_the_account_got_a_factor_needs_a_fresh_one_to_finish() {
    let app = spawn_app().await;
    let (user, stolen) = app.signed_in_user().await;
    let owner = app.tokens_of(&user.email).await;
    let mut planted = RawKey::new();
    let started = start_registration(&app, &stolen.access_token).await.unwrap();
    let credential = planted.create(started.options.as_ref().unwrap());

    let mut key = SoftKey::new();
    register_passkey(&app, &owner.access_token, &mut key).await;
    let before = written(&app).await;
    crate::factors::assert_reauthentication_required(
        finish_registration(
            &app,
            &stolen.access_token,
            &started.ceremony_id,
            credential.clone(),
        )
        .await,
    );
    assert_nothing_written(&app, &before).await;
    assert_login_refused(passkey_login(&app, &mut planted).await);

    // Once the session proves a factor, the same ceremony finishes.
    let (_, answer) = answered(&app, "", &mut key).await;
    let raised = crate::factors::step_up(
        &app,
        &stolen.access_token,
        pb::step_up_request::Proof::PasskeyAssertion(to_struct(answer)),
    )
    .await
    .unwrap()
    .access_token;
    finish_registration(&app, &raised, &started.ceremony_id, credential)
        .await
        .expect("fresh now");
}
