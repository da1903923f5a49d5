//! Attacks on the second step: walking the code space across many
//! `mfa_token`s, codes and tokens of other accounts, a challenge of an
//! account disabled meanwhile, step-up with a code someone else used.

use std::time::{Duration, Instant};

use authd::pb::auth::v1::complete_login_request::Proof;
use tonic::Code;

use crate::factors::*;
use crate::helpers::*;
use crate::totp::{code_at_step, step_of, unix_now};

/// The codes the server would accept right now (±1 step), which a guess
/// must not hit by chance.
fn accepted_now(secret: &str) -> [String; 4] {
    let now = step_of(unix_now());
    [
        code_at_step(secret, now - 1),
        code_at_step(secret, now),
        code_at_step(secret, now + 1),
        code_at_step(secret, now + 2),
    ]
}

/// Guesses `000000`, `000001`, … skipping the codes that are right.
struct Guesses {
    next: u32,
}

impl Guesses {
    fn next(&mut self, secret: &str) -> String {
        loop {
            let guess = format!("{:06}", self.next);
            self.next += 1;
            if !accepted_now(secret).contains(&guess) {
                return guess;
            }
        }
    }
}

/// Walking the 10⁶ codes with fresh `mfa_token`s (a new Login whenever one
/// dies) gets a handful of guesses evaluated before the account's Login
/// throttle answers THROTTLED; an attacker who honours every RetryInfo gets
/// only a few more, as the delays double.
#[tokio::test]
async fn brute_forcing_codes_across_many_mfa_tokens_is_throttled() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let secret = user.app.secret.clone();
    let mut guesses = Guesses { next: 0 };

    // As fast as possible, ignoring the delays.
    let (mut evaluated, mut throttled, mut tokens) = (0, 0, 0);
    let mut last_throttle = None;
    for _ in 0..20 {
        let token = match app.login(&user.email, PASSWORD).await {
            Ok(r) => {
                tokens += 1;
                r.mfa_required.expect("a challenge").mfa_token
            }
            Err(s) => {
                assert_eq!(reason(&s), "THROTTLED", "{s:?}");
                retry_delay(&s);
                throttled += 1;
                last_throttle = Some(s);
                continue;
            }
        };
        for _ in 0..5 {
            match complete_totp(&app, &token, &guesses.next(&secret)).await {
                Ok(r) => panic!("a wrong guess logged in: {r:?}"),
                Err(s) if reason(&s) == "INVALID_CREDENTIALS" => evaluated += 1,
                Err(s) if reason(&s) == "THROTTLED" => {
                    assert_eq!(s.code(), Code::ResourceExhausted);
                    retry_delay(&s);
                    throttled += 1;
                    last_throttle = Some(s);
                }
                Err(s) => panic!("unexpected answer to a guess: {s:?}"),
            }
        }
    }
    println!(
        "ignoring RetryInfo: {evaluated} guesses evaluated with {tokens} mfa_tokens, \
         {throttled} calls throttled"
    );
    assert!(
        last_throttle.is_some(),
        "neither a Login nor a guess was throttled"
    );
    assert!(
        evaluated <= 6,
        "{evaluated} guesses evaluated before the throttle held"
    );

    // Gathering mfa_tokens first, then guessing with all of them: the
    // password steps already used the free attempts, so the guesses are
    // throttled at CompleteLogin itself.
    let other = mfa_user(&app).await;
    let mut gathered = Vec::new();
    for _ in 0..10 {
        match app.login(&other.email, PASSWORD).await {
            Ok(r) => gathered.push(r.mfa_required.expect("a challenge").mfa_token),
            Err(s) => assert_eq!(reason(&s), "THROTTLED", "{s:?}"),
        }
    }
    let (mut got_through, mut refused) = (0, 0);
    for token in &gathered {
        for _ in 0..5 {
            match complete_totp(&app, token, &guesses.next(&other.app.secret)).await {
                Ok(r) => panic!("a wrong guess logged in: {r:?}"),
                Err(s) if reason(&s) == "INVALID_CREDENTIALS" => got_through += 1,
                Err(s) if reason(&s) == "THROTTLED" => {
                    assert_eq!(s.code(), Code::ResourceExhausted);
                    retry_delay(&s);
                    refused += 1;
                }
                Err(s) => panic!("unexpected answer to a guess: {s:?}"),
            }
        }
    }
    println!(
        "{} mfa_tokens gathered first: {got_through} guesses evaluated, {refused} throttled",
        gathered.len()
    );
    assert!(
        refused > 0 && got_through <= 1,
        "{got_through} evaluated, {refused} throttled"
    );

    // Honouring every delay for a while.
    let started = Instant::now();
    let mut token: Option<String> = None;
    let mut patient = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let Some(current) = token.clone() else {
            match app.login(&user.email, PASSWORD).await {
                Ok(r) => token = Some(r.mfa_required.unwrap().mfa_token),
                Err(s) => tokio::time::sleep(retry_delay(&s)).await,
            }
            continue;
        };
        match complete_totp(&app, &current, &guesses.next(&secret)).await {
            Ok(r) => panic!("a wrong guess logged in: {r:?}"),
            Err(s) if reason(&s) == "INVALID_CREDENTIALS" => patient += 1,
            Err(s) if reason(&s) == "MFA_TOKEN_INVALID" => token = None,
            Err(s) if reason(&s) == "THROTTLED" => tokio::time::sleep(retry_delay(&s)).await,
            Err(s) => panic!("unexpected answer to a guess: {s:?}"),
        }
    }
    println!(
        "honouring RetryInfo: {patient} more guesses in {:?}; 3 of 10^6 codes are right at any time",
        started.elapsed()
    );
    assert!(patient <= 5, "{patient} guesses in 12 s");
}

