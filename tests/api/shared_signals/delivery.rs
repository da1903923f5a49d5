//! Every event kind reaches a push and a poll receiver, in order, once.

use std::collections::HashSet;
use std::time::Duration;

use authd::pb::auth::v1 as pb;
use serde_json::{Value, json};

use super::*;
use crate::factors::add_totp;
use crate::helpers::{TestApp, session_of, with_bearer};
use crate::http1::Request;
use crate::lifecycle::{
    CHANGE_SUBJECT, app_with_mail, change_email, delete_me, link_token, nth_mail, verify,
};
use crate::ssf_receiver_kit::{PushReceiver, jwks_url};

use crate::helpers::PASSWORD;
const NEW_PASSWORD: &str = "another long passphrase for later";

/// What the changes below become, in order.
fn expected() -> Vec<&'static str> {
    vec![
        SESSION_REVOKED,   // Logout
        SESSION_REVOKED,   // ChangePassword ends the other session …
        CREDENTIAL_CHANGE, // … and says the password changed
        IDENTIFIER_CHANGED,
        TOKEN_CLAIMS_CHANGE,
        SESSION_REVOKED, // DisableUser ends the live session …
        ACCOUNT_DISABLED,
        ACCOUNT_ENABLED,
        CREDENTIAL_CHANGE, // ConfirmTotp: an app added
        ACCOUNT_PURGED,    // DeleteMe
    ]
}

