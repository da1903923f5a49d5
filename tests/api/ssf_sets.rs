//! The SETs authd signs, judged by a receiver authd did not write
//! (examples/ssf/receiver.py, from the RFCs): every signal is accepted with
//! its subject and payload intact, and the receiver is no pushover: a SET
//! wrong in any one way is refused with RFC 8935's error code.

use std::time::Duration;

use authd::crypto::jwt::AccessTokens;
use authd::crypto::keys::Key;
use authd::domain::{ChangeType, CredentialType, SetEnvelope, Signal, StreamStatus, security_event};
use authd_token_rules::SecurityEvent;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

use crate::helpers::*;
use crate::ssf_receiver_kit::{Poll, PushReceiver, jwks_url, run_poll};

/// The stream's audience: the receiver's, not authd's own.
const STREAM_AUDIENCE: &str = "https://receiver.example/ssf";
const AUTHORIZATION: &str = "Bearer receiver-secret";

/// The app's signer, built from its own key as `Application` builds it.
fn signer(app: &TestApp) -> AccessTokens {
    let key = Key::from_pkcs8_pem(&app.signing_pem).unwrap();
    AccessTokens::new(
        vec![key],
        &app.config.issuer,
        &app.config.audience,
        Duration::from_secs(900),
    )
    .unwrap()
}

fn every_signal() -> Vec<Signal> {
    let credential = |credential_type, change_type| Signal::CredentialChange {
        credential_type,
        change_type,
    };
    vec![
        Signal::SessionRevoked { session: None },
        Signal::SessionRevoked {
            session: Some(Uuid::new_v4()),
        },
        credential(CredentialType::Password, ChangeType::Update),
        credential(CredentialType::App, ChangeType::Create),
        credential(CredentialType::Fido2Platform, ChangeType::Delete),
        credential(CredentialType::RecoveryCode, ChangeType::Revoke),
        Signal::TokenClaimsChange {
            roles: vec!["admin".to_owned(), "support".to_owned()],
        },
        Signal::TokenClaimsChange { roles: vec![] },
        Signal::AccountDisabled,
        Signal::AccountEnabled,
        Signal::AccountPurged,
        Signal::IdentifierChanged,
        Signal::Verification {
            state: Some("verify-me".to_owned()),
        },
        Signal::Verification { state: None },
        Signal::StreamUpdated {
            status: StreamStatus::Paused,
            reason: Some("paused by the receiver".to_owned()),
        },
        Signal::StreamUpdated {
            status: StreamStatus::Disabled,
            reason: None,
        },
    ]
}

fn event(app: &TestApp, signal: &Signal, audience: &str) -> SecurityEvent {
    security_event(
        signal,
        SetEnvelope {
            issuer: &app.config.issuer,
            audience,
            jti: Uuid::new_v4().to_string(),
            iat: chrono::Utc::now().timestamp(),
            txn: Some(Uuid::new_v4().to_string()),
            user_id: Some(Uuid::new_v4()),
            stream_id: Some(Uuid::new_v4()),
            event_time: chrono::Utc::now().timestamp() - 5,
        },
    )
}

/// Signs `claims` under `header` with the app's key, for SETs authd's own
/// signer would never make.
fn sign_raw(app: &TestApp, header: &Header, claims: &Value) -> String {
    let encoding = match header.alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(app.signing_pem.as_bytes()),
        _ => EncodingKey::from_ed_pem(app.signing_pem.as_bytes()),
    };
    jsonwebtoken::encode(header, claims, &encoding.unwrap()).unwrap()
}

fn set_header(app: &TestApp, typ: &str) -> Header {
    let key = Key::from_pkcs8_pem(&app.signing_pem).unwrap();
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    header.typ = Some(typ.to_owned());
    header
}

async fn receiver(app: &TestApp) -> Option<PushReceiver> {
    PushReceiver::spawn(
        &jwks_url(app.addr),
        &app.config.issuer,
        STREAM_AUDIENCE,
        Some(AUTHORIZATION),
    )
    .await
}

