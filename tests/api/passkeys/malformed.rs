//! Answers that are not a PublicKeyCredential's JSON: INVALID_ARGUMENT
//! naming the field, never INTERNAL, before any ceremony is used up or any
//! failure charged; and any input at all gets a clean answer.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::json;

use super::throttling::{behind_a_proxy, from};
use super::*;

/// Credentials that are not an answer's JSON (besides a missing one).
fn malformed_credentials(real: &Value) -> Vec<(&'static str, Value)> {
    let mut missing_response = real.clone();
    missing_response.as_object_mut().unwrap().remove("response");
    let mut missing_raw_id = real.clone();
    missing_raw_id.as_object_mut().unwrap().remove("rawId");
    let mut bad_base64 = real.clone();
    bad_base64["rawId"] = "not base64!".into();
    let mut standard_base64 = real.clone();
    standard_base64["response"]["clientDataJSON"] = "a+b/c===".into();
    let mut wrong_type = real.clone();
    wrong_type["response"] = json!(["a list"]);
    // Large, but within the transport's 64 KiB (beyond it the message is
    // OUT_OF_RANGE MESSAGE_TOO_LARGE before any handler runs).
    let mut huge = real.clone();
    huge["rawId"] = "!".repeat(48 * 1024).into();
    vec![
        ("empty", json!({})),
        ("a number as id", json!({"id": 5})),
        ("missing response", missing_response),
        ("missing rawId", missing_raw_id),
        ("invalid base64", bad_base64),
        ("standard base64", standard_base64),
        ("response not an object", wrong_type),
        ("huge", huge),
    ]
}

#[track_caller]
fn assert_names_field(result: Result<impl std::fmt::Debug, Status>, field: &str, case: &str) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert_eq!(reason(&status), "INVALID_ARGUMENT", "{case}: {status:?}");
    assert_eq!(
        violated_fields(&status),
        vec![field.to_owned()],
        "{case}: {status:?}"
    );
}

#[tokio::test]
async fn malformed_credentials_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let access = holder.tokens.access_token.clone();
    let (ceremony, assertion) = answered(&app, "", &mut holder.key).await;
    let registration = start_registration(&app, &access).await.unwrap();
    let credential = SoftKey::new().create(registration.options.as_ref().unwrap());
    let unknown = crate::passkey_kit::b64url(&[9u8; 32]);
    let before = written(&app).await;

    for (case, bad) in malformed_credentials(&assertion) {
        assert_names_field(
            finish_login(&app, &ceremony, bad.clone()).await,
            "credential",
            case,
        );
        assert_names_field(finish_login(&app, &unknown, bad).await, "credential", case);
    }
    for (case, bad) in malformed_credentials(&credential) {
        assert_names_field(
            finish_registration(&app, &access, &registration.ceremony_id, bad.clone()).await,
            "credential",
            case,
        );
        assert_names_field(
            finish_registration(&app, &access, &unknown, bad).await,
            "credential",
            case,
        );
    }
    // Beyond the transport's limit.
    let mut oversized = assertion.clone();
    oversized["rawId"] = "A".repeat(256 * 1024).into();
    assert_error(
        finish_login(&app, &ceremony, oversized).await,
        Code::OutOfRange,
        "MESSAGE_TOO_LARGE",
    );
    // A missing credential.
    let missing = app
        .client
        .clone()
        .finish_passkey_login(pb::FinishPasskeyLoginRequest {
            ceremony_id: ceremony.clone(),
            credential: None,
        })
        .await;
    assert_eq!(
        field_reasons(&missing.unwrap_err()),
        pairs(&[("credential", "REQUIRED")])
    );
    // Second factors: the same for `passkey_assertion`.
    // (One Login: its token is not spent by answers that do not parse.)
    let challenge = crate::factors::challenge(&app, &holder.email).await;
    for (case, bad) in malformed_credentials(&assertion) {
        assert_names_field(
            crate::factors::complete(
                &app,
                &challenge.mfa_token,
                pb::complete_login_request::Proof::PasskeyAssertion(to_struct(bad.clone())),
            )
            .await,
            "passkey_assertion",
            case,
        );
        assert_names_field(
            crate::factors::step_up(
                &app,
                &access,
                pb::step_up_request::Proof::PasskeyAssertion(to_struct(bad)),
            )
            .await,
            "passkey_assertion",
            case,
        );
    }

    // Nothing was used up or charged: both ceremonies still finish.
    assert_nothing_written(&app, &before).await;
    finish_login(&app, &ceremony, assertion)
        .await
        .expect("the login ceremony is still there");
    finish_registration(&app, &access, &registration.ceremony_id, credential)
        .await
        .expect("the registration ceremony is still there");
    let charged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM login_throttle WHERE key LIKE 'passkey:%' AND failures > 0")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(charged, 0);
}