#[tokio::test]
async fn an_mfa_token_does_not_accept_another_accounts_code() {
    let app = spawn_app().await;
    let alice = mfa_user(&app).await;
    let bob = mfa_user(&app).await;
    let alices = challenge(&app, &alice.email).await;
    let bobs_code = bob.app.code().await;
    assert_error(
        complete_totp(&app, &alices.mfa_token, &bobs_code).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_error(
        complete_recovery(&app, &alices.mfa_token, &bob.recovery_codes[0]).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // Neither of Bob's proofs was spent on Alice's challenge.
    let bobs = challenge(&app, &bob.email).await;
    complete_totp(&app, &bobs.mfa_token, &bobs_code)
        .await
        .expect("Bob's code is still his");
    let tokens = complete_totp(&app, &alices.mfa_token, &alice.app.code().await)
        .await
        .expect("Alice's own code")
        .tokens
        .unwrap();
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap().id, alice.user.id);
}

#[tokio::test]
async fn complete_login_after_the_account_was_disabled_is_refused() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let pending = challenge(&app, &user.email).await;
    let key = app.service_key("support", &["users.write"]).await;
    app.admin()
        .disable_user(with_bearer(
            authd::pb::auth::v1::DisableUserRequest {
                user_id: user.user.id.clone(),
            },
            &key,
        ))
        .await
        .unwrap();
    assert_error(
        complete_totp(&app, &pending.mfa_token, &user.app.code().await).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
    assert_error(
        complete_recovery(&app, &pending.mfa_token, &user.recovery_codes[0]).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
}

#[tokio::test]
async fn step_up_with_another_accounts_code_is_refused() {
    let app = spawn_app().await;
    let (alice, alice_session) = app.signed_in_user().await;
    let enrolling = app.tokens_of(&alice.email).await;
    add_totp(&app, &enrolling.access_token).await;
    let bob = mfa_user(&app).await;
    assert_error(
        step_up_totp(&app, &alice_session.access_token, &bob.app.code().await).await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    assert_error(
        step_up(
            &app,
            &alice_session.access_token,
            authd::pb::auth::v1::step_up_request::Proof::RecoveryCode(bob.recovery_codes[0].clone()),
        )
        .await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    assert_eq!(
        acr(&app
            .refresh(&alice_session.refresh_token)
            .await
            .unwrap()
            .access_token),
        "aal1"
    );
}

/// A code seen over a shoulder (or replayed by a proxy) after its owner
/// used it in another session is no use for a step-up.
#[tokio::test]
async fn step_up_with_a_code_another_session_used_is_refused() {
    let app = spawn_app().await;
    let (user, stale) = app.signed_in_user().await;
    let enrolling = app.tokens_of(&user.email).await;
    let (authenticator, _) = add_totp(&app, &enrolling.access_token).await;
    let pending = challenge(&app, &user.email).await;
    let code = authenticator.code().await;
    complete(&app, &pending.mfa_token, Proof::TotpCode(code.clone()))
        .await
        .unwrap();
    assert_error(
        step_up_totp(&app, &stale.access_token, &code).await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    assert_reauthentication_required(change_email(&app, &stale.access_token, &fresh_email(), PASSWORD).await);
}

#[tokio::test]
async fn an_mfa_token_is_neither_a_bearer_nor_a_refresh_token() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let pending = challenge(&app, &user.email).await;
    assert_error(
        app.get_me(&pending.mfa_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_error(
        app.refresh(&pending.mfa_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    // And it still completes afterwards: those calls did not consume it.
    complete_totp(&app, &pending.mfa_token, &user.app.code().await)
        .await
        .expect("CompleteLogin");
}