#[tokio::test]
async fn every_signal_is_accepted_by_the_independent_receiver() {
    let app = spawn_app().await;
    let Some(receiver) = receiver(&app).await else {
        return;
    };
    let tokens = signer(&app);
    let mut sent = Vec::new();
    for signal in every_signal() {
        let event = event(&app, &signal, STREAM_AUDIENCE);
        let set = tokens.sign_event(&event).unwrap();
        let answer = receiver.post(&set, Some(AUTHORIZATION)).await;
        assert_eq!(
            answer.status,
            202,
            "{signal:?} refused: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(answer.body.is_empty(), "RFC 8935 §2.2: no body with 202");
        sent.push(event);
    }
    let received = receiver.received();
    assert_eq!(received.len(), sent.len(), "rejected: {:?}", receiver.rejected());
    for (line, event) in received.iter().zip(&sent) {
        assert_eq!(line["jti"], event.jti.as_str());
        assert_eq!(line["txn"], json!(event.txn));
        assert_eq!(line["iat"], event.iat);
        assert_eq!(line["sub_id"], event.sub_id.clone().unwrap());
        assert_eq!(line["events"], Value::Object(event.events.clone()));
    }
}

#[tokio::test]
async fn a_set_wrong_in_one_way_is_refused_with_rfc_8935s_error() {
    let app = spawn_app().await;
    let Some(receiver) = receiver(&app).await else {
        return;
    };
    let tokens = signer(&app);
    let good = event(&app, &Signal::AccountDisabled, STREAM_AUDIENCE);
    let good_claims = serde_json::to_value(&good).unwrap();
    let with = |member: &str, value: Value| {
        let mut claims = good_claims.clone();
        claims[member] = value;
        claims
    };
    let secevent = set_header(&app, "secevent+jwt");

    let mut tampered = tokens.sign_event(&good).unwrap().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let mut unknown = good.clone();
    unknown.events = serde_json::Map::from_iter([(
        "https://schemas.openid.net/secevent/caep/event-type/session-revoke".to_owned(),
        json!({"event_timestamp": good.iat}),
    )]);
    let mut credential = event(
        &app,
        &Signal::CredentialChange {
            credential_type: CredentialType::Password,
            change_type: ChangeType::Update,
        },
        STREAM_AUDIENCE,
    );
    for payload in credential.events.values_mut() {
        payload["change_type"] = json!("reset");
    }
    let stranger = AccessTokens::new(
        vec![Key::from_pkcs8_pem(&authd::crypto::keys::generate_ed25519_pem().unwrap()).unwrap()],
        &app.config.issuer,
        &app.config.audience,
        Duration::from_secs(900),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "the control: the same SET, unaltered",
            sign_raw(&app, &secevent, &good_claims),
            "",
        ),
        (
            "another stream's audience",
            tokens
                .sign_event(&event(
                    &app,
                    &Signal::AccountDisabled,
                    "https://someone-else.example",
                ))
                .unwrap(),
            "invalid_audience",
        ),
        (
            "another issuer",
            sign_raw(&app, &secevent, &with("iss", json!("https://not-authd.example"))),
            "invalid_issuer",
        ),
        (
            "typ JWT",
            sign_raw(&app, &set_header(&app, "JWT"), &good_claims),
            "invalid_request",
        ),
        (
            "typ at+jwt",
            sign_raw(&app, &set_header(&app, "at+jwt"), &good_claims),
            "invalid_request",
        ),
        (
            "a tampered signature",
            String::from_utf8(tampered).unwrap(),
            "authentication_failed",
        ),
        (
            "an event URI misspelt",
            tokens.sign_event(&unknown).unwrap(),
            "invalid_request",
        ),
        (
            "an exp",
            sign_raw(&app, &secevent, &with("exp", json!(good.iat + 60))),
            "invalid_request",
        ),
        (
            "no sub_id",
            sign_raw(
                &app,
                &secevent,
                &Value::Object(
                    good_claims
                        .as_object()
                        .unwrap()
                        .iter()
                        .filter(|(k, _)| *k != "sub_id")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
            ),
            "invalid_request",
        ),
        (
            "an iss_sub without its sub",
            sign_raw(
                &app,
                &secevent,
                &with("sub_id", json!({"format": "iss_sub", "iss": app.config.issuer})),
            ),
            "invalid_request",
        ),
        (
            "a change_type CAEP does not define",
            tokens.sign_event(&credential).unwrap(),
            "invalid_request",
        ),
        (
            "a key the JWKS does not list",
            stranger.sign_event(&good).unwrap(),
            "invalid_key",
        ),
    ];
    for (what, set, err) in &cases {
        let answer = receiver.post(set, Some(AUTHORIZATION)).await;
        if err.is_empty() {
            assert_eq!(
                answer.status,
                202,
                "{what}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            continue;
        }
        assert_eq!(answer.status, 400, "{what}");
        let body = answer.json();
        assert_eq!(body["err"], *err, "{what}: {body}");
        assert!(body["description"].is_string(), "{what}: {body}");
    }
    let refused = cases.iter().filter(|(_, _, err)| !err.is_empty()).count();
    assert_eq!(receiver.received().len(), 1, "only the control");
    let rejected = receiver.rejected();
    assert_eq!(rejected.len(), refused);
    for (line, (what, _, err)) in rejected
        .iter()
        .zip(cases.iter().filter(|(_, _, e)| !e.is_empty()))
    {
        assert_eq!(line["rejected"], *err, "{what}");
    }
}

#[tokio::test]
async fn the_receiver_refuses_a_transmitter_without_its_authorization_or_media_type() {
    let app = spawn_app().await;
    let Some(receiver) = receiver(&app).await else {
        return;
    };
    let set = signer(&app)
        .sign_event(&event(&app, &Signal::AccountEnabled, STREAM_AUDIENCE))
        .unwrap();
    assert_eq!(receiver.post(&set, None).await.status, 401);
    assert_eq!(receiver.post(&set, Some("Bearer guess")).await.status, 401);
    let wrong_type = receiver
        .post_as(&set, "application/jwt", Some(AUTHORIZATION))
        .await;
    assert_eq!(wrong_type.status, 400);
    assert_eq!(wrong_type.json()["err"], "invalid_request");
    assert!(receiver.received().is_empty());
    // The same SET, delivered properly, is fine: only the delivery was wrong.
    assert_eq!(receiver.post(&set, Some(AUTHORIZATION)).await.status, 202);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_restarted_receiver_keeps_its_port_and_its_record() {
    let app = spawn_app().await;
    let Some(mut receiver) = receiver(&app).await else {
        return;
    };
    let tokens = signer(&app);
    let first = tokens
        .sign_event(&event(&app, &Signal::AccountPurged, STREAM_AUDIENCE))
        .unwrap();
    assert_eq!(receiver.post(&first, Some(AUTHORIZATION)).await.status, 202);
    receiver.kill().await;
    let down = crate::http1::Request::new("POST", "/events")
        .try_send(receiver.addr)
        .await;
    assert!(down.is_err(), "nothing listens while it is down");
    let url = receiver.url.clone();
    receiver.restart_same_port().await;
    assert_eq!(receiver.url, url, "a transmitter finds it where it was");
    // The same SET again: a receiver records duplicates, tests count them.
    assert_eq!(receiver.post(&first, Some(AUTHORIZATION)).await.status, 202);
    let received = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 2);
    assert_eq!(received[0]["jti"], received[1]["jti"]);
}

/// A stand-in poll endpoint, for the receiver's side of RFC 8936 alone:
/// it checks that receiver.py sends the requests the RFC describes (acks,
/// `setErrs`, `maxEvents`) and reads the answers it gets. It says nothing
/// of authd's own poll endpoint, which has tests of its own.
struct FakePollServer {
    addr: std::net::SocketAddr,
    requests: tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
}

impl FakePollServer {
    /// Answers the n-th request with `answers[n]`, `{"sets": {}}` after.
    async fn start(answers: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let (head, body) = loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..at]).into_owned();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.split_once(':')
                                    .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                            })
                            .map_or(0, |(_, v)| v.trim().parse().unwrap());
                        while raw.len() < at + 4 + length {
                            let n = stream.read(&mut buf).await.unwrap();
                            raw.extend_from_slice(&buf[..n]);
                        }
                        break (head, raw[at + 4..at + 4 + length].to_vec());
                    }
                    assert!(n > 0, "connection closed mid-request");
                };
                tx.send((head, serde_json::from_slice(&body).unwrap())).unwrap();
                let answer = answers
                    .next()
                    .unwrap_or_else(|| json!({"sets": {}, "moreAvailable": false}))
                    .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
            }
        });
        Self { addr, requests }
    }
}

