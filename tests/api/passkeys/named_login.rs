//! StartPasskeyLogin with a login: the account's passkeys, or stand-ins of
//! the same shape when there is no such account or it has no passkey, so
//! the answer does not tell who has an account or a passkey.

use std::collections::BTreeSet;

use super::*;

fn allowed(options: &Option<prost_types::Struct>) -> Vec<Value> {
    json(options)["allowCredentials"].as_array().unwrap().clone()
}

fn ids(options: &Option<prost_types::Struct>) -> BTreeSet<String> {
    allowed(options)
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The options' keys and each listed credential's, without the values
/// that differ on every call.
fn shape(options: &Option<prost_types::Struct>) -> (BTreeSet<String>, Vec<BTreeSet<String>>) {
    let options = json(options);
    let keys = options.as_object().unwrap().keys().cloned().collect();
    let listed = options["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_object().unwrap().keys().cloned().collect())
        .collect();
    (keys, listed)
}

#[tokio::test]
async fn a_named_login_lists_the_accounts_passkeys() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let mut key = SoftKey::new();
    register_passkey(&app, &tokens.access_token, &mut key).await;
    let fresh = app.refresh(&tokens.refresh_token).await.unwrap();
    register_passkey(&app, &fresh.access_token, &mut key).await;
    let registered: BTreeSet<String> = key.credentials.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(registered.len(), 2);

    let started = start_login(&app, &user.email).await;
    assert_eq!(ids(&started.options), registered);
    assert_eq!(json(&started.options)["userVerification"], "required");
    // Any letter case of the address, and the username, name the account.
    let upper = start_login(&app, &user.email.to_uppercase()).await;
    assert_eq!(ids(&upper.options), registered);
    let answer = key.get(upper.options.as_ref().unwrap());
    let done = finish_login(&app, &upper.ceremony_id, answer).await.unwrap();
    assert_eq!(done.user.unwrap().id, user.id);
}

#[tokio::test]
async fn unknown_accounts_and_accounts_without_passkeys_look_like_accounts_with_some() {
    let app = spawn_app().await;
    let b = app.replica().await;
    let holder = passkey_user(&app, SoftKey::new()).await;
    let (without, _) = app.signed_in_user().await;
    let unknown = fresh_email();

    let real = start_login(&app, &holder.email).await;
    for login in [&without.email, &unknown] {
        let first = start_login(&app, login).await;
        let listed = ids(&first.options);
        assert!((1..=2).contains(&listed.len()), "{listed:?}");
        for id in &listed {
            let bytes = authd::crypto::passkeys::base64url_decode(id).unwrap();
            assert!((16..=64).contains(&bytes.len()), "{id}");
        }
        assert_eq!(shape(&first.options).0, shape(&real.options).0, "{login}");
        assert_eq!(shape(&first.options).1[0], shape(&real.options).1[0], "{login}");
        // Stable: the same ids on every call and every replica, in any
        // letter case.
        assert_eq!(ids(&start_login(&app, login).await.options), listed);
        assert_eq!(ids(&start_login(&b, login).await.options), listed);
        assert_eq!(ids(&start_login(&b, &login.to_uppercase()).await.options), listed);
        assert_ne!(first.ceremony_id, start_login(&app, login).await.ceremony_id);
    }
    assert_ne!(
        ids(&start_login(&app, &without.email).await.options),
        ids(&start_login(&app, &unknown).await.options)
    );
    // Restarted replicas derive the same stand-ins (the key is shared in
    // the database, not per process).
    let c = app.replica().await;
    assert_eq!(
        ids(&start_login(&c, &unknown).await.options),
        ids(&start_login(&app, &unknown).await.options)
    );
}

#[tokio::test]
async fn a_stand_in_ceremony_cannot_be_finished() {
    let app = spawn_app().await;
    let mut other = passkey_user(&app, RawKey::new()).await;
    let (without, _) = app.signed_in_user().await;
    let before = written(&app).await;
    for login in [without.email.clone(), fresh_email()] {
        let (ceremony, answer) = answered(&app, &login, &mut other.key).await;
        assert_login_refused(finish_login(&app, &ceremony, answer).await);
    }
    assert_nothing_written(&app, &before).await;
}