#[tokio::test]
async fn a_missing_or_malformed_ceremony_id_is_invalid_argument() {
    let app = spawn_app().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let access = holder.tokens.access_token.clone();
    let (_, answer) = answered(&app, "", &mut holder.key).await;
    let registration = start_registration(&app, &access).await.unwrap();
    let credential = SoftKey::new().create(registration.options.as_ref().unwrap());
    for (id, expected) in [
        ("", "REQUIRED"),
        ("   ", "REQUIRED"),
        ("not a ceremony!", "INVALID_FORMAT"),
        ("AAAA", "INVALID_FORMAT"),
    ] {
        let login = finish_login(&app, id, answer.clone()).await.unwrap_err();
        assert_eq!(login.code(), Code::InvalidArgument, "{id:?}");
        assert_eq!(
            field_reasons(&login),
            pairs(&[("ceremony_id", expected)]),
            "{id:?}"
        );
        let registration = finish_registration(&app, &access, id, credential.clone())
            .await
            .unwrap_err();
        assert_eq!(registration.code(), Code::InvalidArgument, "{id:?}");
        assert_eq!(
            field_reasons(&registration),
            pairs(&[("ceremony_id", expected)]),
            "{id:?}"
        );
    }
}

fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "id", "rawId", "type", "response", "clientDataJSON", "authenticatorData",
            "signature", "userHandle", "attestationObject", "transports", "extensions",
            "clientExtensionResults", "authenticatorAttachment", "publicKey",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z_]{0,10}",
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::String),
        "[A-Za-z0-9_-]{0,200}".prop_map(Value::String),
        "[A-Za-z0-9+/=]{0,64}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Where in a real answer an arbitrary value goes (or what is removed).
const PLACES: [&[&str]; 9] = [
    &["id"],
    &["rawId"],
    &["type"],
    &["response"],
    &["response", "clientDataJSON"],
    &["response", "authenticatorData"],
    &["response", "signature"],
    &["response", "userHandle"],
    &["response", "attestationObject"],
];

#[derive(Debug, Clone)]
enum Credential {
    Arbitrary(Value),
    /// A real answer with one place set to a value (removed when `None`).
    Mutated(usize, Option<Value>),
}

#[derive(Debug, Clone)]
enum CeremonyId {
    Arbitrary(String),
    Bytes(Vec<u8>),
    /// A ceremony started for this case.
    Fresh,
}

fn ceremony_id() -> impl Strategy<Value = CeremonyId> {
    prop_oneof![
        1 => ".{0,80}".prop_map(CeremonyId::Arbitrary),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(CeremonyId::Bytes),
        2 => Just(CeremonyId::Fresh),
    ]
}

fn credential() -> impl Strategy<Value = Credential> {
    prop_oneof![
        1 => any_json().prop_map(Credential::Arbitrary),
        2 => (0..PLACES.len(), prop::option::of(any_json())).prop_map(|(p, v)| Credential::Mutated(p, v)),
    ]
}

fn build(template: &Value, c: &Credential) -> Value {
    match c {
        Credential::Arbitrary(v) => v.clone(),
        Credential::Mutated(place, value) => {
            let mut out = template.clone();
            let path = PLACES[*place];
            let (last, parents) = path.split_last().unwrap();
            let mut at = &mut out;
            for p in parents {
                at = &mut at[*p];
            }
            if let Some(object) = at.as_object_mut() {
                match value {
                    Some(v) => {
                        object.insert((*last).to_owned(), v.clone());
                    }
                    None => {
                        object.remove(*last);
                    }
                }
            }
            out
        }
    }
}

