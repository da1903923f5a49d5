//! EnrollTotp and ConfirmTotp: what an authenticator app needs, the ±1
//! step window, the recovery codes of a first factor, the limit of five.

use crate::totp::{code_at_step, safe_step};

use super::*;

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn enroll_totp_gives_the_secret_and_an_otpauth_uri_apps_accept() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let started = now_seconds();
    let enrollment = enroll(&app, &tokens.access_token, "").await.unwrap();

    uuid::Uuid::parse_str(&enrollment.enrollment_id).expect("enrollment_id is a UUID");
    // 160 bits in base32 without padding.
    assert_eq!(enrollment.secret.len(), 32, "{}", enrollment.secret);
    assert!(
        enrollment
            .secret
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "{}",
        enrollment.secret
    );
    assert_eq!(crate::totp::base32_decode(&enrollment.secret).len(), 20);
    assert_near(enrollment.expires_at.unwrap().seconds, started + 600, 10);

    let uri = &enrollment.otpauth_uri;
    let rest = uri
        .strip_prefix("otpauth://totp/")
        .unwrap_or_else(|| panic!("{uri}"));
    let (label, query) = rest.split_once('?').unwrap_or_else(|| panic!("{uri}"));
    assert!(
        !label.contains(' ') && !label.contains('?'),
        "label not encoded: {uri}"
    );
    let label = percent_decode(label);
    let (issuer, account) = label.split_once(':').unwrap_or_else(|| panic!("{uri}"));
    assert_eq!(account, user.email);
    // The default issuer is the host of AUTHD_ISSUER.
    assert_eq!(issuer, "authd.test");
    let params: std::collections::HashMap<String, String> = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or_else(|| panic!("{uri}"));
            (k.to_owned(), percent_decode(v))
        })
        .collect();
    assert_eq!(params["secret"], enrollment.secret);
    assert_eq!(params["issuer"], issuer);
    assert_eq!(params["algorithm"], "SHA1");
    assert_eq!(params["digits"], "6");
    assert_eq!(params["period"], "30");

    // Nothing is live before ConfirmTotp.
    let listed = list_factors(&app, &tokens.access_token).await;
    assert!(listed.factors.is_empty(), "{listed:?}");
    assert_eq!(listed.recovery_codes_left, 0);
    assert!(app.login(&user.email, PASSWORD).await.unwrap().tokens.is_some());
}

#[tokio::test]
async fn a_name_longer_than_64_characters_is_refused() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let status = assert_error(
        enroll(&app, &tokens.access_token, &"n".repeat(65)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["name"]);
    enroll(&app, &tokens.access_token, &"n".repeat(64))
        .await
        .expect("64 characters are fine");
}

#[tokio::test]
async fn the_first_factor_comes_with_ten_recovery_codes_and_raises_the_session() {
    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    let enrollment = enroll(&app, &tokens.access_token, "Phone").await.unwrap();
    let authenticator = Authenticator::new(&enrollment.secret);
    let confirmed = confirm(
        &app,
        &tokens.access_token,
        &enrollment.enrollment_id,
        &authenticator.code().await,
    )
    .await
    .unwrap();

    let factor = confirmed.factor.unwrap();
    assert_eq!(factor.kind(), pb::FactorKind::Totp);
    assert_eq!(factor.name, "Phone");
    assert_eq!(
        confirmed.recovery_codes.len(),
        10,
        "{:?}",
        confirmed.recovery_codes
    );
    for code in &confirmed.recovery_codes {
        assert_recovery_code_format(code);
    }
    let distinct: std::collections::HashSet<_> = confirmed.recovery_codes.iter().collect();
    assert_eq!(distinct.len(), 10);

    let listed = list_factors(&app, &tokens.access_token).await;
    assert_eq!(listed.factors.len(), 1);
    assert_eq!(listed.factors[0].id, factor.id);
    assert_eq!(listed.factors[0].kind(), pb::FactorKind::Totp);
    assert_eq!(listed.recovery_codes_left, 10);

    // The session that confirmed proved both factors.
    let refreshed = app.refresh(&tokens.refresh_token).await.unwrap();
    assert_eq!(acr(&refreshed.access_token), "aal2");
    assert_eq!(
        sorted(amr(&refreshed.access_token)),
        strings(&["mfa", "otp", "pwd"])
    );
    // And the next Login needs the second factor.
    challenge(&app, &user.email).await;
}

#[tokio::test]
async fn the_default_name_is_authenticator_app() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let (_, confirmed) = add_totp(&app, &tokens.access_token).await;
    assert_eq!(confirmed.factor.unwrap().name, "Authenticator app");
}

