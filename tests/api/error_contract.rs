//! The error contract any client can branch on (AIP-193): every error path
//! of every RPC answers with an ErrorInfo whose reason the proto lists, and
//! every field violation carries a machine reason the proto lists too.

use authd::grpc::status::ERROR_DOMAIN;
use authd::pb::auth::v1::{self as pb, ErrorReason, FieldViolationReason};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::adversarial::HEAVY_ARGON2;
use crate::helpers::*;

/// Checks the details every error must carry; returns the reason.
#[track_caller]
fn check_contract(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.domain, ERROR_DOMAIN, "{status:?}");
    assert!(
        ErrorReason::from_str_name(&info.reason).is_some_and(|r| r != ErrorReason::Unspecified),
        "reason {:?} is not listed in the proto's ErrorReason",
        info.reason
    );
    if status.code() == Code::InvalidArgument && info.reason == "INVALID_ARGUMENT" {
        let bad = status
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("INVALID_ARGUMENT without BadRequest: {status:?}"));
        assert!(!bad.field_violations.is_empty());
        for v in bad.field_violations {
            assert!(
                FieldViolationReason::from_str_name(&v.reason)
                    .is_some_and(|r| r != FieldViolationReason::Unspecified),
                "field {} has reason {:?}, not one the proto lists",
                v.field,
                v.reason
            );
            assert!(!v.description.is_empty());
        }
    }
    info.reason
}

#[track_caller]
fn expect(result: Result<impl std::fmt::Debug, Status>, code: Code, reason: &str) -> Status {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(check_contract(&status), reason, "{status:?}");
    status
}

