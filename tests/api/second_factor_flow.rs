//! The whole second-factor path in one test, as the lead's smoke check of
//! the use cases (the topic tests are under `factors/`).

use authd::pb::auth::v1 as pb;

use crate::helpers::{PASSWORD, fresh_email, jwt_claims, reason, spawn_app, with_bearer};

#[tokio::test]
async fn enrol_confirm_login_with_a_code_and_step_up() {
    let app = spawn_app().await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let tokens = app.tokens_of(&email).await;
    let mut client = app.client.clone();

    let enrolled = client
        .enroll_totp(with_bearer(
            pb::EnrollTotpRequest::default(),
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        enrolled.otpauth_uri.starts_with("otpauth://totp/"),
        "{}",
        enrolled.otpauth_uri
    );
    let confirmed = client
        .confirm_totp(with_bearer(
            pb::ConfirmTotpRequest {
                enrollment_id: enrolled.enrollment_id.clone(),
                code: crate::totp::code_now(&enrolled.secret),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.recovery_codes.len(), 10);

    // The session that confirmed now counts as two factors.
    let raised = app.refresh(&tokens.refresh_token).await.unwrap();
    assert_eq!(jwt_claims(&raised.access_token)["acr"], "aal2");

    let login = app.login(&email, PASSWORD).await.unwrap();
    assert!(login.tokens.is_none());
    let challenge = login.mfa_required.expect("mfa_required");
    // The code of this step was spent by ConfirmTotp: a recovery code.
    let done = client
        .complete_login(pb::CompleteLoginRequest {
            mfa_token: challenge.mfa_token.clone(),
            proof: Some(pb::complete_login_request::Proof::RecoveryCode(
                confirmed.recovery_codes[0].to_uppercase(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let other_session = done.tokens.unwrap();
    let access = other_session.access_token.clone();
    let claims = jwt_claims(&access);
    assert_eq!(claims["acr"], "aal2");
    assert_eq!(claims["amr"], serde_json::json!(["mfa", "otp", "pwd"]));

    let again = client
        .complete_login(pb::CompleteLoginRequest {
            mfa_token: challenge.mfa_token,
            proof: Some(pb::complete_login_request::Proof::RecoveryCode(
                confirmed.recovery_codes[1].clone(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&again), "MFA_TOKEN_INVALID");

    let me = client
        .get_me(with_bearer(pb::GetMeRequest {}, &access))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.assurance.unwrap().acr, "aal2");

    let listed = client
        .list_factors(with_bearer(pb::ListFactorsRequest {}, &access))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((listed.factors.len(), listed.recovery_codes_left), (1, 9));

    // A password-only token of this account may not change the address.
    let stale = client
        .change_email(with_bearer(
            pb::ChangeEmailRequest {
                new_email: fresh_email(),
                current_password: PASSWORD.into(),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&stale), "REAUTHENTICATION_REQUIRED");
    let stepped = client
        .step_up(with_bearer(
            pb::StepUpRequest {
                proof: Some(pb::step_up_request::Proof::RecoveryCode(
                    confirmed.recovery_codes[2].clone(),
                )),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .change_email(with_bearer(
            pb::ChangeEmailRequest {
                new_email: fresh_email(),
                current_password: PASSWORD.into(),
            },
            &stepped.access_token,
        ))
        .await
        .unwrap();

    // Removing the factor lowers the account's other sessions to what the
    // password proved; the session that removed it keeps its fresh proof.
    let factor_id = listed.factors[0].id.clone();
    client
        .remove_factor(with_bearer(
            pb::RemoveFactorRequest { factor_id },
            &stepped.access_token,
        ))
        .await
        .unwrap();
    let lowered = app.refresh(&other_session.refresh_token).await.unwrap();
    assert_eq!(jwt_claims(&lowered.access_token)["acr"], "aal1");
    assert_eq!(
        jwt_claims(&lowered.access_token)["amr"],
        serde_json::json!(["pwd"])
    );
    let kept = app.refresh(&raised.refresh_token).await.unwrap();
    assert_eq!(jwt_claims(&kept.access_token)["acr"], "aal2");
    let login = app.login(&email, PASSWORD).await.unwrap();
    assert!(
        login.mfa_required.is_none() && login.tokens.is_some(),
        "no factor left"
    );
}