/// RFC 6238 §5.2 with one step of drift either way, as apps expect; two
/// steps are refused. Each enrollment is fresh, so no step was used before.
#[tokio::test]
async fn confirm_accepts_one_step_of_drift_and_refuses_two() {
    let app = spawn_app().await;
    for drift in [-1i64, 1] {
        let (_, tokens) = app.signed_in_user().await;
        let enrollment = enroll(&app, &tokens.access_token, "").await.unwrap();
        let step = safe_step().await;
        for too_far in [-2i64, 2] {
            let code = code_at_step(&enrollment.secret, step.checked_add_signed(too_far).unwrap());
            assert_error(
                confirm(&app, &tokens.access_token, &enrollment.enrollment_id, &code).await,
                Code::InvalidArgument,
                "INVALID_CODE",
            );
        }
        let step = safe_step().await;
        let code = code_at_step(&enrollment.secret, step.checked_add_signed(drift).unwrap());
        confirm(&app, &tokens.access_token, &enrollment.enrollment_id, &code)
            .await
            .unwrap_or_else(|s| panic!("drift {drift}: {s:?}"));
    }
}

#[tokio::test]
async fn a_code_that_is_not_six_digits_is_invalid_argument() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let enrollment = enroll(&app, &tokens.access_token, "").await.unwrap();
    for bad in ["", "12345", "1234567", "12a456", "１２３４５６"] {
        let status = assert_error(
            confirm(&app, &tokens.access_token, &enrollment.enrollment_id, bad).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["code"], "{bad:?}");
    }
}

#[tokio::test]
async fn a_wrong_code_is_invalid_code_and_the_enrollment_stays_open() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let enrollment = enroll(&app, &tokens.access_token, "").await.unwrap();
    let authenticator = Authenticator::new(&enrollment.secret);
    let right = authenticator.code().await;
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 500_000) % 1_000_000);
    assert_error(
        confirm(&app, &tokens.access_token, &enrollment.enrollment_id, &wrong).await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    confirm(&app, &tokens.access_token, &enrollment.enrollment_id, &right)
        .await
        .expect("the right code after a wrong one");
}

#[tokio::test]
async fn unknown_confirmed_or_expired_enrollments_are_enrollment_expired() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    let access = &tokens.access_token;
    assert_error(
        confirm(&app, access, &uuid::Uuid::new_v4().to_string(), "123456").await,
        Code::NotFound,
        "ENROLLMENT_EXPIRED",
    );

    let enrollment = enroll(&app, access, "").await.unwrap();
    let authenticator = Authenticator::new(&enrollment.secret);
    confirm(
        &app,
        access,
        &enrollment.enrollment_id,
        &authenticator.code().await,
    )
    .await
    .unwrap();
    // A fresh token: the account has a factor now.
    let fresh = app.refresh(&tokens.refresh_token).await.unwrap();
    assert_error(
        confirm(
            &app,
            &fresh.access_token,
            &enrollment.enrollment_id,
            &authenticator.code().await,
        )
        .await,
        Code::NotFound,
        "ENROLLMENT_EXPIRED",
    );

    // Another account's enrollment is unknown to this one.
    let (_, other) = app.signed_in_user().await;
    let theirs = enroll(&app, &other.access_token, "").await.unwrap();
    let code = Authenticator::new(&theirs.secret).code().await;
    assert_error(
        confirm(&app, &fresh.access_token, &theirs.enrollment_id, &code).await,
        Code::NotFound,
        "ENROLLMENT_EXPIRED",
    );

    // Past its ten minutes.
    sqlx::query("UPDATE factors SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&theirs.enrollment_id)
        .execute(&app.db)
        .await
        .unwrap();
    assert_error(
        confirm(&app, &other.access_token, &theirs.enrollment_id, &code).await,
        Code::NotFound,
        "ENROLLMENT_EXPIRED",
    );
}

/// A second app needs a fresh second factor; it gets no recovery codes
/// (the account's ten stay), and after five the sixth is refused.
#[tokio::test]
async fn more_apps_need_a_fresh_factor_and_stop_at_five() {
    let app = spawn_app().await;
    let (_, first_session) = app.signed_in_user().await;
    add_totp(&app, &first_session.access_token).await;

    // The token that confirmed is from before the proof: not fresh.
    let enrollment = enroll(&app, &first_session.access_token, "").await.unwrap();
    let code = Authenticator::new(&enrollment.secret).code().await;
    assert_reauthentication_required(
        confirm(
            &app,
            &first_session.access_token,
            &enrollment.enrollment_id,
            &code,
        )
        .await,
    );

    let fresh = app.refresh(&first_session.refresh_token).await.unwrap();
    for n in 2..=5 {
        let (_, confirmed) = add_totp(&app, &fresh.access_token).await;
        assert!(confirmed.recovery_codes.is_empty(), "app {n} got codes");
    }
    let listed = list_factors(&app, &fresh.access_token).await;
    assert_eq!(listed.factors.len(), 5);
    assert_eq!(listed.recovery_codes_left, 10);
    assert_error(
        enroll(&app, &fresh.access_token, "").await,
        Code::FailedPrecondition,
        "FACTOR_LIMIT_REACHED",
    );
}
