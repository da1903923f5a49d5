//! Login on an account with a factor, and CompleteLogin: the challenge, the
//! window, replays, dead tokens, and replicas racing one code.

use crate::totp::{code_at_step, safe_step};

use super::*;

/// The account's Login throttle count (absent counts as 0).
pub async fn counted_failures(app: &TestApp, user_id: &str) -> i32 {
    sqlx::query_scalar::<_, i32>("SELECT failures FROM login_throttle WHERE key = $1")
        .bind(authd::domain::ThrottleKey::account(user_id.parse().unwrap()).as_str())
        .fetch_optional(&app.db)
        .await
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test]
async fn login_answers_a_challenge_and_starts_no_session_until_completed() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let started = now_seconds();

    let response = app.login(&user.email, PASSWORD).await.unwrap();
    assert!(response.tokens.is_none(), "{response:?}");
    assert_eq!(response.user.as_ref().unwrap().id, user.user.id);
    let challenge = response.mfa_required.expect("mfa_required");
    assert!(
        challenge.mfa_token.len() >= 43,
        "256 bits at least: {}",
        challenge.mfa_token
    );
    assert_eq!(
        challenge.factors().collect::<Vec<_>>(),
        [pb::FactorKind::Totp, pb::FactorKind::RecoveryCode]
    );
    assert_near(challenge.expires_at.unwrap().seconds, started + 300, 10);
    // The password step made no session.
    assert_eq!(
        list_sessions(&app, &user.tokens.access_token)
            .await
            .unwrap()
            .len(),
        1
    );

    let completed = complete_totp(&app, &challenge.mfa_token, &user.app.code().await)
        .await
        .unwrap();
    assert_eq!(completed.user.unwrap().id, user.user.id);
    let tokens = completed.tokens.unwrap();
    assert_eq!(acr(&tokens.access_token), "aal2");
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().id, user.user.id);
    let sessions = list_sessions(&app, &user.tokens.access_token).await.unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(sessions.iter().any(|s| s.id == session_of(&tokens.access_token)));
    // The factor remembers when it last proved a login.
    let factor = list_factors(&app, &tokens.access_token).await.factors.remove(0);
    assert!(factor.created_at.is_some());
    assert_near(
        factor.last_used_at.expect("last_used_at").seconds,
        now_seconds(),
        10,
    );
}