#[tokio::test]
async fn the_poll_receiver_acknowledges_what_it_recorded_and_reports_what_it_refused() {
    let app = spawn_app().await;
    let tokens = signer(&app);
    let good = event(&app, &Signal::IdentifierChanged, STREAM_AUDIENCE);
    let other_stream = event(&app, &Signal::IdentifierChanged, "https://someone-else.example");
    let second = event(&app, &Signal::AccountEnabled, STREAM_AUDIENCE);
    let batch = |events: &[&SecurityEvent], more: bool| {
        let sets: serde_json::Map<String, Value> = events
            .iter()
            .map(|e| (e.jti.clone(), json!(tokens.sign_event(e).unwrap())))
            .collect();
        json!({"sets": sets, "moreAvailable": more})
    };
    let mut server = FakePollServer::start(vec![
        batch(&[&good, &other_stream], true),
        batch(&[&second], false),
    ])
    .await;
    let url = format!("http://{}/ssf/poll", server.addr);
    let jwks = jwks_url(app.addr);
    let Some(run) = run_poll(&Poll {
        url: &url,
        authorization: AUTHORIZATION,
        issuer: &app.config.issuer,
        audience: STREAM_AUDIENCE,
        jwks_url: &jwks,
        max_events: 5,
        return_immediately: false,
        until: Some(2),
        timeout: Duration::from_secs(30),
        expect_state: None,
    })
    .await
    else {
        return;
    };
    assert_eq!(run.exit_code, 0, "{}", run.stderr);
    let received: Vec<&Value> = run.received().into_iter().map(|l| &l["jti"]).collect();
    assert_eq!(received, [&json!(good.jti), &json!(second.jti)]);
    assert_eq!(run.rejected().len(), 1);
    assert_eq!(run.rejected()[0]["rejected"], "invalid_audience");

    let (head, first) = server.requests.recv().await.unwrap();
    assert!(head.starts_with("POST /ssf/poll "), "{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: {AUTHORIZATION}"))),
        "{head}"
    );
    assert_eq!(
        first,
        json!({"maxEvents": 5, "returnImmediately": false, "ack": []})
    );
    // RFC 8936 §2.4: the next request acknowledges the batch before and
    // reports the SET it refused.
    let (_, next) = server.requests.recv().await.unwrap();
    assert_eq!(
        next,
        json!({
            "maxEvents": 5, "returnImmediately": false, "ack": [good.jti],
            "setErrs": {other_stream.jti.clone(): next["setErrs"][&other_stream.jti].clone()},
        })
    );
    assert_eq!(next["setErrs"][&other_stream.jti]["err"], "invalid_audience");
    // The last batch is acknowledged without asking for more.
    let (_, last) = server.requests.recv().await.unwrap();
    assert_eq!(
        last,
        json!({"maxEvents": 0, "returnImmediately": true, "ack": [second.jti]})
    );
    assert!(server.requests.try_recv().is_err(), "nothing after the final ack");
}

#[tokio::test]
async fn a_verification_is_accepted_only_with_the_state_the_receiver_asked_for() {
    let app = spawn_app().await;
    let Some(receiver) = PushReceiver::spawn_expecting(
        &jwks_url(app.addr),
        &app.config.issuer,
        STREAM_AUDIENCE,
        None,
        Some("asked-for"),
    )
    .await
    else {
        return;
    };
    let tokens = signer(&app);
    let verification = |state: Option<&str>| {
        let signal = Signal::Verification {
            state: state.map(str::to_owned),
        };
        tokens.sign_event(&event(&app, &signal, STREAM_AUDIENCE)).unwrap()
    };
    for wrong in [None, Some("something-else")] {
        let answer = receiver.post(&verification(wrong), None).await;
        assert_eq!(answer.status, 400, "{wrong:?}");
        assert_eq!(answer.json()["err"], "invalid_state", "{wrong:?}");
    }
    assert_eq!(
        receiver.post(&verification(Some("asked-for")), None).await.status,
        202
    );
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0]["events"]["https://schemas.openid.net/secevent/ssf/event-type/verification"]["state"],
        "asked-for"
    );
}
