//! The server's transport limits: oversized messages and metadata, streams
//! beyond the per-connection cap, deadlines, undecodable bodies. Each is
//! refused for the offending call only; other calls on the same connection
//! go on.

use std::time::{Duration, Instant};

use authd::pb::auth::v1 as pb;
use prost::Message as _;
use tonic::Code;

use super::HEAVY_ARGON2;
use super::raw_h2::{
    ENHANCE_YOUR_CALM, FRAME_GOAWAY, FRAME_RST_STREAM, REFUSED_STREAM, RawConnection, RawFrames,
    advertised_max_concurrent_streams,
};
use crate::helpers::*;

const MAX_CONCURRENT_STREAMS: u32 = 128;

/// A call the server spends about a second on (one heavy hash), started on
/// `client`'s connection.
fn slow_call_on(client: &Client) -> tokio::task::JoinHandle<Result<pb::LoginResponse, tonic::Status>> {
    let mut client = client.clone();
    tokio::spawn(async move {
        client
            .login(pb::LoginRequest {
                login: fresh_email(),
                password: "not anyone's password".into(),
            })
            .await
            .map(tonic::Response::into_inner)
    })
}

async fn assert_in_flight_call_succeeds(
    call: tokio::task::JoinHandle<Result<pb::LoginResponse, tonic::Status>>,
) {
    // The normal answer for an unknown account, not a transport error.
    assert_error(call.await.unwrap(), Code::Unauthenticated, "INVALID_CREDENTIALS");
}

fn is_deadline_answer(code: i32) -> bool {
    code == Code::DeadlineExceeded as i32
}

/// A password RPC whose hash cannot finish before the deadline is refused
/// at once (RESOURCE_EXHAUSTED OVERLOADED) instead of waiting for it.
fn is_refused_for_its_deadline(code: i32) -> bool {
    code == Code::ResourceExhausted as i32
}

