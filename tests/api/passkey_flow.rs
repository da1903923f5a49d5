//! The passkey path in one test, as the lead's smoke check (the topic
//! tests are under `passkeys/`).

use authd::pb::auth::v1 as pb;

use crate::helpers::{PASSWORD, fresh_email, jwt_claims, spawn_app, with_bearer};
use crate::passkey_kit::{SoftKey, passkey_login, register_passkey};

#[tokio::test]
async fn register_a_passkey_then_log_in_with_it_alone() {
    let app = spawn_app().await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let tokens = app.tokens_of(&email).await;
    let mut key = SoftKey::new();

    let factor = register_passkey(&app, &tokens.access_token, &mut key).await;
    assert_eq!(factor.kind, pb::FactorKind::Passkey as i32);
    assert_eq!(factor.name, "Test key");

    let done = passkey_login(&app, &mut key).await.unwrap();
    assert_eq!(done.user.unwrap().email, email);
    let claims = jwt_claims(&done.tokens.unwrap().access_token);
    assert_eq!(claims["acr"], "aal2");
    let amr = claims["amr"].as_array().unwrap().clone();
    assert!(amr.contains(&"user".into()), "{amr:?}");
    assert!(
        amr.contains(&"hwk".into()) || amr.contains(&"swk".into()),
        "{amr:?}"
    );

    // A password login now asks for the passkey as a second factor.
    let login = app.login(&email, PASSWORD).await.unwrap();
    let challenge = login.mfa_required.expect("mfa_required");
    assert!(challenge.factors.contains(&(pb::FactorKind::Passkey as i32)));
    let assertion = key.get(challenge.passkey_options.as_ref().unwrap());
    let completed = app
        .client
        .clone()
        .complete_login(pb::CompleteLoginRequest {
            mfa_token: challenge.mfa_token,
            proof: Some(pb::complete_login_request::Proof::PasskeyAssertion(
                crate::passkey_kit::to_struct(assertion),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let access = completed.tokens.unwrap().access_token;
    assert_eq!(jwt_claims(&access)["acr"], "aal2");

    let listed = app
        .client
        .clone()
        .list_factors(with_bearer(pb::ListFactorsRequest {}, &access))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.factors.len(), 1);
    assert!(listed.factors[0].last_used_at.is_some());
}
