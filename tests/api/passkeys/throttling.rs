//! Failed passkey finishes are charged per client address (IPv6 by /64),
//! ten free and then the login back-off (1 s doubling), on every replica; a success
//! forgives them.

use super::*;

pub fn from<T>(client: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    request
}

pub async fn finish_login_from(
    app: &TestApp,
    client: &str,
    ceremony_id: &str,
    credential: Value,
) -> Result<pb::FinishPasskeyLoginResponse, Status> {
    app.client
        .clone()
        .finish_passkey_login(from(
            client,
            pb::FinishPasskeyLoginRequest {
                ceremony_id: ceremony_id.into(),
                credential: Some(to_struct(credential)),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn behind_a_proxy() -> TestApp {
    spawn_app_with(|c| {
        c.trusted_proxy_header = Some(http::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await
}

#[track_caller]
fn assert_throttled(result: Result<impl std::fmt::Debug, Status>) {
    let status = assert_error(result, Code::ResourceExhausted, "THROTTLED");
    assert!(retry_delay(&status) > std::time::Duration::ZERO);
}

#[tokio::test]
async fn failed_finishes_from_one_client_are_throttled_after_ten() {
    let app = behind_a_proxy().await;
    let b = {
        let keys = app.config.signing_keys.clone();
        let data_keys = app.config.data_keys.clone();
        spawn_app_on(&app.database_url(), |c| {
            c.signing_keys = keys;
            c.data_keys = data_keys;
            c.trusted_proxy_header = Some(http::header::HeaderName::from_static("x-forwarded-for"));
        })
        .await
    };
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let (_, wrong) = answered(&app, "", &mut holder.key).await;
    let guesser = "203.0.113.7";
    // Everything sent after the failures is made before them: the first
    // wait is 1 s, and the throttled calls must fall within it.
    let (ceremony, right) = answered(&app, "", &mut holder.key).await;
    let started = start_registration(&app, &holder.tokens.access_token)
        .await
        .unwrap();
    let credential = SoftKey::new().create(started.options.as_ref().unwrap());
    let mut registration = from(
        guesser,
        pb::FinishPasskeyRegistrationRequest {
            ceremony_id: started.ceremony_id.clone(),
            credential: Some(to_struct(credential)),
        },
    );
    registration.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", holder.tokens.access_token).parse().unwrap(),
    );
    let before = written(&app).await;
    // Ten free failures, and the eleventh is still checked (it sets the
    // first wait).
    for n in 0..11 {
        let replica = if n % 2 == 0 { &app } else { &b };
        let id = crate::passkey_kit::b64url(&[n; 32]);
        assert_ceremony_expired(finish_login_from(replica, guesser, &id, wrong.clone()).await);
    }
    // The right answer too: the check is not even made.
    assert_throttled(finish_login_from(&b, guesser, &ceremony, right).await);
    // Registration finishes are charged on the same count.
    assert_throttled(app.client.clone().finish_passkey_registration(registration).await);
    assert_nothing_written(&app, &before).await;

    // Another client is not held up by it.
    let (ceremony, right) = answered(&app, "", &mut holder.key).await;
    finish_login_from(&app, "198.51.100.20", &ceremony, right)
        .await
        .expect("another client");
}

#[tokio::test]
async fn addresses_of_one_ipv6_64_share_their_count() {
    let app = behind_a_proxy().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let (_, wrong) = answered(&app, "", &mut holder.key).await;
    // Made before the failures (see above).
    let (ceremony, right) = answered(&app, "", &mut holder.key).await;
    for n in 0..11u8 {
        let id = crate::passkey_kit::b64url(&[n; 32]);
        let client = format!("2001:db8:1:2::{:x}", u32::from(n) + 1);
        assert_ceremony_expired(finish_login_from(&app, &client, &id, wrong.clone()).await);
    }
    assert_throttled(finish_login_from(&app, "2001:db8:1:2:ffff::99", &ceremony, right).await);
    let (ceremony, right) = answered(&app, "", &mut holder.key).await;
    finish_login_from(&app, "2001:db8:1:3::1", &ceremony, right)
        .await
        .expect("another /64");
}

#[tokio::test]
async fn a_success_forgives_the_clients_failures() {
    let app = behind_a_proxy().await;
    let mut holder = passkey_user(&app, SoftKey::new()).await;
    let client = "192.0.2.44";
    let (_, wrong) = answered(&app, "", &mut holder.key).await;
    for round in 0..2u8 {
        for n in 0..9u8 {
            let id = crate::passkey_kit::b64url(&[round * 16 + n; 32]);
            assert_ceremony_expired(finish_login_from(&app, client, &id, wrong.clone()).await);
        }
        let (ceremony, right) = answered(&app, "", &mut holder.key).await;
        finish_login_from(&app, client, &ceremony, right)
            .await
            .expect("the tenth attempt, right");
    }
}

/// Many good logins in flight at once from one address (users behind one
/// NAT) are all served: the budget counts failures once they failed, not
/// every attempt in advance. With twenty finishes charged before their
/// check, ten free, some were refused THROTTLED although every answer held.
#[tokio::test]
async fn many_good_logins_at_once_from_one_address_are_all_served() {
    let app = behind_a_proxy().await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        let mut holder = passkey_user(&app, SoftKey::new()).await;
        answers.push(answered(&app, "", &mut holder.key).await);
    }
    let finishes: Vec<_> = answers
        .into_iter()
        .map(|(ceremony, answer)| {
            let app_client = app.client.clone();
            tokio::spawn(async move {
                app_client
                    .clone()
                    .finish_passkey_login(from(
                        "198.51.100.7",
                        pb::FinishPasskeyLoginRequest {
                            ceremony_id: ceremony,
                            credential: Some(to_struct(answer)),
                        },
                    ))
                    .await
            })
        })
        .collect();
    for finish in finishes {
        finish
            .await
            .unwrap()
            .expect("a good passkey login from a shared address");
    }
}