/// A step is accepted once per factor: the step ConfirmTotp used, then a
/// step CompleteLogin used, are refused everywhere afterwards.
#[tokio::test]
async fn a_replayed_code_is_refused() {
    let app = spawn_app().await;
    let (user, before_enrolment) = app.signed_in_user().await;
    let enrolling = app.tokens_of(&user.email).await;
    let enrollment = enroll(&app, &enrolling.access_token, "").await.unwrap();
    let step = safe_step().await;
    let confirm_code = code_at_step(&enrollment.secret, step);
    confirm(
        &app,
        &enrolling.access_token,
        &enrollment.enrollment_id,
        &confirm_code,
    )
    .await
    .unwrap();

    let first = challenge(&app, &user.email).await;
    assert_error(
        complete_totp(&app, &first.mfa_token, &confirm_code).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let next_code = code_at_step(&enrollment.secret, step + 1);
    complete_totp(&app, &first.mfa_token, &next_code)
        .await
        .expect("the next step, once");

    let second = challenge(&app, &user.email).await;
    assert_error(
        complete_totp(&app, &second.mfa_token, &next_code).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_error(
        step_up_totp(&app, &before_enrolment.access_token, &next_code).await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    // The challenge survives two wrong proofs; the step after is fine.
    let later = Authenticator::new(&enrollment.secret);
    later.used(step + 1);
    complete_unthrottled(
        &app,
        &second.mfa_token,
        complete_login_request::Proof::TotpCode(later.code().await),
    )
    .await
    .expect("a later step");
}

/// One step of drift either way is accepted at CompleteLogin, two are not.
/// Both accounts confirmed with the code one step back, then wait for the
/// next step, so the steps tried here were never used.
#[tokio::test]
async fn complete_login_accepts_one_step_of_drift_and_refuses_two() {
    let app = spawn_app().await;
    let mut users = Vec::new();
    let confirmed_in = safe_step().await;
    for _ in 0..2 {
        let (user, tokens) = app.signed_in_user().await;
        let enrollment = enroll(&app, &tokens.access_token, "").await.unwrap();
        let code = code_at_step(&enrollment.secret, confirmed_in - 1);
        confirm(&app, &tokens.access_token, &enrollment.enrollment_id, &code)
            .await
            .unwrap();
        users.push((user, enrollment.secret));
    }
    let mut now = safe_step().await;
    while now <= confirmed_in {
        tokio::time::sleep(Duration::from_secs(1)).await;
        now = safe_step().await;
    }

    for ((user, secret), drift) in users.iter().zip([-1i64, 1]) {
        let challenge = challenge(&app, &user.email).await;
        let now = safe_step().await;
        let too_far = code_at_step(secret, now.checked_add_signed(2 * drift).unwrap());
        assert_error(
            complete_totp(&app, &challenge.mfa_token, &too_far).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
        let now = safe_step().await;
        let code = code_at_step(secret, now.checked_add_signed(drift).unwrap());
        let tokens = complete_totp(&app, &challenge.mfa_token, &code)
            .await
            .unwrap_or_else(|s| panic!("drift {drift}: {s:?}"))
            .tokens
            .unwrap();
        assert_eq!(acr(&tokens.access_token), "aal2");
    }
}

#[tokio::test]
async fn five_wrong_proofs_kill_the_mfa_token() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let challenge = challenge(&app, &user.email).await;
    let (right, _) = user.app.code_and_step().await;
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    for n in 1..=5 {
        let result = complete_unthrottled(
            &app,
            &challenge.mfa_token,
            complete_login_request::Proof::TotpCode(wrong.clone()),
        )
        .await;
        let status = result.expect_err("a wrong code");
        assert_eq!(status.code(), Code::Unauthenticated, "proof {n}: {status:?}");
        assert_eq!(reason(&status), "INVALID_CREDENTIALS", "proof {n}: {status:?}");
    }
    let status = complete_unthrottled(
        &app,
        &challenge.mfa_token,
        complete_login_request::Proof::TotpCode(right),
    )
    .await
    .expect_err("the right code on a dead token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "MFA_TOKEN_INVALID", "{status:?}");
    // A recovery code does not revive it either.
    assert_error(
        complete_unthrottled(
            &app,
            &challenge.mfa_token,
            complete_login_request::Proof::RecoveryCode(user.recovery_codes[0].clone()),
        )
        .await,
        Code::Unauthenticated,
        "MFA_TOKEN_INVALID",
    );
}

#[tokio::test]
async fn used_unknown_and_expired_mfa_tokens_are_invalid() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;

    let used = challenge(&app, &user.email).await;
    complete_totp(&app, &used.mfa_token, &user.app.code().await)
        .await
        .unwrap();
    assert_error(
        complete_totp(&app, &used.mfa_token, &user.app.code().await).await,
        Code::Unauthenticated,
        "MFA_TOKEN_INVALID",
    );

    for garbage in ["mfa_nothing", "x", &used.mfa_token[..used.mfa_token.len() - 1]] {
        assert_error(
            complete_totp(&app, garbage, "123456").await,
            Code::Unauthenticated,
            "MFA_TOKEN_INVALID",
        );
    }

    let expired = challenge(&app, &user.email).await;
    sqlx::query(
        "UPDATE mfa_challenges SET expires_at = now() - interval '1 second' WHERE consumed_at IS NULL",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_error(
        complete_totp(&app, &expired.mfa_token, &user.app.code().await).await,
        Code::Unauthenticated,
        "MFA_TOKEN_INVALID",
    );
}

#[tokio::test]
async fn an_empty_mfa_token_or_no_proof_is_invalid_argument() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let status = assert_error(
        complete_totp(&app, "", "123456").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["mfa_token"]);
    let challenge = challenge(&app, &user.email).await;
    assert_error(
        app.client
            .clone()
            .complete_login(pb::CompleteLoginRequest {
                mfa_token: challenge.mfa_token,
                proof: None,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
}

#[tokio::test]
async fn a_password_change_since_login_kills_the_mfa_token() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let pending = challenge(&app, &user.email).await;
    app.change_password(&user.tokens.access_token, PASSWORD, "a completely new passphrase")
        .await
        .expect("ChangePassword from a fresh aal2 session");
    assert_error(
        complete_totp(&app, &pending.mfa_token, &user.app.code().await).await,
        Code::Unauthenticated,
        "MFA_TOKEN_INVALID",
    );
}

/// The password step counts as a Login attempt until CompleteLogin
/// succeeds, which forgives it; wrong codes count like wrong passwords.
#[tokio::test]
async fn the_second_step_is_charged_on_the_login_throttle() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let id = &user.user.id;
    let pending = challenge(&app, &user.email).await;
    app.wait_for_counted_failures(id, 1).await;
    assert_error(
        complete_totp(&app, &pending.mfa_token, "000000").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.wait_for_counted_failures(id, 2).await;
    complete_totp(&app, &pending.mfa_token, &user.app.code().await)
        .await
        .unwrap();
    for _ in 0..150 {
        if counted_failures(&app, id).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the count was not forgiven: {}", counted_failures(&app, id).await);
}

/// Two replicas get the same code for two challenges at once: the step is
/// accepted once, atomically in PostgreSQL.
#[tokio::test]
async fn two_replicas_racing_one_code_let_exactly_one_win() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let user = mfa_user(&a).await;
    let on_a = challenge(&a, &user.email).await;
    let on_b = challenge(&b, &user.email).await;
    let code = user.app.code().await;
    let (x, y) = tokio::join!(
        complete_totp(&a, &on_a.mfa_token, &code),
        complete_totp(&b, &on_b.mfa_token, &code)
    );
    let lost = match (x, y) {
        (Ok(_), Err(lost)) | (Err(lost), Ok(_)) => lost,
        other => panic!("exactly one must win: {other:?}"),
    };
    assert_eq!(lost.code(), Code::Unauthenticated, "{lost:?}");
    assert_eq!(reason(&lost), "INVALID_CREDENTIALS", "{lost:?}");
}