#[test]
fn arbitrary_answers_to_the_finish_calls_get_a_clean_refusal() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, access, assertion, registration) = rt.block_on(async {
        let app = behind_a_proxy().await;
        let mut holder = passkey_user(&app, SoftKey::new()).await;
        let (_, assertion) = answered(&app, "", &mut holder.key).await;
        let started = start_registration(&app, &holder.tokens.access_token)
            .await
            .unwrap();
        let registration = SoftKey::new().create(started.options.as_ref().unwrap());
        (app, holder.tokens.access_token.clone(), assertion, registration)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = std::cell::Cell::new(0u32);
    runner
        .run(
            &(ceremony_id(), credential(), any::<bool>()),
            |(id, c, register)| {
                case.set(case.get() + 1);
                // Each case from its own address: the throttle is another test's.
                let client = format!("10.{}.{}.1", case.get() / 256, case.get() % 256);
                let answer = rt.block_on(async {
                    let id = match &id {
                        CeremonyId::Arbitrary(s) => s.clone(),
                        CeremonyId::Bytes(b) => crate::passkey_kit::b64url(b),
                        CeremonyId::Fresh if register => {
                            start_registration(&app, &access).await.unwrap().ceremony_id
                        }
                        CeremonyId::Fresh => start_login(&app, "").await.ceremony_id,
                    };
                    let mut c_ = app.client.clone();
                    if register {
                        let mut request = from(
                            &client,
                            pb::FinishPasskeyRegistrationRequest {
                                ceremony_id: id,
                                credential: Some(to_struct(build(&registration, &c))),
                            },
                        );
                        request
                            .metadata_mut()
                            .insert("authorization", format!("Bearer {access}").parse().unwrap());
                        c_.finish_passkey_registration(request).await.map(|_| ())
                    } else {
                        c_.finish_passkey_login(from(
                            &client,
                            pb::FinishPasskeyLoginRequest {
                                ceremony_id: id,
                                credential: Some(to_struct(build(&assertion, &c))),
                            },
                        ))
                        .await
                        .map(|_| ())
                    }
                });
                let status = match answer {
                    Ok(()) => return Err(TestCaseError::fail("an arbitrary answer was accepted")),
                    Err(s) => s,
                };
                let clean = [Code::InvalidArgument, Code::Unauthenticated, Code::NotFound];
                if !clean.contains(&status.code()) || reason(&status).is_empty() {
                    return Err(TestCaseError::fail(format!("{status:?}")));
                }
                if status.code() == Code::InvalidArgument
                    && reason(&status) == "INVALID_ARGUMENT"
                    && violated_fields(&status).is_empty()
                {
                    return Err(TestCaseError::fail(format!("no field named: {status:?}")));
                }
                Ok(())
            },
        )
        .unwrap();
    // Nothing the cases sent was stored: the holder's one passkey only.
    let stored: i64 = rt.block_on(async {
        sqlx::query_scalar("SELECT count(*) FROM passkeys")
            .fetch_one(&app.db)
            .await
            .unwrap()
    });
    assert_eq!(stored, 1);
}

/// Authenticators that say anything in their signed data (any flags, any
/// credential id length, any counter): a registration is stored or
/// INVALID_ARGUMENT PASSKEY_INVALID, a login succeeds or is UNAUTHENTICATED
/// PASSKEY_INVALID, never anything else.
#[test]
fn arbitrary_authenticator_data_gets_a_clean_answer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, holder) = rt.block_on(async {
        let app = behind_a_proxy().await;
        let holder = passkey_user(&app, RawKey::new()).await;
        (app, holder)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = std::cell::Cell::new(0u32);
    let strategy = (
        any::<u8>(),
        prop_oneof![0..40usize, 1000..1100usize, 0..1100usize],
        any::<u8>(),
        any::<u32>(),
    );
    runner
        .run(&strategy, |(registration_flags, id_len, login_flags, counter)| {
            case.set(case.get() + 1);
            let client = format!("10.200.{}.{}", case.get() / 256, case.get() % 256);
            let (registered, logged_in) = rt.block_on(async {
                let (_, tokens) = app.signed_in_user().await;
                let mut key = RawKey::new();
                key.credential_id = vec![0x5a; id_len];
                getrandom::getrandom(&mut key.credential_id).unwrap();
                key.flags = Some(registration_flags);
                let started = start_registration(&app, &tokens.access_token).await.unwrap();
                let credential = key.create(started.options.as_ref().unwrap());
                let mut request = from(
                    &client,
                    pb::FinishPasskeyRegistrationRequest {
                        ceremony_id: started.ceremony_id,
                        credential: Some(to_struct(credential)),
                    },
                );
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {}", tokens.access_token).parse().unwrap(),
                );
                let registered = app
                    .client
                    .clone()
                    .finish_passkey_registration(request)
                    .await
                    .map(|_| ());
                let mut signer = holder.key.clone();
                signer.flags = Some(login_flags);
                let started = start_login(&app, "").await;
                let answer = signer.sign(&json(&started.options), counter);
                let logged_in = app
                    .client
                    .clone()
                    .finish_passkey_login(from(
                        &client,
                        pb::FinishPasskeyLoginRequest {
                            ceremony_id: started.ceremony_id,
                            credential: Some(to_struct(answer)),
                        },
                    ))
                    .await
                    .map(|_| ());
                (registered, logged_in)
            });
            if let Err(s) = &registered
                && (s.code(), reason(s).as_str()) != (Code::InvalidArgument, "PASSKEY_INVALID")
            {
                return Err(TestCaseError::fail(format!("registration: {s:?}")));
            }
            if let Err(s) = &logged_in
                && (s.code(), reason(s).as_str()) != (Code::Unauthenticated, "PASSKEY_INVALID")
            {
                return Err(TestCaseError::fail(format!("login: {s:?}")));
            }
            Ok(())
        })
        .unwrap();
}