#[tokio::test]
async fn oversized_message_is_refused_while_another_call_on_the_connection_completes() {
    let app = spawn_app_with(|c| c.argon2 = HEAVY_ARGON2).await;
    let in_flight = slow_call_on(&app.client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let huge = pb::LoginRequest {
        login: fresh_email(),
        password: "p".repeat(1024 * 1024),
    };
    let status = app.client.clone().login(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        !in_flight.is_finished(),
        "the slow call was still running meanwhile"
    );
    assert_in_flight_call_succeeds(in_flight).await;
}

#[tokio::test]
async fn oversized_metadata_is_refused_while_another_call_on_the_connection_completes() {
    let app = spawn_app_with(|c| c.argon2 = HEAVY_ARGON2).await;
    let in_flight = slow_call_on(&app.client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Over the 16 KiB header list limit, yet (HPACK-compressed) one frame.
    let mut request = tonic::Request::new(pb::GetJwksRequest {});
    request
        .metadata_mut()
        .insert("x-padding", "a".repeat(20 * 1024).parse().unwrap());
    let status = app.client.clone().get_jwks(request).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert!(
        !in_flight.is_finished(),
        "the slow call was still running meanwhile"
    );
    assert_in_flight_call_succeeds(in_flight).await;
    app.client.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn huge_metadata_costs_only_its_own_connection() {
    let app = spawn_app().await;
    let attacker = connect(app.addr).await;
    let mut request = tonic::Request::new(pb::GetJwksRequest {});
    for i in 0..64 {
        request.metadata_mut().insert(
            format!("x-padding-{i}")
                .parse::<tonic::metadata::MetadataKey<_>>()
                .unwrap(),
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .repeat(64)
                .parse()
                .unwrap(),
        );
    }
    let status = attacker.clone().get_jwks(request).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    app.client.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn server_advertises_a_cap_of_128_streams_per_connection() {
    let app = spawn_app().await;
    assert_eq!(
        advertised_max_concurrent_streams(app.addr).await,
        MAX_CONCURRENT_STREAMS as usize
    );
}

/// Opens `count` streams with odd ids from 1 and returns the raw client.
async fn open_streams(app: &TestApp, count: u32) -> RawFrames {
    let mut raw = RawFrames::open(app.addr).await;
    let authority = app.addr.to_string();
    for n in 0..count {
        raw.open_stream(2 * n + 1, &authority, "/auth.v1.AuthService/Register")
            .await;
    }
    raw
}

#[tokio::test]
async fn streams_beyond_128_on_one_connection_are_refused() {
    let app = spawn_app().await;
    let mut raw = open_streams(&app, MAX_CONCURRENT_STREAMS + 1).await;
    let last = 2 * MAX_CONCURRENT_STREAMS + 1;
    let mut resets = Vec::new();
    while let Some(frame) = raw.read().await {
        if frame.kind == FRAME_RST_STREAM {
            resets.push((frame.stream, frame.error_code()));
            if frame.stream == last {
                break;
            }
        }
    }
    assert_eq!(
        resets,
        [(last, Some(REFUSED_STREAM))],
        "only the stream past the cap is refused"
    );
    // Everyone else is served meanwhile.
    app.client.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn a_flood_of_streams_past_the_cap_gets_the_connection_closed() {
    let app = spawn_app().await;
    let mut raw = open_streams(&app, MAX_CONCURRENT_STREAMS + 400).await;
    let mut refused = 0;
    let mut goaway = None;
    while let Some(frame) = raw.read().await {
        match frame.kind {
            FRAME_RST_STREAM if frame.error_code() == Some(REFUSED_STREAM) => refused += 1,
            FRAME_GOAWAY => {
                goaway = frame.error_code();
                break;
            }
            _ => {}
        }
    }
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "after {refused} refused streams");
    assert!(refused < 400, "the server stopped refusing one by one: {refused}");
    app.client.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn client_deadline_is_enforced_by_the_server() {
    let app = spawn_app_with(|c| c.argon2 = HEAVY_ARGON2).await;
    // A raw client keeps no clock of its own: the answer is the server's.
    let mut raw = RawConnection::open(app.addr).await;
    let login = pb::LoginRequest {
        login: fresh_email(),
        password: "not anyone's password".into(),
    };
    let started = Instant::now();
    let reply = raw
        .call(
            "/auth.v1.AuthService/Login",
            &[("grpc-timeout", "100m".parse().unwrap())],
            &login.encode_to_vec(),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    // The hash takes most of a second: authd refuses the Login at once
    // rather than start work it cannot finish by the deadline.
    assert!(
        reply.grpc_status.is_some_and(is_refused_for_its_deadline),
        "{reply:?} after {took:?}"
    );
    assert!(took < Duration::from_millis(100), "refused only after {took:?}");
    // Through tonic too, which sends the same header.
    let mut request = tonic::Request::new(login);
    request.set_timeout(Duration::from_millis(100));
    let status = app.client.clone().login(request).await.unwrap_err();
    assert!(is_refused_for_its_deadline(status.code() as i32), "{status:?}");
    assert_eq!(reason(&status), "OVERLOADED");
    println!(
        "grpc-timeout 100 ms: answered {:?} after {took:?}",
        reply.grpc_status
    );
}

#[tokio::test]
async fn server_request_timeout_cuts_off_slow_calls() {
    let app = spawn_app_with(|c| {
        c.request_timeout = Duration::from_millis(50);
        c.argon2 = HEAVY_ARGON2;
    })
    .await;
    let result = app.login(&fresh_email(), "not anyone's password").await;
    let status = result.unwrap_err();
    // Cut off either way the server can: refused at once because the hash
    // cannot fit (OVERLOADED), or, when the lookups before the hash already
    // used the 50 ms (a loaded machine running the suite in parallel), at
    // the deadline itself. Never served late, never INTERNAL.
    let code = status.code() as i32;
    match reason(&status).as_str() {
        "OVERLOADED" => assert!(is_refused_for_its_deadline(code), "{status:?}"),
        "DEADLINE_EXCEEDED" => assert!(is_deadline_answer(code), "{status:?}"),
        other => panic!("not cut off by its deadline ({other}): {status:?}"),
    }
    // Calls that fit in the time are served.
    app.client.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn a_body_that_never_arrives_is_cut_off_by_the_request_timeout() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_millis(300)).await;
    let mut raw = RawConnection::open(app.addr).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        raw.call_without_body("/auth.v1.AuthService/Register", &[]),
    )
    .await
    .expect("the server answers without waiting for the body forever")
    .unwrap();
    assert!(reply.grpc_status.is_some_and(is_deadline_answer), "{reply:?}");
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_refused_without_harming_the_connection() {
    let app = spawn_app().await;
    let mut raw = RawConnection::open(app.addr).await;
    // Field 1 (email), length-delimited, two bytes that are not UTF-8.
    let message = [0x0a, 0x02, 0xff, 0xfe];
    let reply = raw
        .call("/auth.v1.AuthService/Register", &[], &message)
        .await
        .unwrap();
    // gRPC's status code table puts request parse errors under INTERNAL.
    assert_eq!(reply.http_status, 200, "{reply:?}");
    assert_eq!(reply.grpc_status, Some(Code::Internal as i32), "{reply:?}");
    assert!(!reply.grpc_message.contains("0xff"), "{reply:?}");
    let reply = raw.call("/auth.v1.AuthService/GetJwks", &[], &[]).await.unwrap();
    assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[tokio::test]
async fn bytes_that_are_not_protobuf_are_refused_without_harming_the_connection() {
    let app = spawn_app().await;
    let mut raw = RawConnection::open(app.addr).await;
    for garbage in [
        vec![0xff; 64],
        vec![0x0a, 0x7f, b'a'],                   // length past the end
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // a 4 GiB length
        b"' OR 1=1 --".to_vec(),
    ] {
        let reply = raw
            .call("/auth.v1.AuthService/Login", &[], &garbage)
            .await
            .unwrap();
        assert_eq!(reply.grpc_status, Some(Code::Internal as i32), "{reply:?}");
    }
    let reply = raw.call("/auth.v1.AuthService/GetJwks", &[], &[]).await.unwrap();
    assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
}
