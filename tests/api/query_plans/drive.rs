//! Driving a real authd through every RPC of its services, and waiting
//! for its background work.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use authd::crypto::opaque::{NewToken, TokenKind};
use authd::pb::FILE_DESCRIPTOR_SET;
use authd::pb::auth::v1 as pb;
use prost_reflect::DescriptorPool;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;
use crate::lifecycle::{CHANGE_SUBJECT, VERIFY_SUBJECT, link_token, nth_mail};
use crate::passkey_kit::{SoftKey, passkey_login, register_passkey, to_struct};
use crate::seed::seeded_email;
use crate::smtp::SmtpServer;

/// The password of `password_hash_of`'s hash, which the seed's accounts share.
const SEEDED_PASSWORD: &str = "seeded accounts share this passphrase";

/// Methods with at least one finished call, from the server's own count.
pub(super) fn methods_called(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("authd_rpc_calls_total{method=\""))
        .filter_map(|rest| rest.split('"').next())
        .filter(|method| method.starts_with("/auth."))
        .map(str::to_owned)
        .collect()
}

/// `/package.Service/Method` of every method of authd's services.
pub(super) fn methods_of_the_services() -> BTreeSet<String> {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let methods: BTreeSet<String> = pool
        .services()
        .filter(|s| s.package_name().starts_with("auth."))
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("/{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(methods.len() > 20, "{methods:?}");
    methods
}

/// Waits until the server's background work has run at least once: mail
/// delivered, reset requests resolved, a clean-up pass finished.
pub(super) async fn background_work_done(db: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pending_mail, requests, cleaned): (i64, i64, bool) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM email_outbox WHERE sent_at IS NULL AND discarded_at IS NULL),
                    (SELECT count(*) FROM password_reset_requests),
                    EXISTS (SELECT 1 FROM maintenance_runs WHERE finished_at IS NOT NULL)",
        )
        .fetch_one(db)
        .await
        .unwrap();
        if pending_mail == 0 && requests == 0 && cleaned {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "background work not done: {pending_mail} mails pending, {requests} reset requests, \
             clean-up finished: {cleaned}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Service keys with every scope, stored the way the CLI stores them (by
/// the test's role, so that the CLI's statements are not the server's).
async fn admin_key(db: &PgPool) -> String {
    let key = NewToken::generate(TokenKind::ServiceKey).unwrap();
    let scopes: Vec<String> = [
        "revocations.watch",
        "tokens.exchange",
        "tokens.introspect",
        "users.impersonate",
        "users.read",
        "users.write",
    ]
    .map(str::to_owned)
    .to_vec();
    authd::db::service_accounts::add_key(db, "plans", &scopes, &key.hash, chrono::Utc::now())
        .await
        .unwrap();
    key.expose().to_owned()
}

fn unknown_token(kind: TokenKind) -> String {
    NewToken::generate(kind).unwrap().expose().to_owned()
}

/// A well-formed ceremony id no ceremony has: 32 random bytes, base64url.
fn unknown_ceremony_id() -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = (0..2).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Every RPC of both services: the success path and the main failures.
pub(super) async fn drive_every_rpc(app: &TestApp, smtp: &SmtpServer, tester: &PgPool) {
    let key = admin_key(tester).await;
    let mut auth = app.client.clone();
    let mut admin = app.admin();

    // Register: a new account, a taken address, a taken username.
    let ada_email = "ada@plans.example";
    let register = |email: &str, username: &str| pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        username: username.into(),
        ..Default::default()
    };
    let ada = auth
        .register(register(ada_email, "ada_plans"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_error(
        auth.register(register("ADA@plans.example", "")).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    assert_error(
        auth.register(register("bob@plans.example", "ADA_plans")).await,
        Code::AlreadyExists,
        "USERNAME_TAKEN",
    );
    let bob = app.register("bob@plans.example", PASSWORD).await;

    // Login: by address and by username, a seeded account (its hash is
    // upgraded), an unknown login, a wrong password until throttled, a
    // disabled account.
    let first = app.tokens_of(ada_email).await;
    let second = app.tokens_of("Ada_Plans").await;
    let seeded = app
        .login(&seeded_email(7), SEEDED_PASSWORD)
        .await
        .unwrap()
        .tokens
        .unwrap();
    let upgraded: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind(seeded_email(7))
        .fetch_one(tester)
        .await
        .unwrap();
    let costs = format!("m={},t={},", TEST_ARGON2.memory_kib, TEST_ARGON2.iterations);
    assert!(upgraded.contains(&costs), "not upgraded: {upgraded}");
    assert_error(
        app.login("nobody@plans.example", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let mut throttled = false;
    // Five free attempts, then waits of 1 s, 2 s…: generous for a slow machine.
    for _ in 0..12 {
        match app.login("bob@plans.example", "not the password at all").await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert_eq!(reason(&s), "THROTTLED");
                throttled = true;
                break;
            }
            other => assert_error(other, Code::Unauthenticated, "INVALID_CREDENTIALS"),
        };
    }
    assert!(throttled, "wrong passwords were never throttled");
    // Every thousandth seeded account is disabled.
    assert_error(
        app.login(&seeded_email(1000), SEEDED_PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );

    // Refresh: a rotation, a replay (ends the session), an unknown token.
    let refresh = |token: &str| pb::RefreshRequest {
        refresh_token: token.into(),
    };
    auth.refresh(refresh(&first.refresh_token)).await.unwrap();
    assert_error(
        auth.refresh(refresh(&first.refresh_token)).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    assert_error(
        auth.refresh(refresh(&unknown_token(TokenKind::Refresh))).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    auth.refresh(refresh(&seeded.refresh_token)).await.unwrap();

    // Logout, of a known and an unknown token.
    let logout = |token: &str| pb::LogoutRequest {
        refresh_token: token.into(),
    };
    auth.logout(logout(&second.refresh_token)).await.unwrap();
    assert_error(
        auth.logout(logout(&unknown_token(TokenKind::Refresh))).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );

    // GetMe of a live session and of one that ended; GetJwks; IntrospectToken.
    let live = app.tokens_of(ada_email).await;
    assert_eq!(app.get_me(&live.access_token).await.unwrap().id, ada.id);
    assert_error(
        app.get_me(&second.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    auth.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    let introspect = |token: &str| {
        with_bearer(
            pb::IntrospectTokenRequest {
                access_token: token.into(),
            },
            &key,
        )
    };
    assert!(
        auth.introspect_token(introspect(&live.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    assert!(
        !auth
            .introspect_token(introspect(&first.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );

    // ExchangeToken: a service token (then used as the credential), a
    // user's token exchanged, an impersonation, an ended subject.
    let exchange = |request: pb::ExchangeTokenRequest, credential: &str| with_bearer(request, credential);
    let service_token = auth
        .exchange_token(exchange(
            pb::ExchangeTokenRequest {
                grant_type: "client_credentials".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let exchanged = auth
        .exchange_token(exchange(
            pb::ExchangeTokenRequest {
                grant_type: "urn:ietf:params:oauth:grant-type:token-exchange".into(),
                audience: "billing".into(),
                subject_token: live.access_token.clone(),
                ..Default::default()
            },
            &service_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    assert!(
        auth.introspect_token(introspect(&exchanged))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    auth.exchange_token(exchange(
        pb::ExchangeTokenRequest {
            grant_type: "urn:ietf:params:oauth:grant-type:token-exchange".into(),
            audience: "billing".into(),
            requested_subject: ada.id.clone(),
            ..Default::default()
        },
        &key,
    ))
    .await
    .unwrap();
    assert_error(
        auth.exchange_token(exchange(
            pb::ExchangeTokenRequest {
                grant_type: "urn:ietf:params:oauth:grant-type:token-exchange".into(),
                audience: "billing".into(),
                subject_token: first.access_token.clone(),
                ..Default::default()
            },
            &key,
        ))
        .await,
        Code::InvalidArgument,
        "GRANT_INVALID",
    );

    // ChangePassword: a wrong current password, then a change.
    let change = |current: &str, new: &str| {
        with_bearer(
            pb::ChangePasswordRequest {
                current_password: current.into(),
                new_password: new.into(),
            },
            &live.access_token,
        )
    };
    assert_error(
        auth.change_password(change("wrong wrong wrong", "a new passphrase for ada"))
            .await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    let live = auth
        .change_password(change(PASSWORD, "a new passphrase for ada"))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let ada_password = "a new passphrase for ada";

    // SendVerificationEmail, VerifyEmail with its link and with a bad token.
    auth.send_verification_email(with_bearer(
        pb::SendVerificationEmailRequest {},
        &live.access_token,
    ))
    .await
    .unwrap();
    let link = link_token(&nth_mail(smtp, ada_email, VERIFY_SUBJECT, 2).await);
    let verify = |token: &str| pb::VerifyEmailRequest { token: token.into() };
    assert!(
        auth.verify_email(verify(&link))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email_verified
    );
    assert_error(
        auth.verify_email(verify(&unknown_token(TokenKind::EmailVerification)))
            .await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );

    // UpdateMe: a change, and a username another account holds.
    let update = |user: pb::User, paths: &[&str]| {
        with_bearer(
            pb::UpdateMeRequest {
                user: Some(user),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            &live.access_token,
        )
    };
    let renamed = pb::User {
        full_name: "Ada Lovelace".into(),
        ..Default::default()
    };
    auth.update_me(update(renamed, &["full_name"])).await.unwrap();
    let taken = pb::User {
        username: "seed_2".into(),
        ..Default::default()
    };
    assert_error(
        auth.update_me(update(taken, &["username"])).await,
        Code::AlreadyExists,
        "USERNAME_TAKEN",
    );

    // ChangeEmail: a wrong password, then a move confirmed by its link.
    let new_email = "ada.lovelace@plans.example";
    let change_email = |password: &str| {
        with_bearer(
            pb::ChangeEmailRequest {
                new_email: new_email.into(),
                current_password: password.into(),
            },
            &live.access_token,
        )
    };
    assert_error(
        auth.change_email(change_email("wrong wrong wrong")).await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    auth.change_email(change_email(ada_password)).await.unwrap();
    let link = link_token(&nth_mail(smtp, new_email, CHANGE_SUBJECT, 1).await);
    assert_eq!(
        auth.verify_email(verify(&link))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email,
        new_email
    );

    // ForgotPassword for an account and for no account; ResetPassword with
    // the mailed token and with a bad one.
    let forgot = |email: &str| pb::ForgotPasswordRequest { email: email.into() };
    auth.forgot_password(forgot(new_email)).await.unwrap();
    auth.forgot_password(forgot("nobody@plans.example"))
        .await
        .unwrap();
    let reset_mail = nth_mail(smtp, new_email, "Reset your password", 1).await;
    let reset = |token: &str| pb::ResetPasswordRequest {
        token: token.into(),
        new_password: "yet another passphrase for ada".into(),
    };
    assert_error(
        auth.reset_password(reset(&unknown_token(TokenKind::PasswordReset)))
            .await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    auth.reset_password(reset(&reset_mail.reset_token()))
        .await
        .unwrap();
    let ada_password = "yet another passphrase for ada";

    // Sessions: list, end one, end an unknown one, end the others.
    let current = app.login(new_email, ada_password).await.unwrap().tokens.unwrap();
    let other = app.login(new_email, ada_password).await.unwrap().tokens.unwrap();
    app.login(new_email, ada_password).await.unwrap();
    let sessions = auth
        .list_sessions(with_bearer(pb::ListSessionsRequest {}, &current.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    let revoke = |id: &str| {
        with_bearer(
            pb::RevokeSessionRequest {
                session_id: id.into(),
            },
            &current.access_token,
        )
    };
    let other_id = session_of(&other.access_token);
    auth.revoke_session(revoke(&other_id)).await.unwrap();
    assert_error(
        auth.revoke_session(revoke(&uuid::Uuid::new_v4().to_string()))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let ended = auth
        .revoke_other_sessions(with_bearer(
            pb::RevokeOtherSessionsRequest {},
            &current.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(ended, 1);

    // DeleteMe: a wrong password, then a seeded account with its history.
    let delete = |token: &str, password: &str| {
        with_bearer(
            pb::DeleteMeRequest {
                current_password: password.into(),
            },
            token,
        )
    };
    assert_error(
        auth.delete_me(delete(&current.access_token, "wrong wrong wrong"))
            .await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    let doomed = app
        .login(&seeded_email(12), SEEDED_PASSWORD)
        .await
        .unwrap()
        .tokens
        .unwrap();
    auth.delete_me(delete(&doomed.access_token, SEEDED_PASSWORD))
        .await
        .unwrap();

    // Second factors: an app enrolled and confirmed, a Login that asks for
    // a second factor, a wrong and a right recovery code, the list, StepUp,
    // new recovery codes, the factor removed.
    let cy_email = "cy@plans.example";
    app.register(cy_email, PASSWORD).await;
    let cy = app.tokens_of(cy_email).await;
    let enrolled = auth
        .enroll_totp(with_bearer(pb::EnrollTotpRequest::default(), &cy.access_token))
        .await
        .unwrap()
        .into_inner();
    let confirmed = auth
        .confirm_totp(with_bearer(
            pb::ConfirmTotpRequest {
                enrollment_id: enrolled.enrollment_id,
                code: crate::totp::code_now(&enrolled.secret),
            },
            &cy.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let challenge = app.login(cy_email, PASSWORD).await.unwrap().mfa_required.unwrap();
    let complete = |code: &str| pb::CompleteLoginRequest {
        mfa_token: challenge.mfa_token.clone(),
        proof: Some(pb::complete_login_request::Proof::RecoveryCode(code.into())),
    };
    assert_error(
        auth.complete_login(complete("aaaa-aaaa-aaaa-aaaa")).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let fresh = auth
        .complete_login(complete(&confirmed.recovery_codes[0]))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let factors = auth
        .list_factors(with_bearer(pb::ListFactorsRequest {}, &fresh.access_token))
        .await
        .unwrap()
        .into_inner()
        .factors;
    auth.step_up(with_bearer(
        pb::StepUpRequest {
            proof: Some(pb::step_up_request::Proof::RecoveryCode(
                confirmed.recovery_codes[1].clone(),
            )),
        },
        &cy.access_token,
    ))
    .await
    .unwrap();
    auth.regenerate_recovery_codes(with_bearer(
        pb::RegenerateRecoveryCodesRequest {},
        &fresh.access_token,
    ))
    .await
    .unwrap();
    auth.remove_factor(with_bearer(
        pb::RemoveFactorRequest {
            factor_id: factors[0].id.clone(),
        },
        &fresh.access_token,
    ))
    .await
    .unwrap();

    // Passkeys: one registered (and a finish with an unknown ceremony), a
    // passwordless login (and its ceremony replayed), logins naming the
    // account and naming nobody, the passkey as the second factor of a
    // password login and of a step-up, then removed.
    let dee_email = "dee@plans.example";
    app.register(dee_email, PASSWORD).await;
    let dee = app.tokens_of(dee_email).await;
    let mut dee_key = SoftKey::new();
    let passkey = register_passkey(app, &dee.access_token, &mut dee_key).await;
    // The registration proved a factor: the session's next token says so.
    let dee = app.refresh(&dee.refresh_token).await.unwrap();
    let started = auth
        .start_passkey_registration(with_bearer(
            pb::StartPasskeyRegistrationRequest::default(),
            &dee.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut spare = SoftKey::new();
    let credential = spare.create(started.options.as_ref().unwrap());
    assert_error(
        auth.finish_passkey_registration(with_bearer(
            pb::FinishPasskeyRegistrationRequest {
                ceremony_id: unknown_ceremony_id(),
                credential: Some(to_struct(credential)),
            },
            &dee.access_token,
        ))
        .await,
        Code::NotFound,
        "CEREMONY_EXPIRED",
    );
    let alone = passkey_login(app, &mut dee_key).await.unwrap();
    assert_eq!(alone.user.unwrap().email, dee_email);
    let started = auth
        .start_passkey_login(pb::StartPasskeyLoginRequest::default())
        .await
        .unwrap()
        .into_inner();
    let assertion = to_struct(dee_key.get(started.options.as_ref().unwrap()));
    let finish = |ceremony_id: &str| pb::FinishPasskeyLoginRequest {
        ceremony_id: ceremony_id.into(),
        credential: Some(assertion.clone()),
    };
    auth.finish_passkey_login(finish(&started.ceremony_id))
        .await
        .unwrap();
    assert_error(
        auth.finish_passkey_login(finish(&started.ceremony_id)).await,
        Code::NotFound,
        "CEREMONY_EXPIRED",
    );
    for login in [dee_email, "seed_14", "nobody@plans.example"] {
        auth.start_passkey_login(pb::StartPasskeyLoginRequest { login: login.into() })
            .await
            .unwrap();
    }
    let challenge = app
        .login(dee_email, PASSWORD)
        .await
        .unwrap()
        .mfa_required
        .unwrap();
    let assertion = dee_key.get(challenge.passkey_options.as_ref().unwrap());
    let second = auth
        .complete_login(pb::CompleteLoginRequest {
            mfa_token: challenge.mfa_token,
            proof: Some(pb::complete_login_request::Proof::PasskeyAssertion(to_struct(
                assertion,
            ))),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let started = auth
        .start_passkey_login(pb::StartPasskeyLoginRequest {
            login: dee_email.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let assertion = dee_key.get(started.options.as_ref().unwrap());
    auth.step_up(with_bearer(
        pb::StepUpRequest {
            proof: Some(pb::step_up_request::Proof::PasskeyAssertion(to_struct(assertion))),
        },
        &dee.access_token,
    ))
    .await
    .unwrap();
    auth.remove_factor(with_bearer(
        pb::RemoveFactorRequest {
            factor_id: passkey.id,
        },
        &second.access_token,
    ))
    .await
    .unwrap();

    // AdminService.
    macro_rules! as_service {
        ($message:expr) => {
            with_bearer($message, &key)
        };
    }
    let mut seeded_ids = BTreeMap::new();
    for n in [3, 10, 13, 16] {
        // The seed's ids are md5('user' || n) as a UUID.
        let id: String = sqlx::query_scalar("SELECT md5('user' || $1)::uuid::text")
            .bind(n.to_string())
            .fetch_one(tester)
            .await
            .unwrap();
        seeded_ids.insert(n, id);
    }
    let seeded_id = |n: i64| seeded_ids[&n].clone();
    let user = admin
        .get_user(as_service!(pb::GetUserRequest {
            user_id: ada.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, new_email);
    assert_error(
        admin
            .get_user(as_service!(pb::GetUserRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let batch = admin
        .batch_get_users(as_service!(pb::BatchGetUsersRequest {
            user_ids: vec![
                ada.id.clone(),
                bob.id.clone(),
                seeded_id(3),
                uuid::Uuid::new_v4().to_string()
            ],
        }))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(batch.len(), 3);
    for lookup in [
        pb::LookupUserRequest {
            email: "SEED5@scale.example".into(),
            ..Default::default()
        },
        pb::LookupUserRequest {
            username: "seed_4".into(),
            ..Default::default()
        },
    ] {
        admin.lookup_user(as_service!(lookup)).await.unwrap();
    }
    assert_error(
        admin
            .lookup_user(as_service!(pb::LookupUserRequest {
                email: "nobody@plans.example".into(),
                ..Default::default()
            }))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let first_page = admin
        .list_users(as_service!(pb::ListUsersRequest {
            page_size: 20,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let second_page = admin
        .list_users(as_service!(pb::ListUsersRequest {
            page_size: 20,
            page_token: first_page.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_page.users.len(), 20);
    let target = seeded_id(13);
    let user_request = |id: &str| pb::DisableUserRequest { user_id: id.into() };
    assert!(
        admin
            .disable_user(as_service!(user_request(&target)))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .disabled
    );
    assert!(
        !admin
            .enable_user(as_service!(pb::EnableUserRequest {
                user_id: target.clone()
            }))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .disabled
    );
    admin
        .set_user_roles(as_service!(pb::SetUserRolesRequest {
            user_id: target.clone(),
            roles: vec!["billing.admin".into()],
        }))
        .await
        .unwrap();
    admin
        .revoke_user_sessions(as_service!(pb::RevokeUserSessionsRequest {
            user_id: seeded_id(10),
        }))
        .await
        .unwrap();
    assert_error(
        admin
            .revoke_user_sessions(as_service!(pb::RevokeUserSessionsRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    admin
        .reset_user_factors(as_service!(pb::ResetUserFactorsRequest {
            user_id: seeded_id(16),
        }))
        .await
        .unwrap();
    // WatchRevocations from the present (a heartbeat) and from a cursor a
    // few events back (the events after it).
    let mut present = admin
        .watch_revocations(as_service!(pb::WatchRevocationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let head = present.message().await.unwrap().unwrap().event_id;
    let mut behind = admin
        .watch_revocations(as_service!(pb::WatchRevocationsRequest {
            after_event_id: head - 3,
            since: None,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // (Heartbeats skipped.)
    let mut events = Vec::new();
    while events.len() < 3 {
        let message = behind.message().await.unwrap().unwrap();
        if message.kind != pb::RevocationKind::Heartbeat as i32 {
            events.push(message.event_id);
        }
    }
    assert_eq!(events, [head - 2, head - 1, head]);
    // And from a time: the first event at or after it.
    let mut since = admin
        .watch_revocations(as_service!(pb::WatchRevocationsRequest {
            after_event_id: 0,
            since: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 600,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    since.message().await.unwrap().unwrap();
}