#[tokio::test]
async fn every_error_of_every_rpc_carries_a_listed_reason() {
    let app = spawn_app().await;
    let mut c = app.client.clone();

    // Register: every field wrong at once, each with its reason.
    let status = expect(
        c.register(pb::RegisterRequest {
            email: "not an email".into(),
            password: "short".into(),
            username: "x".into(),
            full_name: "a\u{7}b".into(),
            phone: "5551234".into(),
            image_url: "ftp://example.com/a.png".into(),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[
            ("email", "INVALID_CHARACTERS"),
            ("full_name", "INVALID_CHARACTERS"),
            ("image_url", "INVALID_FORMAT"),
            ("password", "TOO_SHORT"),
            ("phone", "INVALID_FORMAT"),
            ("username", "TOO_SHORT"),
        ])
    );
    let status = expect(
        c.register(pb::RegisterRequest::default()).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("email", "REQUIRED"), ("password", "REQUIRED")])
    );
    let email = fresh_email();
    let status = expect(
        c.register(pb::RegisterRequest {
            email: email.clone(),
            password: "password123".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("password", "TOO_COMMON")]));
    let local = email.split('@').next().unwrap();
    let status = expect(
        c.register(pb::RegisterRequest {
            email: email.clone(),
            password: format!("my {local} passphrase"),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("password", "CONTAINS_IDENTIFIER")])
    );
    let status = expect(
        c.register(pb::RegisterRequest {
            email: format!("{}@example.com", "a".repeat(300)),
            password: "x".repeat(129),
            username: "y".repeat(40),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[
            ("email", "TOO_LONG"),
            ("password", "TOO_LONG"),
            ("username", "TOO_LONG")
        ])
    );
    c.register(pb::RegisterRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        username: "taken_name".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    expect(
        c.register(pb::RegisterRequest {
            email: email.to_uppercase(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    expect(
        c.register(pb::RegisterRequest {
            email: fresh_email(),
            password: PASSWORD.into(),
            username: "TAKEN_NAME".into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        "USERNAME_TAKEN",
    );

    // Login.
    let status = expect(app.login("", "").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(
        field_reasons(&status),
        pairs(&[("login", "REQUIRED"), ("password", "REQUIRED")])
    );
    expect(
        app.login(&email, "wrong password here").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let tokens = app.tokens_of(&email).await;

    // Refresh and Logout.
    let status = expect(app.refresh("").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(field_reasons(&status), pairs(&[("refresh_token", "REQUIRED")]));
    expect(
        app.refresh("rt_garbage").await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    let rotated = app.refresh(&tokens.refresh_token).await.unwrap();
    expect(
        app.refresh(&tokens.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    expect(
        c.logout(pb::LogoutRequest {
            refresh_token: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        c.logout(pb::LogoutRequest {
            refresh_token: "rt_garbage".into(),
        })
        .await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );

    // Bearer problems, on GetMe and ChangePassword alike.
    expect(
        c.get_me(pb::GetMeRequest {}).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        app.get_me("not.a.jwt").await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    expect(
        app.get_me(&rotated.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    expect(
        c.change_password(pb::ChangePasswordRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    let live = app.tokens_of(&email).await;
    let change = |current: &str, new: &str| {
        let mut c = app.client.clone();
        let request = with_bearer(
            pb::ChangePasswordRequest {
                current_password: current.into(),
                new_password: new.into(),
            },
            &live.access_token,
        );
        async move { c.change_password(request).await }
    };
    let status = expect(change("", "").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(
        field_reasons(&status),
        pairs(&[("current_password", "REQUIRED"), ("new_password", "REQUIRED")])
    );
    expect(
        change("wrong current password", "a brand new passphrase").await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );

    // Recovery.
    let status = expect(
        c.forgot_password(pb::ForgotPasswordRequest { email: "nope".into() })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("email", "INVALID_FORMAT")]));
    expect(
        c.reset_password(pb::ResetPasswordRequest::default()).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        c.reset_password(pb::ResetPasswordRequest {
            token: "pr_garbage".into(),
            new_password: "a brand new passphrase".into(),
        })
        .await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );

    // IntrospectToken: an empty token is the only error; a bad one is an
    // answer.
    expect(
        app.introspect("").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // Without a service key, or with a user's token instead of one.
    expect(
        c.introspect_token(pb::IntrospectTokenRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.introspect_token(with_bearer(
            pb::IntrospectTokenRequest::default(),
            &live.access_token,
        ))
        .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    // AdminService: no such user, and a read-only key writing.
    let reader = app.service_key("reader", &["users.read"]).await;
    expect(
        app.admin()
            .get_user(with_bearer(
                pb::GetUserRequest {
                    user_id: uuid::Uuid::new_v4().to_string(),
                },
                &reader,
            ))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    expect(
        app.admin()
            .disable_user(with_bearer(
                pb::DisableUserRequest {
                    user_id: uuid::Uuid::new_v4().to_string(),
                },
                &reader,
            ))
            .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );

    // Errors tonic builds itself get their ErrorInfo too.
    expect(
        c.login(pb::LoginRequest {
            login: email.clone(),
            password: "p".repeat(100 * 1024),
        })
        .await,
        Code::OutOfRange,
        "MESSAGE_TOO_LARGE",
    );
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    raw.ready().await.unwrap();
    let unknown: Result<tonic::Response<pb::GetMeResponse>, Status> = raw
        .unary(
            tonic::Request::new(pb::GetMeRequest {}),
            PathAndQuery::from_static("/auth.v1.AuthService/NoSuchMethod"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    // Unknown methods of a known service need a bearer first (fail closed).
    expect(unknown, Code::Unauthenticated, "TOKEN_MISSING");
    let mut raw = raw.clone();
    raw.ready().await.unwrap();
    // With a bearer, the method is looked up and not found.
    let unknown: Result<tonic::Response<pb::GetMeResponse>, Status> = raw
        .unary(
            with_bearer(pb::GetMeRequest {}, &live.access_token),
            PathAndQuery::from_static("/auth.v1.NoSuchService/Method"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    expect(unknown, Code::Unimplemented, "UNKNOWN_METHOD");
}

#[tokio::test]
async fn throttled_calls_carry_retry_info_and_a_reason() {
    let app = spawn_app_with(|c| c.peer_rate_limit = 1.0).await;
    let mut last = None;
    for _ in 0..3 {
        if let Err(status) = app.login(&fresh_email(), "whatever it is").await
            && status.code() == Code::ResourceExhausted
        {
            last = Some(status);
            break;
        }
    }
    let status = last.expect("throttled within three calls at one a second");
    assert_eq!(check_contract(&status), "THROTTLED");
    assert!(
        status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .is_some()
    );
}

/// Two ChangePassword calls of one session race: both checked the same
/// current password, one commits first, and the other must not overwrite it
/// silently nor claim the password was wrong: it lost a race (ABORTED).
#[tokio::test]
async fn a_password_change_that_lost_a_race_is_aborted() {
    let app = spawn_app_with(|c| {
        c.argon2 = HEAVY_ARGON2;
        c.hash_workers = 2;
        // Four heavy hashes on a loaded machine may take a while.
        c.request_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    let (_, tokens) = app.signed_in_user().await;
    let call = |new: &'static str| {
        let mut c = app.client.clone();
        let request = with_bearer(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: new.into(),
            },
            &tokens.access_token,
        );
        async move { c.change_password(request).await }
    };
    let (a, b) = tokio::join!(
        call("first racing new passphrase"),
        call("second racing new passphrase")
    );
    let lost = match (a, b) {
        (Ok(_), Err(lost)) | (Err(lost), Ok(_)) => lost,
        other => panic!("exactly one change must win: {other:?}"),
    };
    assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
    assert_eq!(check_contract(&lost), "CONCURRENT_UPDATE");
}

#[tokio::test]
async fn every_error_of_the_account_lifecycle_carries_a_listed_reason() {
    let app = spawn_app_with(|c| c.require_verified_email = true).await;
    let mut c = app.client.clone();
    let email = fresh_email();
    c.register(pb::RegisterRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        username: "lifecycle_taken".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Login's gate, after the password checked out.
    expect(
        app.login(&email, PASSWORD).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
    sqlx::query("UPDATE users SET email_verified = true")
        .execute(&app.db)
        .await
        .unwrap();
    let tokens = app.tokens_of(&email).await;
    let access = tokens.access_token.as_str();

    // Every bearer RPC without a bearer.
    expect(
        c.send_verification_email(pb::SendVerificationEmailRequest {})
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.update_me(pb::UpdateMeRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.change_email(pb::ChangeEmailRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.delete_me(pb::DeleteMeRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.list_sessions(pb::ListSessionsRequest {}).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.revoke_session(pb::RevokeSessionRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.revoke_other_sessions(pb::RevokeOtherSessionsRequest {}).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );

    // VerifyEmail.
    let status = expect(
        c.verify_email(pb::VerifyEmailRequest::default()).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("token", "REQUIRED")]));
    expect(
        c.verify_email(pb::VerifyEmailRequest {
            token: "ev_garbage".into(),
        })
        .await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );

    // UpdateMe: values, the mask, a taken username.
    let update = |user: Option<pb::User>, paths: &[&str]| {
        let mut c = app.client.clone();
        let request = with_bearer(
            pb::UpdateMeRequest {
                user,
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            access,
        );
        async move { c.update_me(request).await }
    };
    let status = expect(
        update(
            Some(pb::User {
                username: "y".repeat(40),
                phone: "+0".into(),
                ..Default::default()
            }),
            &["username", "phone"],
        )
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("user.phone", "INVALID_FORMAT"), ("user.username", "TOO_LONG")])
    );
    let status = expect(
        update(Some(pb::User::default()), &["email"]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("update_mask", "UNKNOWN_FIELD")]));
    let status = expect(update(None, &[]).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(
        field_reasons(&status),
        pairs(&[("update_mask", "REQUIRED"), ("user", "REQUIRED")])
    );
    c.register(pb::RegisterRequest {
        email: fresh_email(),
        password: PASSWORD.into(),
        username: "someone_else".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    expect(
        update(
            Some(pb::User {
                username: "Someone_Else".into(),
                ..Default::default()
            }),
            &["username"],
        )
        .await,
        Code::AlreadyExists,
        "USERNAME_TAKEN",
    );

    // ChangeEmail and DeleteMe: fields, then a wrong password.
    let change = |new_email: &str, password: &str| {
        let mut c = app.client.clone();
        let request = with_bearer(
            pb::ChangeEmailRequest {
                new_email: new_email.into(),
                current_password: password.into(),
            },
            access,
        );
        async move { c.change_email(request).await }
    };
    let status = expect(change("", "").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(
        field_reasons(&status),
        pairs(&[("current_password", "REQUIRED"), ("new_email", "REQUIRED")])
    );
    expect(
        change(&fresh_email(), "wrong current password").await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    let delete = |password: &str| {
        let mut c = app.client.clone();
        let request = with_bearer(
            pb::DeleteMeRequest {
                current_password: password.into(),
            },
            access,
        );
        async move { c.delete_me(request).await }
    };
    let status = expect(delete("").await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(field_reasons(&status), pairs(&[("current_password", "REQUIRED")]));
    expect(
        delete("wrong current password").await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );

    // RevokeSession.
    let revoke = |session_id: String| {
        let mut c = app.client.clone();
        let request = with_bearer(pb::RevokeSessionRequest { session_id }, access);
        async move { c.revoke_session(request).await }
    };
    let status = expect(
        revoke("1234".into()).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("session_id", "INVALID_FORMAT")]));
    expect(
        revoke(uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );

    // SendVerificationEmail: five an hour (Register's included).
    sqlx::query("UPDATE users SET email_verified = false")
        .execute(&app.db)
        .await
        .unwrap();
    let send = || {
        let mut c = app.client.clone();
        let request = with_bearer(pb::SendVerificationEmailRequest {}, access);
        async move { c.send_verification_email(request).await }
    };
    for _ in 0..4 {
        send().await.unwrap();
    }
    let status = expect(send().await, Code::ResourceExhausted, "THROTTLED");
    assert!(status.get_details_retry_info().is_some());

    // Every bearer RPC on an ended session.
    c.logout(pb::LogoutRequest {
        refresh_token: tokens.refresh_token.clone(),
    })
    .await
    .unwrap();
    expect(
        c.list_sessions(with_bearer(pb::ListSessionsRequest {}, access))
            .await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    expect(
        c.revoke_other_sessions(with_bearer(pb::RevokeOtherSessionsRequest {}, access))
            .await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    expect(send().await, Code::Unauthenticated, "SESSION_REVOKED");
    expect(
        update(Some(pb::User::default()), &["full_name"]).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    expect(
        change(&fresh_email(), PASSWORD).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    expect(delete(PASSWORD).await, Code::Unauthenticated, "SESSION_REVOKED");
    expect(
        revoke(uuid::Uuid::new_v4().to_string()).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
}

/// Every reason of the second factors, reached through the RPCs that give
/// it, each with its ErrorInfo.
#[tokio::test]
async fn every_error_of_second_factors_carries_a_listed_reason() {
    use crate::factors::*;
    use crate::totp::Authenticator;

    let app = spawn_app().await;
    let (user, stale) = app.signed_in_user().await;
    let enrolling = app.tokens_of(&user.email).await;

    // ENROLLMENT_EXPIRED, INVALID_CODE, INVALID_ARGUMENT on ConfirmTotp.
    expect(
        confirm(
            &app,
            &enrolling.access_token,
            &uuid::Uuid::new_v4().to_string(),
            "123456",
        )
        .await,
        Code::NotFound,
        "ENROLLMENT_EXPIRED",
    );
    let enrollment = enroll(&app, &enrolling.access_token, "").await.unwrap();
    let status = expect(
        confirm(&app, &enrolling.access_token, &enrollment.enrollment_id, "12345").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status).len(), 1);
    assert_eq!(field_reasons(&status)[0].0, "code");
    let authenticator = Authenticator::new(&enrollment.secret);
    let right = authenticator.code().await;
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 3) % 1_000_000);
    expect(
        confirm(&app, &enrolling.access_token, &enrollment.enrollment_id, &wrong).await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    let status = expect(
        enroll(&app, &enrolling.access_token, &"n".repeat(65)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status).len(), 1);

    // FACTOR_NOT_FOUND before any factor (StepUp, RegenerateRecoveryCodes).
    expect(
        step_up_totp(&app, &stale.access_token, &right).await,
        Code::FailedPrecondition,
        "FACTOR_NOT_FOUND",
    );
    expect(
        regenerate_codes(&app, &stale.access_token).await,
        Code::FailedPrecondition,
        "FACTOR_NOT_FOUND",
    );
    confirm(&app, &enrolling.access_token, &enrollment.enrollment_id, &right)
        .await
        .unwrap();
    let fresh = app.refresh(&enrolling.refresh_token).await.unwrap();

    // REAUTHENTICATION_REQUIRED with max_age, INVALID_CODE on StepUp.
    let status = expect(
        change_email(&app, &stale.access_token, &fresh_email(), PASSWORD).await,
        Code::FailedPrecondition,
        "REAUTHENTICATION_REQUIRED",
    );
    assert_eq!(metadata(&status, "max_age").as_deref(), Some("600"));
    expect(
        step_up_totp(&app, &stale.access_token, &wrong).await,
        Code::InvalidArgument,
        "INVALID_CODE",
    );
    // FACTOR_NOT_FOUND on RemoveFactor (NOT_FOUND there).
    expect(
        remove_factor(&app, &fresh.access_token, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
        "FACTOR_NOT_FOUND",
    );

    // MFA_TOKEN_INVALID and INVALID_CREDENTIALS on CompleteLogin.
    expect(
        complete_totp(&app, "mfa_garbage", "123456").await,
        Code::Unauthenticated,
        "MFA_TOKEN_INVALID",
    );
    let pending = challenge(&app, &user.email).await;
    expect(
        complete_totp(&app, &pending.mfa_token, &wrong).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let status = expect(
        complete_totp(&app, "", "123456").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status).len(), 1);

    // FACTOR_LIMIT_REACHED after five apps.
    for _ in 1..5 {
        add_totp(&app, &fresh.access_token).await;
    }
    expect(
        enroll(&app, &fresh.access_token, "").await,
        Code::FailedPrecondition,
        "FACTOR_LIMIT_REACHED",
    );

    // ResetUserFactors: no such user, a key without users.write.
    let writer = app.service_key("resetter", &["users.write"]).await;
    expect(
        reset_user_factors(&app, &writer, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    expect(
        reset_user_factors(&app, &writer, "not-a-uuid").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let reader = app.service_key("reader", &["users.read"]).await;
    expect(
        reset_user_factors(&app, &reader, &user.id).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );

    // The bearer RPCs without a bearer.
    let mut c = app.client.clone();
    expect(
        c.enroll_totp(pb::EnrollTotpRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.confirm_totp(pb::ConfirmTotpRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.list_factors(pb::ListFactorsRequest {}).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.remove_factor(pb::RemoveFactorRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.regenerate_recovery_codes(pb::RegenerateRecoveryCodesRequest {})
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.step_up(pb::StepUpRequest::default()).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
}
/// MFA_ENROLLMENT_REQUIRED: an account AUTHD_REQUIRE_MFA applies to, with
/// no factor yet, may do nothing but enrol.
#[tokio::test]
async fn mfa_enrollment_required_carries_a_listed_reason() {
    let app = spawn_app_with(|c| c.require_mfa = "all".into()).await;
    let (_, tokens) = app.signed_in_user().await;
    expect(
        app.client
            .clone()
            .list_sessions(with_bearer(pb::ListSessionsRequest {}, &tokens.access_token))
            .await,
        Code::FailedPrecondition,
        "MFA_ENROLLMENT_REQUIRED",
    );
}

/// ExchangeToken's errors: each carries a listed reason, and those about a
/// parameter name it in a BadRequest with a listed field reason.
#[tokio::test]
async fn every_error_of_exchange_token_carries_a_listed_reason() {
    use crate::token_grants::{
        BILLING, ELSEWHERE, EXCHANGE, IMPERSONATE, READ, client_credentials, exchange, impersonation,
        token_exchange,
    };
    let app = crate::token_grants::spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let key = app.service_key("contract", &[READ, EXCHANGE, IMPERSONATE]).await;
    let weak = app.service_key("contract-weak", &[READ]).await;

    #[track_caller]
    fn about_field(status: &Status, field: &str) {
        let bad = status
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("no BadRequest on {status:?}"));
        assert_eq!(bad.field_violations.len(), 1, "{status:?}");
        let v = &bad.field_violations[0];
        assert_eq!(v.field, field, "{status:?}");
        assert!(
            FieldViolationReason::from_str_name(&v.reason)
                .is_some_and(|r| r != FieldViolationReason::Unspecified)
        );
        assert!(!v.description.is_empty());
    }

    expect(
        exchange(&app, "", client_credentials("", "")).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        exchange(&app, "sk_nothing", client_credentials("", "")).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    expect(
        exchange(&app, &tokens.access_token, client_credentials("", "")).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    expect(
        exchange(&app, &weak, token_exchange(&tokens.access_token, BILLING, "")).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    let status = expect(
        exchange(
            &app,
            &key,
            pb::ExchangeTokenRequest {
                grant_type: "password".into(),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    about_field(&status, "grant_type");
    for (request, reason, field) in [
        (
            token_exchange("garbage", BILLING, ""),
            "GRANT_INVALID",
            "subject_token",
        ),
        (
            impersonation(&uuid::Uuid::new_v4().to_string(), BILLING, ""),
            "GRANT_INVALID",
            "requested_subject",
        ),
        (client_credentials(ELSEWHERE, ""), "TARGET_INVALID", "audience"),
        (client_credentials("", "users.write"), "SCOPE_INVALID", "scope"),
        (
            impersonation(&user.id, BILLING, "admin"),
            "SCOPE_INVALID",
            "scope",
        ),
    ] {
        let status = expect(exchange(&app, &key, request).await, Code::InvalidArgument, reason);
        about_field(&status, field);
    }
}

/// The passkey RPCs' errors: each carries a listed reason, and those about
/// a field name it in a BadRequest with a listed field reason; a passkey
/// answer that does not hold is refused the same way at every entry.
#[tokio::test]
async fn every_error_of_passkeys_carries_a_listed_reason() {
    use crate::passkey_kit::{SoftKey, passkey_login, register_passkey, to_struct};
    use serde_json::json;

    let app = spawn_app().await;
    let (user, tokens) = app.signed_in_user().await;
    // A session from before the account had a factor: not fresh later.
    let stale = app.tokens_of(&user.email).await;
    let access = tokens.access_token.clone();
    let mut c = app.client.clone();
    // Well-formed (32 bytes, base64url), and no ceremony has it.
    let unknown_ceremony = "A".repeat(43);
    let malformed = || Some(to_struct(json!({"id": "not a credential", "type": "public-key"})));
    let start_registration = |name: &str, access: &str| {
        with_bearer(pb::StartPasskeyRegistrationRequest { name: name.into() }, access)
    };
    let finish_registration = |ceremony_id: &str, credential: Option<prost_types::Struct>| {
        with_bearer(
            pb::FinishPasskeyRegistrationRequest {
                ceremony_id: ceremony_id.into(),
                credential,
            },
            &access,
        )
    };
    let discoverable = pb::StartPasskeyLoginRequest::default;

    // StartPasskeyRegistration: a name too long, control characters.
    let status = expect(
        c.start_passkey_registration(start_registration(&"n".repeat(65), &access))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("name", "TOO_LONG")]));
    let status = expect(
        c.start_passkey_registration(start_registration("a\u{7}b", &access))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("name", "INVALID_CHARACTERS")]));

    // FinishPasskeyRegistration: both fields missing, a ceremony id of the
    // wrong form, an unknown ceremony, a credential that is not one, one
    // made for another ceremony's challenge.
    let status = expect(
        c.finish_passkey_registration(finish_registration("", None)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("ceremony_id", "REQUIRED"), ("credential", "REQUIRED")])
    );
    let status = expect(
        c.finish_passkey_registration(finish_registration("not/base64url!", malformed()))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("ceremony_id", "INVALID_FORMAT")])
    );
    // The credential's form is checked before the ceremony is looked up
    // (and used up): an unknown ceremony with a malformed credential names
    // the credential. passkeys::ceremonies covers an unknown ceremony with
    // a well-formed one (CEREMONY_EXPIRED).
    let status = expect(
        c.finish_passkey_registration(finish_registration(&unknown_ceremony, malformed()))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("credential", "INVALID_FORMAT")]));
    let started = c
        .start_passkey_registration(start_registration("", &access))
        .await
        .unwrap()
        .into_inner();
    let status = expect(
        c.finish_passkey_registration(finish_registration(&started.ceremony_id, malformed()))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("credential", "INVALID_FORMAT")]));
    let answered = c
        .start_passkey_registration(start_registration("", &access))
        .await
        .unwrap()
        .into_inner();
    let started = c
        .start_passkey_registration(start_registration("", &access))
        .await
        .unwrap()
        .into_inner();
    let other_challenge = SoftKey::new().create(answered.options.as_ref().unwrap());
    expect(
        c.finish_passkey_registration(finish_registration(
            &started.ceremony_id,
            Some(to_struct(other_challenge)),
        ))
        .await,
        Code::InvalidArgument,
        "PASSKEY_INVALID",
    );
    // A key whose credential authd never stored (its ceremony left unfinished).
    let started = c
        .start_passkey_registration(start_registration("", &access))
        .await
        .unwrap()
        .into_inner();
    let mut stranger = SoftKey::new();
    stranger.create(started.options.as_ref().unwrap());

    // The first passkey; then REAUTHENTICATION_REQUIRED for a session that
    // proved no factor lately.
    let mut key = SoftKey::new();
    register_passkey(&app, &access, &mut key).await;
    // The registration proved a factor: the session's next token says so.
    let fresh = app.refresh(&tokens.refresh_token).await.unwrap().access_token;
    let status = expect(
        c.start_passkey_registration(start_registration("", &stale.access_token))
            .await,
        Code::FailedPrecondition,
        "REAUTHENTICATION_REQUIRED",
    );
    assert_eq!(
        crate::factors::metadata(&status, "max_age").as_deref(),
        Some("600")
    );

    // StartPasskeyLogin: a login too long.
    let status = expect(
        c.start_passkey_login(pb::StartPasskeyLoginRequest {
            login: format!("{}@example.com", "a".repeat(300)),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("login", "TOO_LONG")]));

    // FinishPasskeyLogin: both fields missing, a credential that is not
    // one, a good answer to an unknown ceremony, an unknown credential.
    let finish_login =
        |ceremony_id: &str, credential: Option<prost_types::Struct>| pb::FinishPasskeyLoginRequest {
            ceremony_id: ceremony_id.into(),
            credential,
        };
    let status = expect(
        c.finish_passkey_login(finish_login("", None)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("ceremony_id", "REQUIRED"), ("credential", "REQUIRED")])
    );
    let status = expect(
        c.finish_passkey_login(finish_login(&unknown_ceremony, malformed()))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("credential", "INVALID_FORMAT")]));
    let started = c.start_passkey_login(discoverable()).await.unwrap().into_inner();
    let answer = key.get(started.options.as_ref().unwrap());
    expect(
        c.finish_passkey_login(finish_login(&unknown_ceremony, Some(to_struct(answer))))
            .await,
        Code::NotFound,
        "CEREMONY_EXPIRED",
    );
    expect(
        passkey_login(&app, &mut stranger).await,
        Code::Unauthenticated,
        "PASSKEY_INVALID",
    );

    // CompleteLogin and StepUp: a passkey answer that is not one; at
    // CompleteLogin, one of a credential authd does not know.
    let pending = crate::factors::challenge(&app, &user.email).await;
    assert!(pending.passkey_options.is_some());
    let complete = |proof: prost_types::Struct| pb::CompleteLoginRequest {
        mfa_token: pending.mfa_token.clone(),
        proof: Some(pb::complete_login_request::Proof::PasskeyAssertion(proof)),
    };
    let status = expect(
        c.complete_login(complete(malformed().unwrap())).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("passkey_assertion", "INVALID_FORMAT")])
    );
    let started = c.start_passkey_login(discoverable()).await.unwrap().into_inner();
    let unknown = to_struct(stranger.get(started.options.as_ref().unwrap()));
    expect(
        c.complete_login(complete(unknown)).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let status = expect(
        c.step_up(with_bearer(
            pb::StepUpRequest {
                proof: Some(pb::step_up_request::Proof::PasskeyAssertion(malformed().unwrap())),
            },
            &access,
        ))
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("passkey_assertion", "INVALID_FORMAT")])
    );
    // At StepUp the bearer is fine and the proof is not: INVALID_ARGUMENT,
    // as for a wrong code there, never UNAUTHENTICATED (which tells a
    // client its session is gone).
    let started = c.start_passkey_login(discoverable()).await.unwrap().into_inner();
    let unknown = to_struct(stranger.get(started.options.as_ref().unwrap()));
    expect(
        c.step_up(with_bearer(
            pb::StepUpRequest {
                proof: Some(pb::step_up_request::Proof::PasskeyAssertion(unknown)),
            },
            &access,
        ))
        .await,
        Code::InvalidArgument,
        "PASSKEY_INVALID",
    );

    // FACTOR_LIMIT_REACHED after ten passkeys.
    for _ in 1..10 {
        register_passkey(&app, &fresh, &mut SoftKey::new()).await;
    }
    expect(
        c.start_passkey_registration(start_registration("", &fresh)).await,
        Code::FailedPrecondition,
        "FACTOR_LIMIT_REACHED",
    );

    // ACCOUNT_DISABLED: the passkey holds, the account does not.
    let writer = app.service_key("disabler", &["users.write"]).await;
    app.admin()
        .disable_user(with_bearer(
            pb::DisableUserRequest {
                user_id: user.id.clone(),
            },
            &writer,
        ))
        .await
        .unwrap();
    expect(
        passkey_login(&app, &mut key).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );

    // The bearer RPCs without a bearer.
    expect(
        c.start_passkey_registration(pb::StartPasskeyRegistrationRequest::default())
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    expect(
        c.finish_passkey_registration(pb::FinishPasskeyRegistrationRequest::default())
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );

    // EMAIL_NOT_VERIFIED where verified addresses are required: an address
    // that was verified when its passkey was registered, and is no more.
    let strict = spawn_app_with(|c| c.require_verified_email = true).await;
    let email = fresh_email();
    strict.register(&email, PASSWORD).await;
    let verified = |yes: bool| {
        sqlx::query("UPDATE users SET email_verified = $1 WHERE email = $2")
            .bind(yes)
            .bind(&email)
            .execute(&strict.db)
    };
    verified(true).await.unwrap();
    let signed_in = strict.tokens_of(&email).await;
    let mut key = SoftKey::new();
    register_passkey(&strict, &signed_in.access_token, &mut key).await;
    verified(false).await.unwrap();
    expect(
        passkey_login(&strict, &mut key).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
}