/// Makes every change authd reports, for one account; returns its id and
/// the ids of the sessions that were ended, in order.
async fn every_change(app: &TestApp, smtp: &crate::smtp::SmtpServer) -> (String, Vec<String>) {
    let email = crate::helpers::fresh_email();
    let user = app.register(&email, PASSWORD).await;
    let mut ended = Vec::new();
    // Logout: one session ended.
    let first = app.tokens_of(&email).await;
    ended.push(session_of(&first.access_token));
    app.logout(&first.refresh_token).await.unwrap();
    // ChangePassword from one session ends the other.
    let kept = app.tokens_of(&email).await;
    let other = app.tokens_of(&email).await;
    ended.push(session_of(&other.access_token));
    let kept = app
        .change_password(&kept.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .unwrap();
    // A confirmed address change.
    let new_email = crate::helpers::fresh_email();
    change_email(app, &kept.access_token, &new_email, NEW_PASSWORD)
        .await
        .unwrap();
    let token = link_token(&nth_mail(smtp, &new_email, CHANGE_SUBJECT, 1).await);
    verify(app, &token).await.unwrap();
    // Roles, disable, enable, through AdminService.
    let admin = admin_key(app).await;
    app.admin()
        .set_user_roles(with_bearer(
            pb::SetUserRolesRequest {
                user_id: user.id.clone(),
                roles: vec!["editor".into()],
            },
            &admin,
        ))
        .await
        .unwrap();
    ended.push(session_of(&kept.access_token));
    disable(app, &admin, &user.id).await;
    app.admin()
        .enable_user(with_bearer(
            pb::EnableUserRequest {
                user_id: user.id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap();
    // A second factor, then the account deleted by its owner (the new
    // factor just proved the session).
    let again = app
        .login(&new_email, NEW_PASSWORD)
        .await
        .unwrap()
        .tokens
        .expect("tokens");
    add_totp(app, &again.access_token).await;
    let proven = app.refresh(&again.refresh_token).await.unwrap();
    delete_me(app, &proven.access_token, NEW_PASSWORD).await.unwrap();
    (user.id, ended)
}

#[tokio::test]
async fn every_event_kind_reaches_a_push_and_a_poll_receiver_in_order() {
    let (app, smtp) = app_with_mail(|c| {
        c.ssf_allow_private = true;
    })
    .await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let Some(pushed) = receiver(&app, "receiver-a", "Bearer rcv-a").await else {
        return;
    };
    let push = push_stream(&app, &key, &pushed, "Bearer rcv-a").await;
    assert_eq!(push["aud"], "receiver-a");
    assert_eq!(push["iss"], ISSUER);
    assert_eq!(push["delivery"]["authorization_header"], "(set)", "{push}");
    // Kept sealed: the receiver's credential is nowhere in the database.
    assert_eq!(app.rows_holding_text_or_hex("ssf_streams", "rcv-a").await, 0);
    let polled = create_stream(&app, &key, &json!({"delivery": {"method": POLL}})).await;
    assert!(
        polled["delivery"]["endpoint_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{ISSUER}/ssf/poll/")),
        "{polled}"
    );

    let (user_id, ended) = every_change(&app, &smtp).await;
    let expected = expected();

    let received = pushed.wait_for(expected.len(), WAIT).await;
    assert_eq!(event_types(&received), expected, "{received:#?}");
    check_sets(&received, &user_id, &ended);

    let Some(run) = poll_until(&app, &key, &polled, "receiver-a", expected.len() as u32).await else {
        return;
    };
    assert_eq!(run.exit_code, 0, "{}", run.stderr);
    let polled_sets: Vec<Value> = run.received().into_iter().cloned().collect();
    assert_eq!(event_types(&polled_sets), expected, "{polled_sets:#?}");
    check_sets(&polled_sets, &user_id, &ended);
    assert!(run.rejected().is_empty(), "{:?}", run.rejected());

    // Everything was acknowledged: the stream's cursor is at the log's end.
    let (cursor, acked): (i64, Vec<String>) =
        sqlx::query_as("SELECT cursor_event, acked FROM ssf_streams WHERE id = $1::uuid")
            .bind(polled["stream_id"].as_str().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    let head: i64 = sqlx::query_scalar("SELECT last_event_id FROM revocation_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((cursor, acked), (head, vec![]));
    // Pushed exactly once each.
    assert_eq!(pushed.received().len(), expected.len());
}

/// Subjects, `jti`s and `txn`s as the contract says.
fn check_sets(sets: &[Value], user_id: &str, ended: &[String]) {
    let jtis: HashSet<&str> = sets.iter().map(|s| s["jti"].as_str().unwrap()).collect();
    assert_eq!(jtis.len(), sets.len(), "jti unique");
    let mut sessions = Vec::new();
    for set in sets {
        let sub_id = &set["sub_id"];
        let user = if sub_id["format"] == "complex" {
            sessions.push(sub_id["session"]["id"].as_str().unwrap().to_owned());
            &sub_id["user"]
        } else {
            sub_id
        };
        assert_eq!(user["format"], "iss_sub", "{set}");
        assert_eq!(user["iss"], ISSUER);
        assert_eq!(user["sub"], user_id);
    }
    assert_eq!(sessions, ended);
    // ChangePassword's two SETs are one change.
    assert_eq!(sets[1]["txn"], sets[2]["txn"]);
    assert!(sets[1]["txn"].is_string());
    assert_ne!(sets[0]["txn"], sets[1]["txn"]);
    // DisableUser's too.
    assert_eq!(sets[5]["txn"], sets[6]["txn"]);
}

/// The event id a SET's `jti` names (`{event}-{index}-{stream}`).
fn event_of(set: &Value) -> (i64, i64) {
    let jti = set["jti"].as_str().expect("jti");
    let mut parts = jti.split('-');
    let event = parts.next().and_then(|p| p.parse().ok()).expect("event id");
    let index = parts.next().and_then(|p| p.parse().ok()).expect("index");
    (event, index)
}

/// Waits until the (only) stream's cursor has passed `set`: the receiver's
/// 202 reached authd. A receiver killed after recording a SET but before
/// its answer arrived is rightly sent that SET again (at least once), which
/// a test that kills it next must not count as a duplicate.
async fn delivered(db: &sqlx::PgPool, set: &Value) {
    let (event, _) = event_of(set);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let cursor: i64 = sqlx::query_scalar("SELECT cursor_event FROM ssf_streams")
            .fetch_one(db)
            .await
            .unwrap();
        if cursor >= event {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cursor stayed at {cursor}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every SET once, in the log's order.
fn assert_once_in_order(sets: &[Value]) {
    let places: Vec<(i64, i64)> = sets.iter().map(event_of).collect();
    let mut sorted = places.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(places, sorted, "in order, each once: {places:?}");
}

/// A user's session ended by Logout; its id.
async fn logout_one(app: &TestApp, email: &str) -> String {
    let pair = app.tokens_of(email).await;
    app.logout(&pair.refresh_token).await.unwrap();
    session_of(&pair.access_token)
}

#[tokio::test]
async fn a_receiver_down_for_a_minute_then_back_gets_everything_in_order_exactly_once() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.ssf_allow_private = true;
        c.ssf_retry_max = Duration::from_secs(2);
    })
    .await;
    let key = app.service_key("receiver-down", &["events.receive"]).await;
    let Some(mut pushed) = receiver(&app, "receiver-down", "Bearer d").await else {
        return;
    };
    push_stream(&app, &key, &pushed, "Bearer d").await;
    let email = crate::helpers::fresh_email();
    app.register(&email, PASSWORD).await;
    let mut ended = vec![logout_one(&app, &email).await];
    let first = pushed.wait_for(1, WAIT).await;
    delivered(&app.db, &first[0]).await;

    pushed.kill().await;
    let down = std::time::Instant::now();
    // Sessions end all through the outage.
    while down.elapsed() < Duration::from_secs(60) {
        ended.push(logout_one(&app, &email).await);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let failures: i32 = sqlx::query_scalar("SELECT failures FROM ssf_streams")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(failures > 0, "the receiver was down: pushes failed");
    pushed.restart_same_port().await;

    pushed.wait_for(ended.len(), WAIT).await;
    // Give a duplicate the time to show up, if one were coming.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let received = pushed.received();
    assert_eq!(received.len(), ended.len(), "{received:#?}");
    assert_once_in_order(&received);
    let sessions: Vec<String> = received
        .iter()
        .map(|s| s["sub_id"]["session"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sessions, ended);
}

#[tokio::test]
async fn a_replica_killed_mid_delivery_leaves_the_stream_to_another_without_loss() {
    let url = crate::helpers::fresh_database().await;
    let data_dir = crate::helpers::scratch_dir("ssf-kill");
    std::fs::create_dir_all(&data_dir).unwrap();
    let env = [
        ("AUTHD_SSF_ALLOW_PRIVATE", "true"),
        ("AUTHD_SSF_RETRY_MAX", "1s"),
        ("AUTHD_ISSUER", ISSUER),
    ];
    let first = crate::faults::serve_binary(&url, &data_dir, &env).await;
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let key =
        authd::crypto::opaque::NewToken::generate(authd::crypto::opaque::TokenKind::ServiceKey).unwrap();
    authd::db::service_accounts::add_key(
        &db,
        "receiver-k",
        &["events.receive".to_owned()],
        &key.hash,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let key = key.expose().to_owned();
    let Some(mut pushed) =
        PushReceiver::spawn(&jwks_url(first.addr), ISSUER, "receiver-k", Some("Bearer k")).await
    else {
        return;
    };
    let created = Request::new("POST", "/ssf/streams")
        .bearer(&key)
        .json(&json!({"delivery": {"method": PUSH, "endpoint_url": pushed.url, "authorization_header": "Bearer k"}}))
        .send(first.addr)
        .await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));

    let client = first.client();
    let email = crate::helpers::fresh_email();
    let mut register = client.clone();
    register
        .register(pb::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let logout = |client: crate::helpers::Client, email: String| async move {
        let mut client = client;
        let pair = client
            .login(pb::LoginRequest {
                login: email,
                password: PASSWORD.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap();
        client
            .logout(pb::LogoutRequest {
                refresh_token: pair.refresh_token.clone(),
            })
            .await
            .unwrap();
        session_of(&pair.access_token)
    };
    // One delivered while all is well (the receiver learns the keys).
    let mut ended = vec![logout(client.clone(), email.clone()).await];
    let delivered_first = pushed.wait_for(1, WAIT).await;
    delivered(&db, &delivered_first[0]).await;
    // The receiver goes away; sessions keep ending; the replica holding
    // the stream is killed while it retries them.
    pushed.kill().await;
    for _ in 0..5 {
        ended.push(logout(client.clone(), email.clone()).await);
    }
    let addr = first.addr;
    first.signal("KILL");
    drop(first);
    pushed.restart_same_port().await;
    // On the killed one's address, where the receiver fetches the keys.
    let listen = addr.to_string();
    let mut env = env.to_vec();
    env.push(("AUTHD_LISTEN", &listen));
    let second = crate::faults::serve_binary(&url, &data_dir, &env).await;

    // The killed replica's lease lapses (15 s); the other takes over.
    let received = pushed.wait_for(ended.len(), Duration::from_secs(60)).await;
    if received.len() != ended.len() {
        let row: (String, i64, i32, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT status, cursor_event, failures, last_error, lease_owner::text FROM ssf_streams",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        panic!("{row:?}\n{:#?}", pushed.lines());
    }
    assert_once_in_order(&received);
    let sessions: Vec<String> = received
        .iter()
        .map(|s| s["sub_id"]["session"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sessions, ended);
    drop(second);
}

/// A receiver written for this test: answers every POST with 202 and
/// records (path, SET) pairs; or, `stall`, accepts and never answers.
struct TinyReceiver {
    addr: std::net::SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl TinyReceiver {
    async fn start(stall: bool) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, length) = loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    if stall {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
                    record.lock().unwrap().push((path, body));
                    let _ = socket
                        .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Self { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// The paths that received a SET naming `session`.
    fn paths_with(&self, session: &str) -> HashSet<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, set)| crate::helpers::jwt_claims(set)["sub_id"]["session"]["id"] == session)
            .map(|(path, _)| path.clone())
            .collect()
    }
}

#[tokio::test]
async fn one_stalled_receiver_among_a_hundred_streams_holds_up_no_other() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.ssf_allow_private = true;
        // Far longer than the others may take: a stream waiting behind
        // the stalled one would show.
        c.ssf_push_timeout = Duration::from_secs(30);
    })
    .await;
    let key = app.service_key("receiver-many", &["events.receive"]).await;
    let alive = TinyReceiver::start(false).await;
    let stalled = TinyReceiver::start(true).await;
    create_stream(
        &app,
        &key,
        &json!({"delivery": {"method": PUSH, "endpoint_url": stalled.url("dead")}}),
    )
    .await;
    for i in 0..99 {
        create_stream(
            &app,
            &key,
            &json!({"delivery": {"method": PUSH, "endpoint_url": alive.url(&format!("s{i}"))}}),
        )
        .await;
    }
    let email = crate::helpers::fresh_email();
    app.register(&email, PASSWORD).await;
    // The stalled receiver now holds a push for 30 s; every other stream
    // gets each SET long before that.
    for _ in 0..3 {
        let session = logout_one(&app, &email).await;
        let started = std::time::Instant::now();
        while alive.paths_with(&session).len() < 99 {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{} of 99 streams got the SET",
                alive.paths_with(&session).len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(stalled.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_delivered_verification_clears_the_streams_failures() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.ssf_allow_private = true;
        c.ssf_retry_max = Duration::from_secs(1);
    })
    .await;
    let key = app.service_key("receiver-back", &["events.receive"]).await;
    let Some(mut pushed) = receiver(&app, "receiver-back", "Bearer b").await else {
        return;
    };
    let stream = push_stream(&app, &key, &pushed, "Bearer b").await;
    let id = stream["stream_id"].as_str().unwrap().to_owned();
    pushed.kill().await;
    super::verify(&app, &key, &id, "s1").await;
    let failing = std::time::Instant::now();
    while stream_row(&app, &id).await.3.is_none() {
        assert!(failing.elapsed() < WAIT, "the push never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pushed.restart_same_port().await;
    pushed.wait_for(1, WAIT).await;
    // Delivered: the stream is healthy again, as its owner reads it.
    let settled = std::time::Instant::now();
    loop {
        let failures: i32 = sqlx::query_scalar("SELECT failures FROM ssf_streams WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if failures == 0 && stream_row(&app, &id).await.3.is_none() {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(5),
            "failures {failures} stayed after a delivery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
